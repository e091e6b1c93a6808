"""``GET /api/portfolio``: the paper portfolio the decision stage keeps from its signals."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from nats.js.errors import KeyNotFoundError, NotFoundError

from api.controllers._query import ERROR_RESPONSES
from api.models import PortfolioOut
from api.runtime import ApiRuntime
from core.streams import PORTFOLIO_KEY, STATE_BUCKET

__all__ = ["PortfolioController"]


class PortfolioController(Controller):
    path = "/api/portfolio"
    tags = ["signals"]

    @get("/", summary="The paper portfolio", responses=ERROR_RESPONSES)
    async def portfolio(self, runtime: NamedDependency[ApiRuntime]) -> PortfolioOut:
        """Equity, cash, realized and unrealized P&L, exposure, drawdown, daily loss and one row per
        position (venue, symbol, timeframe: each series is its own paper book), as of the
        inference worker's latest snapshot (``updated_ns``). 404 until it has decided something.
        """
        try:
            kv = await runtime.js.key_value(STATE_BUCKET)
            entry = await kv.get(PORTFOLIO_KEY)
        except (KeyNotFoundError, NotFoundError):
            raise NotFoundException("no paper portfolio yet: the inference worker has not taken a decision") from None
        return msgspec.json.decode(entry.value, type=PortfolioOut)
