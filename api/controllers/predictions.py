"""``GET /api/predictions``: stored model predictions of one symbol."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from api.controllers._query import DEFAULT_LIMIT, ERROR_RESPONSES, End, Limit, Start, Symbol, Venue
from api.models import PredictionOut
from api.params import check_range, check_timeframe, parse_time_ns
from core.store import Store

__all__ = ["PredictionsController"]

Model = Annotated[str | None, Parameter(description="model name, e.g. `forecast` (default: every model)")]
OptionalTimeframe = Annotated[str | None, Parameter(description="bar timeframe, e.g. `1m` (default: every one)")]


class PredictionsController(Controller):
    path = "/api/predictions"
    tags = ["history"]

    @get("/", summary="Model predictions of one symbol", responses=ERROR_RESPONSES)
    async def list_predictions(self, store: NamedDependency[Store], venue: Venue, symbol: Symbol,
                               timeframe: OptionalTimeframe = None, model: Model = None, start: Start = None,
                               end: End = None, limit: Limit = DEFAULT_LIMIT) -> list[PredictionOut]:
        """Predictions for bars with ``start <= start_ns < end``, ascending; the latest ``limit``.

        ``degraded`` marks answers of the rule-based fallback (Triton down or slow; ``reason``
        says which), ``version`` 0 for those.
        """
        tf = check_timeframe("timeframe", timeframe) if timeframe else None
        start_ns, end_ns = parse_time_ns("start", start), parse_time_ns("end", end)
        check_range(start_ns, end_ns)
        rows = await store.run(store.predictions, venue, symbol, tf, model, start_ns, end_ns, limit)
        return [PredictionOut.from_row(r) for r in rows]
