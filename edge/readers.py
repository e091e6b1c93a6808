"""Offline trade readers: recorded files through the live parse/validate path into TradeBatches.

Each reader knows one file format: how to recognize it (``sniff``), how to cut it into frames
with receive times (``frames``), which adapter parses them (``adapter``) and whether receive
times are real enough to check clock skew (``max_skew_ns``). ``read`` then runs the collector's
exact step, :func:`edge.validate.process_frame`, on every frame. Quotes are normalized and
validated like in the collector but not yielded: readers produce trades only.

The reader constants are registered as ``tickmesh.readers`` entry points (``tickmesh bars``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import msgspec
import numpy as np

from core.errors import ConfigError, DataFileError
from core.schema import DeadLetter, TradeBatch
from edge.adapters import adapter_for_url
from edge.adapters.base import Adapter
from edge.adapters.kraken_rest import KrakenRestAdapter
from edge.adapters.tardis import TRADES_COLUMNS, TardisAdapter
from edge.events import FrameEvents, Trade, TradeColumns, concat_trades
from edge.recorded import open_recorded
from edge.validate import process_frame

__all__ = ["Reader", "RecordedReader", "KrakenRestReader", "TardisReader", "RECORDED", "KRAKEN_REST", "TARDIS", "READERS", "reader_for"]

_SNIFF_BYTES = 4096
_LIVE_SKEW_NS = 300 * 1_000_000_000


class Reader:
    """A file format of trades. Subclasses implement ``sniff``, ``frames`` and ``adapter``.

    Attributes:
        name: the format's name (``--format`` value and entry-point name).
        max_skew_ns: allowed |exchange time - receive time|, or None where the file's receive
            times are not real ones.
    """

    name: str = ""
    max_skew_ns: int | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def sniff(self, path: str | os.PathLike) -> bool:
        """Whether the file looks like this format (reads only its start)."""
        raise NotImplementedError

    def frames(self, path: str | os.PathLike) -> Iterator[tuple[int, str | bytes]]:
        """Yields ``(recv_ns, raw frame)`` in file order."""
        raise NotImplementedError

    def adapter(self, path: str | os.PathLike) -> Adapter:
        """A fresh adapter for the file's frames."""
        raise NotImplementedError

    def read(self, path: str | os.PathLike) -> Iterator[TradeBatch | DeadLetter]:
        """Yields, per frame in file order, one TradeBatch per symbol, then its DeadLetters.

        Raises:
            DataFileError: the file is missing or not in this format at all. Bad frames inside
                a good file never raise; they become DeadLetters.
        """
        adapter = self.adapter(path)
        venue = adapter.venue
        for recv_ns, raw in self.frames(path):
            events, dead_letters = process_frame(adapter, raw, recv_ns, self.max_skew_ns)
            # Columnar blocks (bulk frames) stay columns; single trades are grouped per symbol.
            by_symbol: dict[str, list[Trade | TradeColumns]] = {}
            for item in (events.items if type(events) is FrameEvents else events):
                if type(item) is Trade or type(item) is TradeColumns:
                    by_symbol.setdefault(item.symbol, []).append(item)
            for symbol, parts in by_symbol.items():
                block = concat_trades(symbol, parts)
                yield TradeBatch.from_columns(venue, symbol, ts_ns=block.ts_ns, recv_ns=np.full(len(block), recv_ns),
                                              px=block.px, qty=block.qty, side=block.side,
                                              trade_id=block.trade_id)
            yield from dead_letters


def _head(path: str | os.PathLike) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


class RecordedReader(Reader):
    """cryptofeed-recorded WebSocket sessions (``*.ws.txt``); the adapter is chosen by URL.

    Receive times are the recorder's real ones, so exchange times are checked against them.
    """

    name = "recorded"
    max_skew_ns = _LIVE_SKEW_NS

    def sniff(self, path: str | os.PathLike) -> bool:
        first = _head(path).partition("\n")[0]
        url, mark, _ = first.partition(" <-> ")
        return bool(mark) and url.startswith(("ws://", "wss://"))

    def frames(self, path: str | os.PathLike) -> Iterator[tuple[int, str]]:
        return open_recorded(path).frames()

    def adapter(self, path: str | os.PathLike) -> Adapter:
        rec = open_recorded(path)
        try:
            return adapter_for_url(rec.url)()
        except ConfigError as exc:
            raise DataFileError(f"{path}: {exc}") from None


