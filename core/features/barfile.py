"""Reading OHLCV bar files: the layouts found in the wild, into NumPy columns.

Layouts recognised (by content, not by file name):

* CSV with a header naming the columns, case-insensitive, in any order: a time column
  (``timestamp``, ``time``, ``date``, ``datetime``, ``open_time``, or an unnamed first column as
  pandas writes its index), ``open``, ``high``, ``low``, ``close``, ``volume``; optional ``vwap``,
  ``buy_volume``, ``sell_volume``. Times are ISO dates/datetimes (UTC) or epoch numbers in s, ms,
  us or ns (told apart by magnitude).
* The CSV `tickmesh bars` writes (``venue,symbol,tf,start_ns,...``): one series per
  (venue, symbol, tf).
* Headerless Binance klines (data.binance.vision): ``open_time_ms, open, high, low, close, volume,
  close_time_ms, quote_volume, n_trades, taker_buy_base, taker_buy_quote, ignore``; the taker-buy
  base volume gives ``buy_volume`` and the rest of the volume ``sell_volume``.
* Kraken ``GET /0/public/OHLC`` JSON: ``{"result": {"PAIR": [[time, o, h, l, c, vwap, volume,
  count], ...]}}``.

Rows are sorted by time; a repeated time keeps the last row.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Iterator

import msgspec
import numpy as np

from core.errors import DataFileError

__all__ = ["BarSeries", "load_bars"]

_TIME_NAMES = ("timestamp", "time", "date", "datetime", "open_time", "start_ns", "")
_OHLCV = ("open", "high", "low", "close", "volume")
_OPTIONAL = ("vwap", "buy_volume", "sell_volume")


class BarSeries(msgspec.Struct, kw_only=True):
    """One series of bars as NumPy columns.

    Attributes:
        name: where it came from (file name, plus venue/symbol/tf when the file holds several).
        columns: ``ts_ns`` (int64 bar start, UTC) and float64 ``open``, ``high``, ``low``,
            ``close``, ``volume`` (plus ``vwap``, ``buy_volume``, ``sell_volume`` when the file
            has them).
        venue, symbol, tf: when the file says so, else "".
    """

    name: str
    columns: dict[str, np.ndarray]
    venue: str = ""
    symbol: str = ""
    tf: str = ""

    def __len__(self) -> int:
        return int(self.columns["ts_ns"].shape[0])


def load_bars(path: str | os.PathLike) -> list[BarSeries]:
    """Reads every bar series in ``path``.

    Raises:
        DataFileError: the file is missing, empty, or in no layout above (the message says which
            line and value failed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFileError(f"bar file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if not head:
        raise DataFileError(f"{path}: empty file")
    if head[:1] in (b"{", b"["):
        return [_kraken_json(path)]
    return _csv(path)


def _fail(path: str, msg: str) -> DataFileError:
    return DataFileError(f"{path}: {msg}")


def _times_ns(path: str, raw: list[str]) -> np.ndarray:
    """Epoch numbers (s/ms/us/ns by magnitude) or ISO datetimes to int64 ns."""
    try:
        nums = np.array(raw, dtype=np.float64)
    except ValueError:
        try:
            return np.array(raw, dtype="datetime64[ns]").astype(np.int64)
        except ValueError as exc:
            raise _fail(path, f"unreadable time value ({exc})") from None
    big = np.nanmax(np.abs(nums)) if nums.size else 0.0
    scale = 1e9 if big < 1e11 else 1e6 if big < 1e14 else 1e3 if big < 1e17 else 1.0
    if scale == 1.0:
        return np.array(raw, dtype=np.int64)
    return np.round(nums * scale).astype(np.int64)


def _floats(path: str, name: str, raw: list[str], first_line: int) -> np.ndarray:
    try:
        return np.array([v if v.strip() else "nan" for v in raw], dtype=np.float64)
    except ValueError:
        for i, v in enumerate(raw):
            try:
                float(v or "nan")
            except ValueError:
                raise _fail(path, f"line {first_line + i}: {name} {v!r} is not a number") from None
        raise


def _finish(path: str, name: str, ts: np.ndarray, cols: dict[str, np.ndarray], **meta: str) -> BarSeries:
    if ts.size == 0:
        raise _fail(path, "no bars")
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    # keep the last of equal times
    last = np.r_[ts[1:] != ts[:-1], True]
    out = {"ts_ns": ts[last]}
    out.update({k: v[order][last] for k, v in cols.items()})
    return BarSeries(name=name, columns=out, **meta)


def _rows(path: str) -> Iterator[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        yield from csv.reader(f)


def _csv(path: str) -> list[BarSeries]:
    rows = [r for r in _rows(path) if r]
    base = os.path.basename(path)
    header = [h.strip().lower() for h in rows[0]]
    try:
        float(header[0] or "x")
        headerless = True
    except ValueError:
        headerless = False
    if headerless:
        if len(header) != 12:
            raise _fail(path, f"no header and {len(header)} columns: expected a header naming "
                        "timestamp,open,high,low,close,volume, or the 12 columns of Binance klines")
        data = list(zip(*rows))
        cols = {name: _floats(path, name, list(data[i]), 1) for i, name in enumerate(_OHLCV, start=1)}
        buy = _floats(path, "taker_buy_base", list(data[9]), 1)
        cols["buy_volume"] = buy
        cols["sell_volume"] = cols["volume"] - buy
        return [_finish(path, base, _times_ns(path, list(data[0])), cols)]
    missing = [c for c in _OHLCV if c not in header]
    time_col = next((header.index(c) for c in _TIME_NAMES if c in header), None)
    if missing or time_col is None:
        raise _fail(path, f"header {rows[0]} lacks {missing or ['a time column']}: expected "
                    "timestamp,open,high,low,close,volume")
    data = list(zip(*rows[1:]))
    if not data:
        raise _fail(path, "no bars")
    wanted = [c for c in (*_OHLCV, *_OPTIONAL) if c in header]
    if "symbol" in header and "tf" in header:  # the CSV `tickmesh bars` writes: one series per key
        keys = list(zip(*(data[header.index(c)] for c in ("venue", "symbol", "tf"))))
        out = []
        for key in sorted(set(keys)):
            sel = [i for i, k in enumerate(keys) if k == key]
            ts = np.array([data[time_col][i] for i in sel], dtype=np.int64)
            cols = {c: _floats(path, c, [data[header.index(c)][i] for i in sel], 2) for c in wanted}
            out.append(_finish(path, f"{base}:{'/'.join(key)}", ts, cols, venue=key[0], symbol=key[1], tf=key[2]))
        return out
    cols = {c: _floats(path, c, list(data[header.index(c)]), 2) for c in wanted}
    return [_finish(path, base, _times_ns(path, list(data[time_col])), cols)]


def _kraken_json(path: str) -> BarSeries:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        if doc.get("error"):
            raise _fail(path, f"Kraken error response: {doc['error']}")
        (pair, rows), = [(k, v) for k, v in doc["result"].items() if k != "last"]
        arr = np.array(rows, dtype=np.float64)
    except DataFileError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _fail(path, f"not a Kraken OHLC response ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 8:
        raise _fail(path, f"Kraken OHLC rows must have 8 fields, got shape {arr.shape}")
    cols = {"open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4], "vwap": arr[:, 5],
            "volume": arr[:, 6]}
    ts = np.round(arr[:, 0] * 1e9).astype(np.int64)
    return _finish(path, os.path.basename(path), ts, cols, symbol=pair)
