"""Normalized events an adapter returns, before they are batched into wire columns."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Trade", "Quote", "Event"]


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