class _Last(msgspec.Struct):
    last: str | int | None = None


class _Cursor(msgspec.Struct):
    result: _Last | None = None


class KrakenRestReader(Reader):
    """A saved Kraken ``GET /0/public/Trades`` response: the whole file is one frame.

    The response holds no receive time; its ``last`` cursor (the newest trade's time in ns)
    stands in, or the file's modification time where there is none. No skew check.
    """

    name = "kraken-rest"
    max_skew_ns = None

    def sniff(self, path: str | os.PathLike) -> bool:
        head = _head(path).lstrip()
        return head.startswith("{") and '"error"' in head and '"result"' in head

    def frames(self, path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise DataFileError(f"Kraken REST response not found: {path}") from None
        recv_ns = None
        try:
            cursor = msgspec.json.decode(raw, type=_Cursor)
            if cursor.result is not None and cursor.result.last is not None:
                recv_ns = int(cursor.result.last)
        except (msgspec.DecodeError, ValueError):
            pass  # the adapter reports what is wrong with the response
        if recv_ns is None:
            recv_ns = os.stat(path).st_mtime_ns
        yield recv_ns, raw

    def adapter(self, path: str | os.PathLike) -> Adapter:
        return KrakenRestAdapter()


class TardisReader(Reader):
    """Tardis.dev ``trades`` CSV: each data line is a frame, received at ``local_timestamp``.

    The venue is the ``exchange`` of the first data line. No skew check: the file is history
    and ``local_timestamp`` is Tardis's, not ours.
    """

    name = "tardis"
    max_skew_ns = None

    def sniff(self, path: str | os.PathLike) -> bool:
        columns = _head(path).partition("\n")[0].strip().split(",")
        return all(c in columns for c in TRADES_COLUMNS)

    def _header(self, path: str | os.PathLike) -> tuple[list[str], str]:
        try:
            with open(path, encoding="utf-8") as fh:
                columns = fh.readline().strip().split(",")
                first = fh.readline()
        except FileNotFoundError:
            raise DataFileError(f"Tardis CSV not found: {path}") from None
        missing = [c for c in TRADES_COLUMNS if c not in columns]
        if missing:
            raise DataFileError(f"{path}: not a Tardis trades CSV, header lacks {missing}")
        return columns, first

    def frames(self, path: str | os.PathLike) -> Iterator[tuple[int, str]]:
        columns, _ = self._header(path)
        i_local = columns.index("local_timestamp")
        with open(path, encoding="utf-8") as fh:
            fh.readline()
            for line in fh:
                line = line.rstrip("\r\n")
                if not line:
                    continue
                fields = line.split(",")
                try:
                    recv_ns = int(fields[i_local]) * 1000
                except (IndexError, ValueError):
                    recv_ns = 0  # the adapter rejects the line with the reason
                yield recv_ns, line

    def adapter(self, path: str | os.PathLike) -> Adapter:
        columns, first = self._header(path)
        fields = first.strip().split(",")
        exchange = fields[columns.index("exchange")] if len(fields) == len(columns) else "unknown"
        return TardisAdapter(exchange=exchange, columns=columns)


RECORDED = RecordedReader()
KRAKEN_REST = KrakenRestReader()
TARDIS = TardisReader()
READERS: tuple[Reader, ...] = (RECORDED, KRAKEN_REST, TARDIS)


def reader_for(path: str | os.PathLike, fmt: str | None = None) -> Reader:
    """The reader for a file: the one named ``fmt``, or the first whose ``sniff`` accepts it.

    Raises:
        DataFileError: the file is missing, ``fmt`` names no reader, or no reader recognizes it.
    """
    names = ", ".join(r.name for r in READERS)
    if fmt is not None:
        for reader in READERS:
            if reader.name == fmt:
                break
        else:
            raise DataFileError(f"unknown input format {fmt!r}; known formats: {names}")
    if not Path(path).is_file():
        raise DataFileError(f"input file not found: {path}")
    if fmt is not None:
        return reader
    for reader in READERS:
        if reader.sniff(path):
            return reader
    raise DataFileError(f"cannot tell the format of {path}; known formats: {names} (pass the format explicitly)")
