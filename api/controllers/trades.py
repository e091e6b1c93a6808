"""``GET /api/trades``: stored trades of one series."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency

from api.controllers._query import DEFAULT_LIMIT, ERROR_RESPONSES, End, Limit, Start, Symbol, Venue
from api.models import TradeOut
from api.params import check_range, parse_time_ns
from core.store import Store

__all__ = ["TradesController"]


class TradesController(Controller):
    path = "/api/trades"
    tags = ["history"]

    @get("/", summary="Trades of one series", responses=ERROR_RESPONSES)
    async def list_trades(self, store: NamedDependency[Store], venue: Venue, symbol: Symbol, start: Start = None,
                          end: End = None, limit: Limit = DEFAULT_LIMIT) -> list[TradeOut]:
        """Trades with ``start <= ts_ns < end``, ascending by (``ts_ns``, ``trade_id``); the latest ``limit``."""
        start_ns, end_ns = parse_time_ns("start", start), parse_time_ns("end", end)
        check_range(start_ns, end_ns)
        rows = await store.run(store.trades, venue, symbol, start_ns, end_ns, limit)
        return msgspec.convert(rows, list[TradeOut])
