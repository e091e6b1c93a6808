"""``GET /api/bars``: stored OHLCV bars of one series."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency

from api.controllers._query import DEFAULT_LIMIT, ERROR_RESPONSES, End, Limit, Start, Symbol, Timeframe, Venue
from api.models import BarOut
from api.params import check_range, check_timeframe, parse_time_ns
from core.store import Store

__all__ = ["BarsController"]


class BarsController(Controller):
    path = "/api/bars"
    tags = ["history"]

    @get("/", summary="Bars of one series", responses=ERROR_RESPONSES)
    async def list_bars(self, store: NamedDependency[Store], venue: Venue, symbol: Symbol, timeframe: Timeframe = "1m",
                        start: Start = None, end: End = None, limit: Limit = DEFAULT_LIMIT) -> list[BarOut]:
        """Bars with ``start <= start_ns < end``, ascending by ``start_ns``; the latest ``limit`` of them."""
        tf = check_timeframe("timeframe", timeframe)
        start_ns, end_ns = parse_time_ns("start", start), parse_time_ns("end", end)
        check_range(start_ns, end_ns)
        rows = await store.run(store.bars, venue, symbol, tf, start_ns, end_ns, limit)
        return msgspec.convert(rows, list[BarOut])
