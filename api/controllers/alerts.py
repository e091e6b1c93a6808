"""``GET /api/alerts``: the alerts the mesh raised, newest first."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from api.controllers._query import ERROR_RESPONSES
from api.models import AlertOut
from core.store import Store

__all__ = ["AlertsController"]


class AlertsController(Controller):
    path = "/api/alerts"
    tags = ["signals"]

    @get("/", summary="Alerts, newest first", responses=ERROR_RESPONSES)
    async def list_alerts(self, store: NamedDependency[Store],
                          symbol: Annotated[str | None, Parameter(description="only this symbol")] = None,
                          venue: Annotated[str | None, Parameter(description="only this venue")] = None,
                          priority: Annotated[Literal["low", "medium", "high"] | None,
                                              Parameter(description="only this priority")] = None,
                          limit: Annotated[int, Parameter(ge=1, le=10_000, description="most alerts")] = 100,
                          ) -> list[AlertOut]:
        """Each alert: priority, the first signal of its window (action, title, body, context with
        price, stops and indicators, a link to the chart), and how many signals were folded into it."""
        rows = await store.run(store.alerts, symbol, venue, priority, limit)
        return [AlertOut(**r) for r in rows]
