"""OHLCV bars on event time, built from columnar trade batches with NumPy.

Watermark and late-trade policy (the contract every consumer of bars relies on):

* **Buckets.** A bar of timeframe ``tf`` covers the event times ``[start_ns, start_ns + tf_ns)``,
  ``start_ns`` a multiple of ``tf_ns`` counted from the Unix epoch. Empty buckets produce no bar.
* **Fields.** ``open`` is the price of the earliest trade by event time (ties: the one that
  arrived first), ``close`` of the latest (ties: the one that arrived last); ``high``/``low`` the
  extreme prices; ``volume`` the sum of ``qty``; ``vwap`` = sum(px*qty) / sum(qty) (the close
  price when the volume is 0); ``n_trades``; ``buy_volume``/``sell_volume`` the volume of trades
  whose aggressor side is 1 / -1 (side 0 counts in neither); ``last_recv_ns`` the newest receive
  time in the bar. Sums are folded in arrival order, one trade after the other
  (``((v1 + v2) + v3) + ...``), so a bar's floats do not depend on how trades were cut into batches.
* **Watermark.** Per (venue, symbol): the largest event time seen so far minus ``lateness_ns``.
  It advances trade by trade, also inside a batch. A bar is closed, and returned by
  :meth:`BarBuilder.update`, once the watermark reaches its end (``start_ns + tf_ns <=
  watermark``). Each bar is returned exactly once.
* **Late trades.** A trade whose bucket is already closed for a timeframe when it arrives (bucket
  end <= the watermark, the trade's own time included) is *late for that timeframe*: it is left out
  of that timeframe's bars (a closed bar is never reopened nor emitted twice), counted in
  :attr:`BarBuilder.late` per (venue, tf), and handed back by :meth:`BarBuilder.late_trades` so
  the caller can dead-letter it with reason ``"late"``. The same trade may be on time for a
  longer timeframe and count there. Nothing is lost: the sink stores the raw trade either way.
* **Determinism.** The output depends only on the sequence of trades of each (venue, symbol),
  never on how it was cut into batches: lateness is decided per trade with a running watermark
  and sums are folded sequentially in arrival order. With :meth:`BarBuilder.snapshot` and
  :meth:`BarBuilder.restore` a worker killed at any point resumes with identical bars.
* **Order.** One :meth:`~BarBuilder.update` returns its closed bars by timeframe (shortest first,
  the order of ``TIMEFRAME_NS``), then ``start_ns``. :meth:`~BarBuilder.flush` (end of input,
  offline only) closes every open bar and returns them by timeframe, ``start_ns``, venue, symbol.
* **Input.** Trades must have finite prices and sizes, sizes >= 0 and event times >= 0 (the
  epoch); a batch breaking this raises :class:`core.errors.ValidationError` and changes nothing.

All timeframes are aggregated in one NumPy pass per batch (per run of consecutive batches of one
series with :meth:`BarBuilder.update_many`, which splits the output back per batch): every trade
gets one row per timeframe keyed by (timeframe, bucket); a stable argsort by key runs only when the batch is not in
event-time order; ``reduceat`` aggregates runs of equal keys; the runs are merged into the few open
bars by key. Python loops run over emitted bars and a few blocks of runs, never over trades.

Example:
    >>> b = BarBuilder(["1s"], lateness_ns=0)
    >>> t = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[0, 500_000_000, 1_000_000_000],
    ...     recv_ns=[1, 2, 3], px=[10.0, 12.0, 11.0], qty=[1.0, 1.0, 2.0], side=[1, -1, 1], trade_id=[1, 2, 3])
    >>> [(bar.start_ns, bar.open, bar.high, bar.close, bar.volume) for bar in b.update(t)]
    [(0, 10.0, 12.0, 12.0, 2.0)]
"""

from __future__ import annotations

from itertools import repeat
from typing import Iterable, Sequence

import msgspec
import numpy as np

