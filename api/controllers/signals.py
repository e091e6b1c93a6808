"""``GET /api/signals``: stored signals of one symbol, filtered as a trader asks for them."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from api.controllers._query import ERROR_RESPONSES, End, Limit, Start, Symbol
from api.models import SignalOut
from api.params import check_range, check_timeframe, parse_time_ns
from core.store import Store

__all__ = ["SignalsController"]

OptionalVenue = Annotated[str | None, Parameter(description="venue id, e.g. `kraken` (default: every venue)")]
OptionalTimeframe = Annotated[str | None, Parameter(description="bar timeframe, e.g. `5m` (default: every one)")]
MinConfidence = Annotated[float, Parameter(ge=0, le=100, description="least confidence, 0..100 (default 0)")]
Action = Annotated[Literal["BUY", "SELL", "HOLD"] | None, Parameter(description="only this action")]


class SignalsController(Controller):
    path = "/api/signals"
    tags = ["signals"]

    @get("/", summary="Signals of one symbol", responses=ERROR_RESPONSES)
    async def list_signals(self, store: NamedDependency[Store], symbol: Symbol, venue: OptionalVenue = None,
                           timeframe: OptionalTimeframe = None, min_confidence: MinConfidence = 0.0,
                           action: Action = None, start: Start = None, end: End = None,
                           limit: Limit = 100) -> list[SignalOut]:
        """Signals with ``confidence >= min_confidence`` for bars with ``start <= start_ns < end``,
        ascending; the latest ``limit``. Each carries its evidence: expected return and uncertainty,
        risk-reward, expected value, Kelly fraction and position size, stop-loss and take-profit,
        each source's contribution, the top features, model versions and ``degraded``.
        """
        tf = check_timeframe("timeframe", timeframe) if timeframe else None
        start_ns, end_ns = parse_time_ns("start", start), parse_time_ns("end", end)
        check_range(start_ns, end_ns)
        rows = await store.run(store.signals, symbol, venue, tf, min_confidence, action, start_ns, end_ns, limit)
        return [SignalOut.from_row(r) for r in rows]
