"""Normalized events an adapter returns, before they are batched into wire columns.

Most frames carry one or a few events, returned as :class:`Trade`/:class:`Quote` tuples. A bulk
frame (a REST page of a thousand trades) may instead be returned as :class:`TradeColumns`, one
columnar block per symbol, wrapped in :class:`FrameEvents`: validation and the publisher then work
on whole NumPy arrays, while anyone iterating the frame still sees one ``Trade`` per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Trade", "Quote", "Event", "TradeColumns", "FrameEvents", "concat_trades"]

_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call


class Trade(NamedTuple):
    """One trade. ``side`` is the aggressor: 1 buy, -1 sell, 0 unknown (core.schema codes)."""

    symbol: str
    ts_ns: int
    px: float
    qty: float
    side: int
    trade_id: int


class Quote(NamedTuple):
    """One top-of-book update."""

    symbol: str
    ts_ns: int
    bid_px: float
    bid_qty: float
    ask_px: float
    ask_qty: float


Event = Trade | Quote


class TradeColumns:
    """Trades of one symbol from one frame, column by column, in frame order.

    The columns follow :class:`Trade`'s fields and the dtypes of ``core.schema.TradeBatch``:
    ``ts_ns`` int64, ``px``/``qty`` float64, ``side`` int8, ``trade_id`` int64, all of one length.
    ``len()`` is the number of trades (not of fields, unlike a NamedTuple).
    """

    __slots__ = ("symbol", "ts_ns", "px", "qty", "side", "trade_id")

    def __init__(self, symbol: str, ts_ns: np.ndarray, px: np.ndarray, qty: np.ndarray, side: np.ndarray,
                 trade_id: np.ndarray) -> None:
        self.symbol = symbol
        self.ts_ns = ts_ns
        self.px = px
        self.qty = qty
        self.side = side
        self.trade_id = trade_id

    def __len__(self) -> int:
        return self.ts_ns.shape[0]

    def __repr__(self) -> str:
        return f"TradeColumns({self.symbol!r}, {len(self)} trades)"

    @classmethod
    def from_events(cls, symbol: str, trades: Sequence[Trade]) -> "TradeColumns":
        """Columns of ``trades`` (all of ``symbol``)."""
        if not trades:
            return cls(symbol, np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64),
                       np.empty(0, np.int8), np.empty(0, np.int64))
        _, ts_ns, px, qty, side, trade_id = zip(*trades)
        return cls(symbol, np.array(ts_ns, dtype=np.int64), np.array(px, dtype=np.float64),
                   np.array(qty, dtype=np.float64), np.array(side, dtype=np.int8),
                   np.array(trade_id, dtype=np.int64))

    def columns(self) -> tuple[np.ndarray, ...]:
        """(ts_ns, px, qty, side, trade_id): Trade's fields after ``symbol``."""
        return self.ts_ns, self.px, self.qty, self.side, self.trade_id

    def take(self, index: slice | np.ndarray) -> "TradeColumns":
        """The rows selected by a slice (views) or a boolean mask / index array (copies)."""
        return TradeColumns(self.symbol, self.ts_ns[index], self.px[index], self.qty[index], self.side[index],
                            self.trade_id[index])

    def events(self) -> list[Trade]:
        """One :class:`Trade` per row, with plain Python ints and floats."""
        n = len(self)
        return [_tuple_new(Trade, row) for row in zip(
            [self.symbol] * n, self.ts_ns.tolist(), self.px.tolist(), self.qty.tolist(), self.side.tolist(),
            self.trade_id.tolist())]


def concat_trades(symbol: str, parts: Sequence[TradeColumns | Trade]) -> TradeColumns:
    """One block of ``symbol`` from blocks and single trades, in the given order."""
    blocks: list[TradeColumns] = []
    run: list[Trade] = []
    for part in parts:
        if type(part) is TradeColumns:
            if run:
                blocks.append(TradeColumns.from_events(symbol, run))
                run = []
            blocks.append(part)
        else:
            run.append(part)
    if run:
        blocks.append(TradeColumns.from_events(symbol, run))
    if len(blocks) == 1:
        return blocks[0]
    if not blocks:
        return TradeColumns.from_events(symbol, ())
    return TradeColumns(symbol, *(np.concatenate(cols) for cols in zip(*(b.columns() for b in blocks))))


class FrameEvents(Sequence):
    """One frame's events as single events and columnar blocks (``items``, in frame order).

    A :class:`~collections.abc.Sequence` of events: ``len()`` counts events, and indexing or
    iterating yields one :class:`Trade`/:class:`Quote` per event (blocks are expanded on first
    use, then kept). The hot path (validation, publisher, readers) reads ``items`` and never
    expands a block. Compares equal to any sequence of the same events, e.g. a list.
    """

    __slots__ = ("items", "_len", "_flat")

    def __init__(self, items: list[Event | TradeColumns]) -> None:
        self.items = items
        self._len = sum(len(x) if type(x) is TradeColumns else 1 for x in items)
        self._flat: list[Event] | None = None

    def __len__(self) -> int:
        return self._len

    def _events(self) -> list[Event]:
        if self._flat is None:
            flat: list[Event] = []
            for item in self.items:
                if type(item) is TradeColumns:
                    flat.extend(item.events())
                else:
                    flat.append(item)
            self._flat = flat
        return self._flat

    def __getitem__(self, index):
        return self._events()[index]

    def __iter__(self):
        return iter(self._events())

    def __eq__(self, other) -> bool:
        if isinstance(other, FrameEvents):
            return self._events() == other._events()
        if isinstance(other, (list, tuple)):
            return self._events() == list(other)
        return NotImplemented

    __hash__ = None  # mutable, like a list

    def __repr__(self) -> str:
        return f"FrameEvents({self.items!r})"
