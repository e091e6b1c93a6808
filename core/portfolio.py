"""Paper portfolio monitor: positions from signals and recorded executions, P&L, exposure, drawdown.

One account in one quote currency. Positions are keyed by ``(venue, symbol)``; each key owns a row
of NumPy arrays (``qty``, ``avg_px``, ``realized_pnl``, ``last_px``), so fills and marks for many
symbols update in one vectorized pass.

Accounting (average cost):

* A fill that opens or adds to a position moves the average price to the quantity-weighted mean:
  buy 2 @ 100 then 2 @ 110 gives 4 @ 105.
* A fill against the position realizes ``(px - avg_px) * closed_qty`` (sign of the position
  included) and leaves the average price alone: selling 3 of 4 @ 105 at 120 realizes 45.
* A fill larger than the position closes it at ``px`` and opens the rest at ``px`` (a flip).
  A reducing fill that leaves less than 1e-12 of the position (decimal quantities in binary
  floats: 0.1 + 0.2 - 0.3) closes it.
* Cash moves by ``-qty * px - fee``; fees are counted in the key's realized P&L.
* ``equity = cash + sum(qty * last_px)`` and ``equity - equity_start = realized + unrealized``.

Fills come from two sources kept side by side in one log: ``"signal"`` (paper fills the decision
engine takes) and ``"execution"`` (fills the user records from a real venue). The log is stored
column by column (a call appends arrays, never a Python object per fill); :attr:`Portfolio.fills`
and :meth:`Portfolio.fills_since` build :class:`Fill` records on demand. A fill given an
``id`` that was already applied is skipped, so replaying signals or re-posting an execution after
a crash does not count twice.

Days are UTC days of the event timestamps (int64 ns). When a fill or mark carries a later day
than any seen before, the equity just before it becomes the start-of-day equity, the base of
``daily_loss``. ``drawdown`` is measured from the highest equity seen at the end of any
:meth:`~Portfolio.apply_fills` or :meth:`~Portfolio.mark` call (per UTC day within a call), not
between the fills of one call: a batch of fills is one event, as a bar close is.

``last_px`` of a key is the price of its newest event by timestamp (a mark or a fill), so an old
execution recorded late does not overwrite a newer mark.

Exits. Each open position may carry a protective stop-loss and take-profit price
(:meth:`Portfolio.set_exits`, NaN = none). The portfolio never invents levels, it only drops them
when they stop making sense: a fill that closes the position clears them, and so does a fill that
flips it (the old levels guard the other side; the new side has none until the caller sets them).
A fill that adds to or reduces the position keeps them; the decision stage then calls
:meth:`~Portfolio.set_exits` with the newest signal's levels, so a position built by several
signals is guarded by the latest one's (placed from the latest close and ATR, not from the
average price). :meth:`Portfolio.exits` is a pure query: at a bar close it lists the orders that
close the positions whose level the close crossed, and the caller applies them with
:meth:`~Portfolio.apply_fills` (with ids, so an exit counts once across restarts).

Exits are judged at bar closes only, and the fill price is the close. A close beyond a stop
fills worse than the stop price, as a stop order does when a gap jumps it (conservative for that
bar); a close beyond a take-profit fills better than the limit price, which a slow move through
the level would not give (optimistic). And a level touched inside a bar that closes back on the
safe side is missed (a real stop or limit order would have filled), so close-only exits bound
the P&L in neither direction.

:meth:`Portfolio.to_bytes` / :meth:`Portfolio.from_bytes` carry the whole state (msgpack, exact
floats) across restarts.

Example:
    >>> p = Portfolio(100_000.0)
    >>> key = ("kraken", "BTC-USD")
    >>> _ = p.apply_fills([key, key], [2.0, 2.0], [100.0, 110.0], 0, "signal")
    >>> _ = p.apply_fills([key], [-3.0], [120.0], 1, "execution")
    >>> p.positions()[0]["avg_px"], p.realized, p.unrealized
    (105.0, 45.0, 15.0)
"""

from __future__ import annotations