from core.errors import ConfigError, SchemaError, ValidationError
from core.schema import BUY, SELL, TIMEFRAME_NS, Bar, TradeBatch

__all__ = ["BarBuilder", "LateTrades", "DEFAULT_LATENESS_NS"]

DEFAULT_LATENESS_NS = 1_000_000_000

# Batches (and update_many runs) larger than this are processed in slices: the result is the same
# (the output does not depend on chunking) and the working arrays stay small. Bars close at a
# slice's end, each attributed to the trade whose watermark closed it.
_MAX_SLICE = 8192
_SNAPSHOT_VERSION = 1
# Padding cells a fold matrix may carry beyond twice its values before runs are split (see _fold).
_FOLD_SLACK_CELLS = 4096
_NO_TS = int(np.iinfo(np.int64).min)
_MAX_LATENESS_NS = 1 << 62  # keeps "max event time - lateness" inside int64

# A row key packs (timeframe index, bucket number). Event times are >= 0 and timeframes >= 1 s,
# so a bucket number is below 2**34 and sorting keys sorts by timeframe, then start.
_KEY_SHIFT = 40
_BUCKET_MASK = (1 << _KEY_SHIFT) - 1

# Open-bar state of a series: an int64 and a float64 matrix, one row per open bar, sorted by key.
_I_KEY, _I_START, _I_END, _I_OPEN_TS, _I_CLOSE_TS, _I_N, _I_RECV = range(7)
_F_OPEN, _F_CLOSE, _F_HIGH, _F_LOW, _F_VOL, _F_PXQ, _F_BUY, _F_SELL = range(8)
_F_SUMS = slice(_F_VOL, _F_SELL + 1)
_N_I, _N_F = 7, 8
_ROW_BYTES = {name: np.dtype(dtype).itemsize for name, dtype in TradeBatch.DTYPES.items()}


class LateTrades(msgspec.Struct, frozen=True, array_like=True):
    """Trades of one update that arrived after their bucket had closed for ``tf``."""

    tf: str
    trades: TradeBatch


class _Series:
    """State of one (venue, symbol): the largest event time seen and its open bars."""

    __slots__ = ("max_ts_ns", "ints", "floats")

    def __init__(self, max_ts_ns: int = _NO_TS, ints: np.ndarray | None = None,
                 floats: np.ndarray | None = None) -> None:
        self.max_ts_ns = max_ts_ns
        self.ints = np.empty((0, _N_I), np.int64) if ints is None else ints
        self.floats = np.empty((0, _N_F), np.float64) if floats is None else floats


class _SeriesSnap(msgspec.Struct, array_like=True):
    venue: str
    symbol: str
    max_ts_ns: int
    ints: bytes
    floats: bytes


class _Snapshot(msgspec.Struct, array_like=True):
    version: int
    timeframes: list[str]
    lateness_ns: int
    series: list[_SeriesSnap]
    late: list[tuple[str, str, int]]
    pending_late: list[LateTrades]


