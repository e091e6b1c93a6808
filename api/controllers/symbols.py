"""``GET /api/symbols``: the series a client can ask for."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency

from api.controllers._query import ERROR_RESPONSES
from api.models import SymbolOut, SymbolsOut
from core.schema import TIMEFRAME_NS
from core.store import Store

__all__ = ["SymbolsController"]


class SymbolsController(Controller):
    path = "/api/symbols"
    tags = ["history"]

    @get("/", summary="Known symbols and timeframes", responses={503: ERROR_RESPONSES[503]})
    async def list_symbols(self, store: NamedDependency[Store]) -> SymbolsOut:
        """Every (venue, symbol) with stored trades, and the bar timeframes, shortest first."""
        rows = await store.run(store.symbols)
        return SymbolsOut(timeframes=list(TIMEFRAME_NS), symbols=msgspec.convert(rows, list[SymbolOut]))