from itertools import repeat
from typing import Literal, NamedTuple, Sequence

import msgspec
import numpy as np

from core.errors import SchemaError, ValidationError

__all__ = ["Portfolio", "Fill", "Exits", "Source", "NS_PER_DAY"]

NS_PER_DAY = 86_400 * 1_000_000_000
Source = Literal["signal", "execution"]
_SOURCES = ("signal", "execution")
# 2: the exit levels (stop_px, take_px) appended; a version 1 state loads without levels.
_STATE_VERSION = 2
_FLOAT_COLUMNS = ("qty", "avg_px", "realized_pnl", "last_px")
# Protective levels of each key's open position, quote currency; NaN = none.
_LEVEL_COLUMNS = ("stop_px", "take_px")
# A reducing fill leaving less than this fraction of the position closes it (float dust).
_QTY_DUST = 1e-12


class Fill(msgspec.Struct, frozen=True, array_like=True):
    """One applied fill, as listed by :attr:`Portfolio.fills`.

    Attributes:
        seq: position in the portfolio's fill log, from 0.
        ts_ns: event time, ns since the epoch (UTC).
        venue: venue of the position.
        symbol: canonical symbol of the position.
        qty: signed quantity in base units (+ buy, - sell).
        px: fill price, quote currency.
        source: ``"signal"`` (paper) or ``"execution"`` (recorded by the user).
        id: the caller's id for the fill ("" when none was given); ids are applied once.
        fee: fee paid, quote currency (negative for a rebate).
    """

    seq: int
    ts_ns: int
    venue: str
    symbol: str
    qty: float
    px: float
    source: str
    id: str = ""
    fee: float = 0.0


class Exits(NamedTuple):
    """The closing orders :meth:`Portfolio.exits` found, one per crossed position, in query order.

    Attributes:
        index: position of each order's price in the query (to build the caller's fill ids).
        keys: ``(venue, symbol)`` per order.
        qty: signed quantity that closes the position (minus the position), base units.
        px: fill price: the queried price (a bar close), quote currency.
        ts_ns: time of the queried price, ns since the epoch.
        reason: ``"stop_loss"`` or ``"take_profit"`` per order.
    """

    index: np.ndarray
    keys: list[tuple[str, str]]
    qty: np.ndarray
    px: np.ndarray
    ts_ns: np.ndarray
    reason: list[str]


class _State(msgspec.Struct, array_like=True):
    version: int
    equity_start: float
    cash: float
    peak_equity: float
    start_of_day_equity: float
    day: int | None
    keys: list[tuple[str, str]]
    qty: bytes
    avg_px: bytes
    realized_pnl: bytes
    last_px: bytes
    mark_ts_ns: bytes
    fill_ts_ns: bytes
    fill_row: bytes
    fill_qty: bytes
    fill_px: bytes
    fill_fee: bytes
    fill_source: bytes
    fill_ids: list[tuple[int, str]]
    # Version 2 on; a version 1 state has none.
    stop_px: bytes = b""
    take_px: bytes = b""


class _FillLog:
    """The fill log as column chunks, one per day of an :meth:`Portfolio.apply_fills` call."""

    # (name, dtype) of each column; `row` indexes the portfolio's keys, `source` _SOURCES.
    COLUMNS = (("ts_ns", np.int64), ("row", np.int64), ("qty", np.float64), ("px", np.float64),
               ("fee", np.float64), ("source", np.int8))

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self.ids: dict[int, str] = {}  # seq -> caller id, only for fills that have one
        self.n = 0

    def append(self, columns: tuple[np.ndarray, ...], ids: list[str] | None) -> None:
        if ids is not None:
            self.ids.update((self.n + j, fill_id) for j, fill_id in enumerate(ids) if fill_id)
        self.chunks.append(columns)
        self.n += columns[0].shape[0]

    def columns(self) -> tuple[np.ndarray, ...]:
        """Every column over the whole log (chunks merged into one, so later calls are cheap)."""
        if len(self.chunks) != 1:
            self.chunks = [tuple(np.concatenate([c[k] for c in self.chunks]) if self.chunks
                                 else np.zeros(0, dtype) for k, (_, dtype) in enumerate(self.COLUMNS))]
        return self.chunks[0]