class BarBuilder:
    """Incremental OHLCV bars for many (venue, symbol) series and several timeframes.

    See the module docstring for the watermark and late-trade policy.

    Args:
        timeframes: timeframe names from ``TIMEFRAME_NS``; bars are built and returned in
            ``TIMEFRAME_NS`` order whatever the order given.
        lateness_ns: how far behind the newest event time a trade may arrive and still count.

    Raises:
        ConfigError: an unknown timeframe, none at all, or a lateness out of range.
    """

    def __init__(self, timeframes: Iterable[str] = tuple(TIMEFRAME_NS),
                 lateness_ns: int = DEFAULT_LATENESS_NS) -> None:
        wanted = list(timeframes)
        unknown = [tf for tf in wanted if tf not in TIMEFRAME_NS]
        if unknown:
            raise ConfigError(f"unknown timeframes {unknown}; known: {list(TIMEFRAME_NS)}")
        if not wanted:
            raise ConfigError("BarBuilder needs at least one timeframe")
        lateness_ns = int(lateness_ns)
        if not 0 <= lateness_ns <= _MAX_LATENESS_NS:
            raise ConfigError(f"lateness_ns must be between 0 and {_MAX_LATENESS_NS} (about 146 years), got {lateness_ns}")
        self.timeframes: tuple[str, ...] = tuple(tf for tf in TIMEFRAME_NS if tf in wanted)
        self.lateness_ns = lateness_ns
        #: Late trades counted per (venue, tf).
        self.late: dict[tuple[str, str], int] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self._pending_late: list[LateTrades] = []
        self._tf_ns = np.array([TIMEFRAME_NS[tf] for tf in self.timeframes], np.int64)
        self._tf_col = self._tf_ns[:, None]
        self._key_col = (np.arange(len(self.timeframes), dtype=np.int64) << _KEY_SHIFT)[:, None]
        self._tf_names = np.array(self.timeframes, dtype=object)
        self._encoder = msgspec.msgpack.Encoder()

    def __repr__(self) -> str:
        return f"BarBuilder(timeframes={list(self.timeframes)!r}, lateness_ns={self.lateness_ns})"

    # --- public API ---------------------------------------------------------------------------
    def update(self, batch: TradeBatch) -> list[Bar]:
        """Adds a batch of trades and returns the bars it closed.

        The batch is checked before any state changes, so a rejected batch leaves the builder as
        it was. Trades late for some timeframe are available from :meth:`late_trades` afterwards.

        Args:
            batch: trades of one (venue, symbol), in arrival order.

        Returns:
            The bars closed by this batch's watermark, by timeframe then ``start_ns``.

        Raises:
            SchemaError: the batch's columns are malformed.
            ValidationError: a price or size is NaN/infinite, a size is negative or an event time
                is before the epoch.
        """
        bars, late = self.update_many((batch,))[0]
        self._pending_late.extend(late)
        return bars

    def update_many(self, batches: Sequence[TradeBatch]) -> list[tuple[list[Bar], list[LateTrades]]]:
        """Adds batches one after the other; returns, per batch, the bars it closed and its late trades.

        The result is ``[(update(b), late_trades()) for b in batches]`` bar for bar and entry for
        entry (with nothing pending before), but consecutive batches of one (venue, symbol) are
        folded together, in slices of up to ``_MAX_SLICE`` trades instead of one pass per batch:
        a bar is attributed to the batch holding the trade whose watermark closed it, a late trade
        to the batch that carried it. Late trades are handed back here, not kept for
        :meth:`late_trades`.

        Every batch is checked before any state changes: if one is refused, the builder is left
        as it was (and a caller can retry the batches one by one to isolate the bad one).

        Raises:
            SchemaError, ValidationError: as :meth:`update`, for any of the batches.
        """
        runs = []  # (venue, symbol, trades per batch, joined columns), all checked first
        lo = 0
        while lo < len(batches):
            venue, symbol = batches[lo].venue, batches[lo].symbol
            hi = lo + 1
            while hi < len(batches) and batches[hi].venue == venue and batches[hi].symbol == symbol:
                hi += 1
            runs.append((venue, symbol, *_run_columns(batches[lo:hi])))
            lo = hi
        out: list[tuple[list[Bar], list[LateTrades]]] = []
        for venue, symbol, lens, cols in runs:
            out += self._update_run(venue, symbol, lens, cols)
        return out

    def flush(self) -> list[Bar]:
        """Closes and returns every open bar: the end of the input (offline use only).

        Trades given to :meth:`update` afterwards may build a second bar for a bucket already
        flushed, so a live worker never calls this.

        Returns:
            All open bars, by timeframe, ``start_ns``, venue, symbol.
        """
        bars: list[Bar] = []
        for (venue, symbol), series in self._series.items():
            if series.ints.shape[0]:
                bars.extend(self._emit(venue, symbol, series.ints, series.floats))
            series.ints, series.floats = series.ints[:0], series.floats[:0]
        order = {tf: i for i, tf in enumerate(self.timeframes)}
        bars.sort(key=lambda b: (order[b.tf], b.start_ns, b.venue, b.symbol))
        return bars

    def late_trades(self) -> list[LateTrades]:
        """Returns, and forgets, the late trades found since the previous call.

        One entry per timeframe and batch; a trade late for two timeframes is in both entries.
        """
        out, self._pending_late = self._pending_late, []
        return out

    def watermark_ns(self, venue: str, symbol: str) -> int | None:
        """The current watermark of a series, or None before its first trade."""
        series = self._series.get((venue, symbol))
        if series is None or series.max_ts_ns == _NO_TS:
            return None
        return series.max_ts_ns - self.lateness_ns

    def open_bar_count(self) -> int:
        """How many bars are open across every series and timeframe (a gauge for metrics)."""
        return sum(series.ints.shape[0] for series in self._series.values())

    def snapshot(self) -> bytes:
        """The whole state as msgpack: open bars (exact floats), watermarks, late counters and
        late trades not yet taken. :meth:`restore` of it continues with identical output."""
        series = [_SeriesSnap(venue, symbol, s.max_ts_ns, s.ints.tobytes(), s.floats.tobytes())
                  for (venue, symbol), s in self._series.items()]
        late = [(venue, tf, count) for (venue, tf), count in self.late.items()]
        return self._encoder.encode(_Snapshot(_SNAPSHOT_VERSION, list(self.timeframes), self.lateness_ns, series,
                                              late, list(self._pending_late)))

    @classmethod
    def restore(cls, data: bytes) -> BarBuilder:
        """Rebuilds a builder from :meth:`snapshot` output.

        Raises:
            SchemaError: the bytes are not a snapshot of this version.
        """
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"undecodable bar builder snapshot: {exc}") from None
        if snap.version != _SNAPSHOT_VERSION:
            raise SchemaError(f"bar builder snapshot version {snap.version}, expected {_SNAPSHOT_VERSION}")
        try:
            builder = cls(snap.timeframes, snap.lateness_ns)
        except ConfigError as exc:
            raise SchemaError(f"bar builder snapshot: {exc}") from None
        for s in snap.series:
            if len(s.ints) % (8 * _N_I) or len(s.floats) % (8 * _N_F) or len(s.ints) // _N_I != len(s.floats) // _N_F:
                raise SchemaError(f"bar builder snapshot: inconsistent open bars for {s.venue}/{s.symbol}")
            ints = np.frombuffer(s.ints, np.int64).reshape(-1, _N_I).copy()
            floats = np.frombuffer(s.floats, np.float64).reshape(-1, _N_F).copy()
            builder._series[(s.venue, s.symbol)] = _Series(s.max_ts_ns, ints, floats)
        builder.late = {(venue, tf): count for venue, tf, count in snap.late}
        builder._pending_late = list(snap.pending_late)
        return builder

    # --- the vectorized core --------------------------------------------------------------------
    def _update_run(self, venue: str, symbol: str, lens: list[int],
                    cols: dict[str, np.ndarray]) -> list[tuple[list[Bar], list[LateTrades]]]:
        """Folds the checked, joined columns of consecutive batches of one series (``lens[b]``
        trades from batch b); splits the output per batch."""
        n = sum(lens)
        out: list[tuple[list[Bar], list[LateTrades]]] = [([], []) for _ in lens]
        if n == 0:
            return out
        key = (venue, symbol)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        late_rows: list[tuple[int, np.ndarray]] = []
        closed = []
        for lo in range(0, n, _MAX_SLICE):
            part = self._update_slice(series, cols, lo, min(lo + _MAX_SLICE, n), late_rows)
            if part is not None:
                closed.append(part)
        # ends[b]: one past the last row of batch b in the run.
        ends = np.cumsum(lens) if late_rows or len(lens) > 1 else None
        if late_rows:
            self._split_late(venue, symbol, cols, ends, late_rows, out)
        if not closed:
            return out
        if len(closed) == 1:
            ints, floats, close_row = closed[0]
        else:
            ints, floats, close_row = (np.concatenate([p[i] for p in closed]) for i in range(3))
        if len(lens) == 1:
            if len(closed) > 1:  # later slices close later bars, but keep the promised order
                order = np.argsort(ints[:, _I_KEY], kind="stable")
                ints, floats = ints[order], floats[order]
            out[0][0].extend(self._emit(venue, symbol, ints, floats))
            return out
        # The batch whose trade moved the watermark past a bar's end is the one that closed it.
        owner = np.searchsorted(ends, close_row, side="right")
        order = np.lexsort((ints[:, _I_KEY], owner))
        ints, floats, owner = ints[order], floats[order], owner[order]
        bars = self._emit(venue, symbol, ints, floats)
        cut = np.searchsorted(owner, np.arange(len(lens) + 1)).tolist()
        for b in np.unique(owner).tolist():
            out[b][0].extend(bars[cut[b]:cut[b + 1]])
        return out

    def _update_slice(self, series: _Series, cols: dict[str, np.ndarray], lo: int, hi: int,
                      late_rows: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Folds rows [lo, hi) of the columns into the series.

        Late rows are appended to ``late_rows`` as (timeframe index, rows). Returns the rows of
        the bars it closed and, per bar, the row whose watermark closed it, or None.
        """
        ts = cols["ts_ns"][lo:hi]
        px = cols["px"][lo:hi]
        qty = cols["qty"][lo:hi]
        side = cols["side"][lo:hi]
        n = ts.shape[0]
        ts_sorted = n < 2 or bool((ts[1:] >= ts[:-1]).all())
        # Running watermark per trade, so that lateness does not depend on batch boundaries.
        run_max = ts if ts_sorted else np.maximum.accumulate(ts)
        if series.max_ts_ns > run_max[0]:
            run_max = np.maximum(run_max, series.max_ts_ns)
        new_max = int(run_max[-1])
        watermark = run_max - self.lateness_ns

        bucket = ts // self._tf_col  # (timeframes, trades)
        late = (bucket + 1) * self._tf_col <= watermark
        keys = (bucket + self._key_col).ravel()
        rows = None  # which trade each key row is; None: timeframe blocks of all n trades in order
        if late.any():
            for t in np.flatnonzero(late.any(axis=1)).tolist():
                late_rows.append((t, lo + np.flatnonzero(late[t])))
            kept = np.flatnonzero(~late.ravel())
            keys = keys[kept]
            rows = kept % n
        if keys.shape[0]:
            if not ts_sorted and not bool((keys[1:] >= keys[:-1]).all()):
                order = np.argsort(keys, kind="stable")  # stable: arrival order within a bucket
                keys = keys[order]
                rows = order % n if rows is None else rows[order]
            _merge(series, keys, rows, n, ts_sorted, self._tf_ns, ts, cols["recv_ns"][lo:hi], px, qty, side)
        series.max_ts_ns = new_max

        ints = series.ints
        end = ints[:, _I_END]
        done = end <= watermark[-1]
        if not done.any():
            return None
        keep = ~done
        # The watermark only grows: the first row where it reaches a bar's end closed that bar.
        close_row = lo + np.searchsorted(watermark, end[done], side="left")
        closed = ints[done], series.floats[done], close_row
        series.ints, series.floats = ints[keep], series.floats[keep]
        return closed

    def _split_late(self, venue: str, symbol: str, cols: dict[str, np.ndarray], ends: np.ndarray,
                    late_rows: list[tuple[int, np.ndarray]], out: list[tuple[list[Bar], list[LateTrades]]]) -> None:
        """Counts late rows and hands them back to their batches: one entry per batch and
        timeframe, in timeframe order, its trades in arrival order."""
        tf_idx = np.concatenate([np.full(rows.shape[0], t) for t, rows in late_rows])
        rows = np.concatenate([rows for _, rows in late_rows])
        owner = np.searchsorted(ends, rows, side="right")
        order = np.lexsort((rows, tf_idx, owner))
        tf_idx, rows, owner = tf_idx[order], rows[order], owner[order]
        group = np.flatnonzero((np.diff(tf_idx) != 0) | (np.diff(owner) != 0)) + 1
        for a, b in zip([0, *group.tolist()], [*group.tolist(), rows.shape[0]]):
            tf = self.timeframes[int(tf_idx[a])]
            take = rows[a:b]
            key = (venue, tf)
            self.late[key] = self.late.get(key, 0) + int(take.shape[0])
            trades = TradeBatch.from_columns(venue, symbol, **{name: c[take] for name, c in cols.items()})
            out[int(owner[a])][1].append(LateTrades(tf, trades))

    def _emit(self, venue: str, symbol: str, ints: np.ndarray, floats: np.ndarray) -> list[Bar]:
        """Turns rows of bar state into Bar messages (the one per-bar Python step)."""
        volume = floats[:, _F_VOL]
        vwap = floats[:, _F_CLOSE].copy()
        np.divide(floats[:, _F_PXQ], volume, out=vwap, where=volume > 0)
        return list(map(
            Bar, repeat(venue), repeat(symbol), self._tf_names[ints[:, _I_KEY] >> _KEY_SHIFT].tolist(),
            ints[:, _I_START].tolist(), floats[:, _F_OPEN].tolist(), floats[:, _F_HIGH].tolist(),
            floats[:, _F_LOW].tolist(), floats[:, _F_CLOSE].tolist(), volume.tolist(), vwap.tolist(),
            ints[:, _I_N].tolist(), floats[:, _F_BUY].tolist(), floats[:, _F_SELL].tolist(),
            ints[:, _I_RECV].tolist(),
        ))


def _run_columns(batches: Sequence[TradeBatch]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Trades per batch and the columns of consecutive batches of one series, joined and checked.

    The wire bytes are joined column by column (one copy, no per-batch arrays).

    Raises:
        SchemaError, ValidationError: as `_check` of the first batch that fails alone.
    """
    if len(batches) == 1:
        cols = batches[0].columns()
        _check(batches[0], cols)
        return [cols["ts_ns"].shape[0]], cols
    lens = []
    for batch in batches:
        n = len(batch.ts_ns) // _ROW_BYTES["ts_ns"]
        if any(len(getattr(batch, name)) != n * size for name, size in _ROW_BYTES.items()):
            batch.columns()  # says which column is malformed
            raise SchemaError(f"{batch.venue}/{batch.symbol}: ragged trade columns")
        lens.append(n)
    cols = {name: np.frombuffer(b"".join([getattr(batch, name) for batch in batches]), dtype)
            for name, dtype in TradeBatch.DTYPES.items()}
    try:
        _check(batches[0], cols)
    except ValidationError:
        for batch in batches:  # the error of the batch at fault, as `update` of it would say
            _check(batch, batch.columns())
        raise
    return lens, cols


def _check(batch: TradeBatch, cols: dict[str, np.ndarray]) -> None:
    """Rejects values that would poison a bar (NaN high, negative volume, key overflow)."""
    px, qty, ts = cols["px"], cols["qty"], cols["ts_ns"]
    if np.isfinite(px).all() and np.isfinite(qty).all() and (qty >= 0).all() and (ts >= 0).all():
        return
    bad = int(np.flatnonzero(~(np.isfinite(px) & np.isfinite(qty) & (qty >= 0) & (ts >= 0)))[0])
    raise ValidationError(
        f"{batch.venue}/{batch.symbol}: trade {bad} has px={float(px[bad])!r} qty={float(qty[bad])!r} "
        f"ts_ns={int(ts[bad])} (prices and sizes must be finite, sizes and event times non-negative)"
    )


def _merge(series: _Series, keys: np.ndarray, rows: np.ndarray | None, n: int, ts_sorted: bool,
           tf_ns: np.ndarray, ts: np.ndarray, recv: np.ndarray, px: np.ndarray, qty: np.ndarray,
           side: np.ndarray) -> None:
    """Aggregates runs of equal key and merges them into the series' open bars.

    Args:
        keys: one (timeframe, bucket) key per on-time (trade, timeframe) row, non-decreasing,
            arrival order within equal keys.
        rows: the trade (index into the slice columns) of each key row; None means every
            timeframe's block holds all ``n`` trades in order.
        ts_sorted: the slice is in event-time order, so a run's first/last row is its open/close.
    """
    n_tf = tf_ns.shape[0]
    # The four sums per trade: volume, notional, buy volume, sell volume.
    vals = np.empty((n, 4))
    vals[:, 0] = qty
    np.multiply(px, qty, out=vals[:, 1])
    np.multiply(qty, side == BUY, out=vals[:, 2])
    np.multiply(qty, side == SELL, out=vals[:, 3])
    if rows is None:
        ts = np.concatenate((ts,) * n_tf)
        px = np.concatenate((px,) * n_tf)
        recv = np.concatenate((recv,) * n_tf)
        vals = np.concatenate((vals,) * n_tf)
    else:
        ts, px, recv, vals = ts[rows], px[rows], recv[rows], np.take(vals, rows, axis=0)
    size = keys.shape[0]
    brk = np.flatnonzero(keys[1:] != keys[:-1])
    m = brk.shape[0] + 1
    starts = np.empty(m, np.intp)
    starts[0] = 0
    np.add(brk, 1, out=starts[1:])
    lens = np.empty(m, np.intp)
    np.subtract(starts[1:], starts[:-1], out=lens[:-1])
    lens[-1] = size - starts[-1]
    seg_key = keys[starts]
    seg_tf_ns = tf_ns[seg_key >> _KEY_SHIFT]
    seg_start = (seg_key & _BUCKET_MASK) * seg_tf_ns

    ints = np.empty((m, _N_I), np.int64)
    floats = np.empty((m, _N_F))
    ints[:, _I_KEY] = seg_key
    ints[:, _I_START] = seg_start
    ints[:, _I_END] = seg_start + seg_tf_ns
    ints[:, _I_N] = lens
    ints[:, _I_RECV] = np.maximum.reduceat(recv, starts)
    floats[:, _F_HIGH] = np.maximum.reduceat(px, starts)
    floats[:, _F_LOW] = np.minimum.reduceat(px, starts)
    if ts_sorted:
        first = starts
        last = starts + lens - 1
    else:
        # Earliest event time per run, ties to the first arrival; latest, ties to the last arrival.
        seg_id = np.repeat(np.arange(m), lens)
        at = np.arange(size)
        first = np.minimum.reduceat(np.where(ts == np.minimum.reduceat(ts, starts)[seg_id], at, size), starts)
        last = np.maximum.reduceat(np.where(ts == np.maximum.reduceat(ts, starts)[seg_id], at, -1), starts)
    ints[:, _I_OPEN_TS] = ts[first]
    floats[:, _F_OPEN] = px[first]
    ints[:, _I_CLOSE_TS] = ts[last]
    floats[:, _F_CLOSE] = px[last]

    prev = np.zeros((m, 4))
    old_ints, old_floats = series.ints, series.floats
    k = old_ints.shape[0]
    if k:
        pos = np.searchsorted(old_ints[:, _I_KEY], seg_key)
        np.minimum(pos, k - 1, out=pos)
        matched = np.flatnonzero(old_ints[pos, _I_KEY] == seg_key)
        if matched.shape[0]:
            pos = pos[matched]
            o_ints, o_floats = np.take(old_ints, pos, axis=0), np.take(old_floats, pos, axis=0)
            s_ints, s_floats = np.take(ints, matched, axis=0), np.take(floats, matched, axis=0)
            prev[matched] = o_floats[:, _F_SUMS]
            # The open bar saw its trades first: it keeps the open on a tie and yields the close.
            keep_open = o_ints[:, _I_OPEN_TS] <= s_ints[:, _I_OPEN_TS]
            s_ints[keep_open, _I_OPEN_TS] = o_ints[keep_open, _I_OPEN_TS]
            s_floats[keep_open, _F_OPEN] = o_floats[keep_open, _F_OPEN]
            keep_close = o_ints[:, _I_CLOSE_TS] > s_ints[:, _I_CLOSE_TS]
            s_ints[keep_close, _I_CLOSE_TS] = o_ints[keep_close, _I_CLOSE_TS]
            s_floats[keep_close, _F_CLOSE] = o_floats[keep_close, _F_CLOSE]
            np.maximum(s_floats[:, _F_HIGH], o_floats[:, _F_HIGH], out=s_floats[:, _F_HIGH])
            np.minimum(s_floats[:, _F_LOW], o_floats[:, _F_LOW], out=s_floats[:, _F_LOW])
            s_ints[:, _I_N] += o_ints[:, _I_N]
            np.maximum(s_ints[:, _I_RECV], o_ints[:, _I_RECV], out=s_ints[:, _I_RECV])
            ints[matched] = s_ints
            floats[matched] = s_floats
            untouched = np.ones(k, bool)
            untouched[pos] = False
            old_ints, old_floats = old_ints[untouched], old_floats[untouched]
    floats[:, _F_SUMS] = _fold(prev, vals, starts, lens)

    if old_ints.shape[0]:
        ints = np.concatenate((old_ints, ints))
        floats = np.concatenate((old_floats, floats))
        key = ints[:, _I_KEY]
        if not bool((key[1:] > key[:-1]).all()):
            order = np.argsort(key, kind="stable")
            ints, floats = ints[order], floats[order]
    series.ints, series.floats = ints, floats


def _fold(prev: np.ndarray, vals: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Per run, the left fold ``((prev + v1) + v2) + ...`` of its rows, in row order.

    ``np.add.reduceat`` would sum pairwise, and the rounding would then depend on where batches
    were cut. Instead runs become the columns of a matrix gathered from the values (row 0 the
    run's previous total, row p its p-th value, then zeros: adding 0.0 is exact) reduced down
    its rows: NumPy adds row by row when the reduced axis is not the innermost one, and
    tests/test_bars.py checks the result bit for bit against one-trade-at-a-time updates. Runs
    are taken longest first in blocks whose padding stays within about twice their values, so a
    burst of 500 trades next to many single trades costs no 500-row matrix for the singles.
    """
    m = starts.shape[0]
    size = vals.shape[0]
    if m == size:  # every run is one row long
        return prev + vals
    table = np.concatenate((vals, prev, np.zeros((1, vals.shape[1]))))
    zero_row = size + m
    order = np.argsort(-lens, kind="stable")
    by_len = lens[order]
    cum = np.zeros(m + 1, np.intp)
    np.cumsum(by_len, out=cum[1:])
    out = np.empty_like(prev)
    a = 0
    while a < m:
        width = int(by_len[a])
        grow = np.arange(1, m - a + 1) * width <= 2 * (cum[a + 1:] - cum[a]) + _FOLD_SLACK_CELLS
        stop = np.flatnonzero(~grow)
        b = m if stop.shape[0] == 0 else a + int(stop[0])
        cols = order[a:b]
        row = np.arange(width)[:, None]
        src = np.empty((width + 1, b - a), np.intp)
        src[0] = size + cols
        np.copyto(src[1:], starts[cols] + row)
        src[1:][row >= lens[cols]] = zero_row
        out[cols] = np.add.reduce(np.take(table, src, axis=0), axis=0)
        a = b
    return out