class Portfolio:
    """A paper account: positions per ``(venue, symbol)``, cash, P&L, exposure and drawdown.

    Args:
        equity_start: cash at start, quote currency.

    Raises:
        ValidationError: ``equity_start`` is not finite and > 0.
    """

    def __init__(self, equity_start: float = 100_000.0) -> None:
        equity_start = float(equity_start)
        if not (np.isfinite(equity_start) and equity_start > 0):
            raise ValidationError(f"equity_start must be finite and > 0, got {equity_start}")
        self.equity_start = equity_start
        self.cash = equity_start
        self.peak_equity = equity_start
        self.start_of_day_equity = equity_start
        #: UTC day number (``ts_ns // NS_PER_DAY``) of the newest event; None before the first.
        self.day: int | None = None
        self._index: dict[tuple[str, str], int] = {}
        self._keys: list[tuple[str, str]] = []
        self._log = _FillLog()
        self._ids: set[str] = set()  # caller ids already applied
        self._alloc(16)
        self._encoder = msgspec.msgpack.Encoder()

    def _alloc(self, capacity: int) -> None:
        """(Re)allocates the row arrays with room for ``capacity`` keys, keeping existing rows."""
        for name, dtype, fill in (*((c, np.float64, 0.0) for c in _FLOAT_COLUMNS),
                                  *((c, np.float64, np.nan) for c in _LEVEL_COLUMNS),
                                  ("mark_ts_ns", np.int64, np.iinfo(np.int64).min)):
            grown = np.full(capacity, fill, dtype)
            old = getattr(self, "_" + name, None)
            if old is not None:
                grown[: old.shape[0]] = old
            setattr(self, "_" + name, grown)

    def __repr__(self) -> str:
        return (f"Portfolio(equity_start={self.equity_start}, positions={len(self._keys)}, "
                f"fills={self._log.n}, equity={self.equity:.2f})")

    # --- keys ---------------------------------------------------------------------------------
    def _rows(self, keys: Sequence[tuple[str, str]], create: bool) -> np.ndarray:
        """Row index per key; unknown keys get new rows (``create``) or -1."""
        index = self._index
        if create:
            for key in keys:
                if key not in index:
                    index[key] = len(self._keys)
                    self._keys.append(key)
            if len(self._keys) > self._qty.shape[0]:
                self._alloc(max(2 * self._qty.shape[0], len(self._keys)))
        return np.fromiter(map(index.get, keys, repeat(-1)), np.intp, len(keys))

    @property
    def keys(self) -> list[tuple[str, str]]:
        """Every ``(venue, symbol)`` that ever had a fill, in row order."""
        return list(self._keys)

    @property
    def fills(self) -> list[Fill]:
        """The whole fill log as records, oldest first (both sources), built on each access."""
        return self.fills_since(0)

    @property
    def n_fills(self) -> int:
        """Fills in the log."""
        return self._log.n

    def fills_since(self, seq: int) -> list[Fill]:
        """The fills with ``Fill.seq >= seq``, oldest first: what a reader that has seen the log
        up to ``seq - 1`` has not seen yet."""
        ts, row, qty, px, fee, source = (c[max(seq, 0):] for c in self._log.columns())
        ids = self._log.ids
        return [Fill(seq_i, t, *self._keys[r], q, x, _SOURCES[src], ids.get(seq_i, ""), f)
                for seq_i, t, r, q, x, src, f in zip(range(max(seq, 0), self._log.n), ts.tolist(), row.tolist(),
                                                     qty.tolist(), px.tolist(), source.tolist(), fee.tolist())]

    # --- events -------------------------------------------------------------------------------
    def apply_fills(self, keys: Sequence[tuple[str, str]], qty_delta, px, ts_ns, source: Source, *,
                    fee=0.0, ids: Sequence[str] | None = None) -> int:
        """Applies fills, many symbols at once.

        Fills are applied in timestamp-day order and, within a day, in the order given (several
        fills of one key in one call are applied one after the other). The whole call is checked
        before anything changes.

        Args:
            keys: ``(venue, symbol)`` per fill.
            qty_delta: signed quantity per fill, base units (+ buy, - sell), non-zero.
            px: fill price per fill, quote currency, > 0.
            ts_ns: event time, ns since the epoch, one for all or one per fill.
            source: ``"signal"`` for paper fills, ``"execution"`` for fills recorded by the user.
            fee: fee per fill (or one for all), quote currency.
            ids: optional caller id per fill; a fill whose id was applied before (in this or an
                earlier call) is skipped.

        Returns:
            The number of fills applied.

        Raises:
            ValidationError: unknown source, columns of different lengths, a zero or non-finite
                quantity, a price that is not finite and > 0, a non-finite fee or a negative time.
        """
        if source not in _SOURCES:
            raise ValidationError(f"fill source must be one of {_SOURCES}, got {source!r}")
        n = len(keys)
        try:
            qty, price, fees = (np.broadcast_to(np.asarray(a, np.float64), (n,)) for a in (qty_delta, px, fee))
            ts = np.broadcast_to(np.asarray(ts_ns, np.int64), (n,))
        except ValueError as exc:
            raise ValidationError(f"fill columns do not match {n} keys: {exc}") from None
        if ids is not None and len(ids) != n:
            raise ValidationError(f"{len(ids)} ids for {n} fills")
        if not (np.isfinite(qty).all() and (qty != 0).all()):
            raise ValidationError("fill quantities must be finite and non-zero")
        _check_px(price, "fill")
        if not np.isfinite(fees).all():
            raise ValidationError("fill fees must be finite")
        _check_ts(ts)
        keep = np.ones(n, bool)
        if ids is not None:
            seen = set()
            for i, fill_id in enumerate(ids):
                if fill_id and (fill_id in self._ids or fill_id in seen):
                    keep[i] = False
                seen.add(fill_id)
        if not keep.all():
            sel = np.flatnonzero(keep)
            keys = [keys[i] for i in sel]
            qty, price, fees, ts = qty[sel], price[sel], fees[sel], ts[sel]
            ids = [ids[i] for i in sel]
            n = len(keys)
        if n == 0:
            return 0
        rows = self._rows(keys, create=True)
        applied = []
        for sel in self._days(ts):
            applied.append(sel)
            for part in _unique_runs(rows[sel]):
                i = sel[part]
                self._fill_unique(rows[i], qty[i], price[i], fees[i], ts[i])
            self._touch_peak()
        # The log follows the order of application: by day, then as given.
        i = applied[0] if len(applied) == 1 else np.concatenate(applied)
        source_code = np.full(n, _SOURCES.index(source), np.int8)
        self._log.append((ts[i].copy(), rows[i].astype(np.int64), qty[i].copy(), price[i].copy(), fees[i].copy(),
                          source_code), None if ids is None else [ids[j] for j in i.tolist()])
        if ids is not None:
            self._ids.update(fill_id for fill_id in ids if fill_id)
        return n

    def mark(self, keys: Sequence[tuple[str, str]], px, ts_ns) -> None:
        """Marks positions to market (e.g. at a bar close). Keys without a position are ignored.

        A mark older than the key's newest event does not change its price. Marks on a later UTC
        day than any seen roll the day first: the equity before them becomes start-of-day equity.

        Args:
            keys: ``(venue, symbol)`` per price.
            px: price per key, quote currency, > 0.
            ts_ns: event time, ns since the epoch, one for all or one per key.

        Raises:
            ValidationError: lengths differ, a price is not finite and > 0, or a time is negative.
        """
        n = len(keys)
        price, ts = _priced(n, px, ts_ns, "mark")
        if n == 0:
            return
        rows = self._rows(keys, create=False)
        for sel in self._days(ts):
            r, p, t = rows[sel], price[sel], ts[sel]
            known = r >= 0
            r, p, t = r[known], p[known], t[known]
            # Of several marks of one key the newest wins (equal times: the last given). Fancy
            # assignment with repeated indices has no defined winner, so keep one mark per key
            # (a bar close marks each key once: then there is nothing to sort out).
            if r.shape[0] and np.bincount(r).max() > 1:
                order = np.lexsort((np.arange(r.shape[0]), t))[::-1]
                _, last = np.unique(r[order], return_index=True)
                r, p, t = r[order[last]], p[order[last]], t[order[last]]
            newer = t >= self._mark_ts_ns[r]
            self._last_px[r[newer]] = p[newer]
            self._mark_ts_ns[r[newer]] = t[newer]
            self._touch_peak()

    def set_exits(self, keys: Sequence[tuple[str, str]], stop_px, take_px) -> int:
        """Sets the stop-loss and take-profit of open positions, replacing their previous levels.

        Keys that are flat or unknown are skipped: a level belongs to an open position, and one
        left on a flat key would guard whatever position opens next, on either side. Of several
        entries for one key the last given wins. The whole call is checked before anything changes.

        Args:
            keys: ``(venue, symbol)`` per entry.
            stop_px: stop-loss price per entry (or one for all), quote currency, > 0; NaN = none.
            take_px: take-profit price per entry (or one for all), quote currency, > 0; NaN = none.

        Returns:
            The number of entries applied (keys with an open position, each counted once).

        Raises:
            ValidationError: lengths differ, a level is neither NaN nor finite and > 0, or a
                position's stop is not on the losing side of its take-profit (a long needs
                ``stop < take``, a short ``stop > take``).
        """
        n = len(keys)
        try:
            stop, take = (np.broadcast_to(np.asarray(a, np.float64), (n,)) for a in (stop_px, take_px))
        except ValueError as exc:
            raise ValidationError(f"exit levels do not match {n} keys: {exc}") from None
        for levels, what in ((stop, "stop-loss"), (take, "take-profit")):
            if not (np.isnan(levels) | (np.isfinite(levels) & (levels > 0))).all():
                raise ValidationError(f"{what} prices must be NaN (none) or finite and > 0")
        rows = self._rows(keys, create=False)
        side = np.where(rows >= 0, np.sign(self._qty[np.maximum(rows, 0)]), 0.0)
        # Levels the wrong way round could both be crossed by one price. NaN compares False here.
        if ((side != 0) & (side * (take - stop) <= 0)).any():
            raise ValidationError("a stop-loss must lie below the take-profit of a long, above it for a short")
        open_ = np.flatnonzero(side != 0)
        # Fancy assignment with repeated indices has no defined winner: keep each row's last entry.
        _, last = np.unique(rows[open_][::-1], return_index=True)
        pick = open_[open_.shape[0] - 1 - last]
        self._stop_px[rows[pick]] = stop[pick]
        self._take_px[rows[pick]] = take[pick]
        return int(pick.shape[0])

    def exits(self, keys: Sequence[tuple[str, str]], px, ts_ns) -> Exits:
        """The orders that close positions whose stop-loss or take-profit ``px`` crossed.

        A long exits at ``px <= stop_px`` (reason ``"stop_loss"``) or ``px >= take_px``
        (``"take_profit"``); a short at ``px >= stop_px`` or ``px <= take_px``. The fill price is
        ``px`` itself (see the module docstring for what close-only exits miss). A pure query:
        nothing changes until the caller applies the orders with :meth:`apply_fills`.

        Keys without an open position or without levels give nothing, nor does a price older than
        the key's newest event (it predates the position as it is now). Of several prices of one
        key, the earliest that crosses a level (equal times: the first given) gives its one order.

        Args:
            keys: ``(venue, symbol)`` per price.
            px: price per key (e.g. bar close), quote currency, > 0.
            ts_ns: time of each price, ns since the epoch, one for all or one per key.

        Returns:
            The closing orders as :class:`Exits`, in the order of their prices in the query.

        Raises:
            ValidationError: lengths differ, a price is not finite and > 0, or a time is negative.
        """
        n = len(keys)
        price, ts = _priced(n, px, ts_ns, "exit query")
        rows = self._rows(keys, create=False)
        r = np.maximum(rows, 0)  # row 0 stands in for unknown keys, masked out below
        qty = np.where(rows >= 0, self._qty[r], 0.0)
        current = (rows >= 0) & (ts >= self._mark_ts_ns[r])
        long, short = current & (qty > 0), current & (qty < 0)
        stop, take = self._stop_px[r], self._take_px[r]
        # A missing level (NaN) compares False: never crossed.
        hit_stop = (long & (price <= stop)) | (short & (price >= stop))
        hit_take = (long & (price >= take)) | (short & (price <= take))
        hit = np.flatnonzero(hit_stop | hit_take)
        if np.unique(rows[hit]).shape[0] < hit.shape[0]:
            # A position closes once: at the earliest crossing, as if the prices came in time order.
            order = hit[np.lexsort((hit, ts[hit], rows[hit]))]
            _, first = np.unique(rows[order], return_index=True)
            hit = np.sort(order[first])
        # Consistent levels cannot both be crossed; restored odd ones exit by the stop (the loss).
        reason = np.where(hit_stop[hit], "stop_loss", "take_profit").tolist()
        return Exits(hit, [keys[i] for i in hit.tolist()], -qty[hit], price[hit].copy(), ts[hit].copy(), reason)

    def _days(self, ts: np.ndarray):
        """Yields the indices of each UTC day's events, oldest day first, rolling the day (start-of-day
        equity) before a day later than any seen."""
        day = ts // NS_PER_DAY
        days = np.unique(day)
        for d in days.tolist():
            if self.day is None or d > self.day:
                # The equity before the first event of a new day is that day's opening equity.
                self.start_of_day_equity = self.equity
                self.day = d
            yield np.flatnonzero(day == d) if days.shape[0] > 1 else np.arange(ts.shape[0])

    def _fill_unique(self, r: np.ndarray, dq: np.ndarray, p: np.ndarray, fee: np.ndarray, t: np.ndarray) -> None:
        q = self._qty[r]
        a = self._avg_px[r]
        adding = (q == 0) | (np.sign(q) == np.sign(dq))
        new_q = q + dq
        # 0.1 + 0.2 bought and 0.3 sold leaves 5.6e-17: a close in decimal terms is a close.
        new_q = np.where(~adding & (np.abs(new_q) <= _QTY_DUST * np.abs(q)), 0.0, new_q)
        closed = np.where(adding, 0.0, np.minimum(np.abs(dq), np.abs(q)))
        self._realized_pnl[r] += closed * (p - a) * np.sign(q) - fee
        with np.errstate(divide="ignore", invalid="ignore"):
            weighted = (a * q + p * dq) / new_q
        flipped = ~adding & (np.abs(dq) > np.abs(q))
        self._avg_px[r] = np.where(adding, weighted, np.where(flipped, p, np.where(new_q == 0, 0.0, a)))
        self._qty[r] = new_q
        # Levels guard the position they were set for: none survive a close or a flip.
        gone = r[(new_q == 0) | flipped]
        self._stop_px[gone] = np.nan
        self._take_px[gone] = np.nan
        self.cash -= float(np.sum(dq * p)) + float(np.sum(fee))
        newer = t >= self._mark_ts_ns[r]
        self._last_px[r[newer]] = p[newer]
        self._mark_ts_ns[r[newer]] = t[newer]

    def _touch_peak(self) -> None:
        equity = self.equity
        if equity > self.peak_equity:
            self.peak_equity = equity

    # --- figures ------------------------------------------------------------------------------
    @property
    def _value(self) -> np.ndarray:
        n = len(self._keys)
        return self._qty[:n] * self._last_px[:n]

    @property
    def equity(self) -> float:
        """Cash plus the market value of every position, quote currency."""
        return self.cash + float(self._value.sum())

    @property
    def realized(self) -> float:
        """Realized P&L of all positions, fees included, quote currency."""
        return float(self._realized_pnl[: len(self._keys)].sum())

    @property
    def unrealized(self) -> float:
        """``sum(qty * (last_px - avg_px))``, quote currency."""
        n = len(self._keys)
        return float((self._qty[:n] * (self._last_px[:n] - self._avg_px[:n])).sum())

    @property
    def gross_exposure(self) -> float:
        """``sum(|qty * last_px|)``, quote currency."""
        return float(np.abs(self._value).sum())

    @property
    def net_exposure(self) -> float:
        """``sum(qty * last_px)``, quote currency (long minus short)."""
        return float(self._value.sum())

    @property
    def drawdown(self) -> float:
        """``1 - equity / peak_equity``, >= 0."""
        return max(0.0, 1.0 - self.equity / self.peak_equity)

    @property
    def daily_loss(self) -> float:
        """``max(0, 1 - equity / start_of_day_equity)``; 1 when the day started at equity <= 0."""
        if self.start_of_day_equity <= 0:
            return 1.0
        return max(0.0, 1.0 - self.equity / self.start_of_day_equity)

    def position_notional(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        """Signed market value ``qty * last_px`` per key (0 for keys without a position), the
        ``position_notional`` input of :func:`core.risk.size`."""
        rows = self._rows(keys, create=False)
        out = np.zeros(rows.shape[0], np.float64)
        known = rows >= 0
        out[known] = self._qty[rows[known]] * self._last_px[rows[known]]
        return out

    def positions(self) -> list[dict]:
        """One dict per key: venue, symbol, qty, avg_px, last_px, unrealized, realized, exposure
        (signed market value), stop_px and take_px (None when not set), in row order; flat keys
        stay listed with their realized P&L."""
        n = len(self._keys)
        qty, avg, last = self._qty[:n], self._avg_px[:n], self._last_px[:n]
        unrealized = (qty * (last - avg)).tolist()
        exposure = (qty * last).tolist()
        # None rather than NaN: the rows are served as JSON, which has no NaN.
        stop, take = ([None if x != x else x for x in getattr(self, "_" + c)[:n].tolist()] for c in _LEVEL_COLUMNS)
        return [
            {"venue": venue, "symbol": symbol, "qty": q, "avg_px": a, "last_px": lp,
             "unrealized": u, "realized": rz, "exposure": e, "stop_px": sl, "take_px": tp}
            for (venue, symbol), q, a, lp, u, rz, e, sl, tp in zip(
                self._keys, qty.tolist(), avg.tolist(), last.tolist(), unrealized,
                self._realized_pnl[:n].tolist(), exposure, stop, take)
        ]

    def snapshot(self) -> dict:
        """Account figures and per-position rows, plain Python values (JSON-ready)."""
        return {
            "equity": self.equity,
            "cash": self.cash,
            "realized": self.realized,
            "unrealized": self.unrealized,
            "gross_exposure": self.gross_exposure,
            "net_exposure": self.net_exposure,
            "peak_equity": self.peak_equity,
            "start_of_day_equity": self.start_of_day_equity,
            "drawdown": self.drawdown,
            "daily_loss": self.daily_loss,
            "day": self.day,
            "n_fills": self._log.n,
            "positions": self.positions(),
        }

    # --- persistence --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The whole state as msgpack (exact floats); :meth:`from_bytes` continues identically."""
        n = len(self._keys)
        return self._encoder.encode(_State(
            _STATE_VERSION, self.equity_start, self.cash, self.peak_equity, self.start_of_day_equity, self.day,
            list(self._keys), *(getattr(self, "_" + c)[:n].tobytes() for c in _FLOAT_COLUMNS),
            self._mark_ts_ns[:n].tobytes(), *(c.tobytes() for c in self._log.columns()),
            sorted(self._log.ids.items()), *(getattr(self, "_" + c)[:n].tobytes() for c in _LEVEL_COLUMNS)))

    @classmethod
    def from_bytes(cls, data: bytes) -> Portfolio:
        """Rebuilds a portfolio from :meth:`to_bytes` output.

        A version 1 state (before exit levels) loads with no levels.

        Raises:
            SchemaError: the bytes are not a portfolio state of version 1 or 2.
        """
        try:
            state = msgspec.msgpack.decode(data, type=_State)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"undecodable portfolio state: {exc}") from None
        if state.version not in (1, _STATE_VERSION):
            raise SchemaError(f"portfolio state version {state.version}, expected 1 or {_STATE_VERSION}")
        n = len(state.keys)
        levels = state.version >= 2
        columns = [*(getattr(state, c) for c in _FLOAT_COLUMNS), state.mark_ts_ns]
        if levels:
            columns += [getattr(state, c) for c in _LEVEL_COLUMNS]
        elif any(getattr(state, c) for c in _LEVEL_COLUMNS):
            raise SchemaError("portfolio state version 1 with exit levels")
        if any(len(col) != 8 * n for col in columns) or len(set(map(tuple, state.keys))) != n:
            raise SchemaError("portfolio state: columns do not match its keys")
        try:
            portfolio = cls(state.equity_start)
        except ValidationError as exc:
            raise SchemaError(f"portfolio state: {exc}") from None
        keys = [tuple(k) for k in state.keys]
        portfolio._rows(keys, create=True)
        for name in _FLOAT_COLUMNS:
            getattr(portfolio, "_" + name)[:n] = np.frombuffer(getattr(state, name), np.float64)
        portfolio._mark_ts_ns[:n] = np.frombuffer(state.mark_ts_ns, np.int64)
        for name in _LEVEL_COLUMNS if levels else ():
            getattr(portfolio, "_" + name)[:n] = np.frombuffer(getattr(state, name), np.float64)
        portfolio.cash = state.cash
        portfolio.peak_equity = state.peak_equity
        portfolio.start_of_day_equity = state.start_of_day_equity
        portfolio.day = state.day
        fill_columns = []
        for name, dtype in _FillLog.COLUMNS:
            raw = getattr(state, "fill_" + name)
            if len(raw) % np.dtype(dtype).itemsize:
                raise SchemaError(f"portfolio state: fill column {name} has a partial value")
            fill_columns.append(np.frombuffer(raw, dtype).copy())
        n_fills = fill_columns[0].shape[0]
        if (any(c.shape[0] != n_fills for c in fill_columns)
                or (n_fills and not (0 <= fill_columns[1].min() and fill_columns[1].max() < n))
                or (n_fills and not (0 <= fill_columns[5].min() and fill_columns[5].max() < len(_SOURCES)))
                or any(not 0 <= seq < n_fills for seq, _ in state.fill_ids)):
            raise SchemaError("portfolio state: fill log columns do not match")
        if n_fills:
            portfolio._log.append(tuple(fill_columns), None)
        portfolio._log.ids = dict(state.fill_ids)
        portfolio._ids = set(portfolio._log.ids.values())
        return portfolio


def _priced(n: int, px, ts_ns, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Prices and times of ``n`` keys as checked arrays (a scalar broadcast to all)."""
    try:
        price = np.broadcast_to(np.asarray(px, np.float64), (n,))
        ts = np.broadcast_to(np.asarray(ts_ns, np.int64), (n,))
    except ValueError as exc:
        raise ValidationError(f"{what} columns do not match {n} keys: {exc}") from None
    _check_px(price, what)
    _check_ts(ts)
    return price, ts


def _check_px(px: np.ndarray, what: str) -> None:
    if not (np.isfinite(px).all() and (px > 0).all()):
        raise ValidationError(f"{what} prices must be finite and > 0")


def _check_ts(ts: np.ndarray) -> None:
    if ts.shape[0] and ts.min() < 0:
        raise ValidationError("event times must be >= 0 ns since the epoch")


def _unique_runs(rows: np.ndarray) -> list[np.ndarray]:
    """Splits positions ``0..len(rows)-1`` into groups without a repeated row: the k-th group holds
    each row's k-th occurrence, so applying the groups in turn keeps every row's own order."""
    if np.unique(rows).shape[0] == rows.shape[0]:
        return [np.arange(rows.shape[0])]
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, sorted_rows.shape[0]]))
    return [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]
