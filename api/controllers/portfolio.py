"""``GET /api/portfolio``: the paper portfolio the decision stage keeps from its signals;
``POST /api/executions``: fills the user executed, booked into it."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody
from nats.js.errors import KeyNotFoundError, NotFoundError

from api.controllers._query import ERROR_RESPONSES
from api.errors import BadParameterError
from api.models import PortfolioOut
from api.params import check_timeframe, parse_time_ns
from api.runtime import ApiRuntime
from core.signals import Execution, execution_key
from core.streams import PORTFOLIO_KEY, STATE_BUCKET

__all__ = ["PortfolioController", "ExecutionsController", "ExecutionIn"]


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


class ExecutionIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fill you executed: signed ``qty`` (+ bought, - sold) at ``price`` (quote currency)."""

    venue: Annotated[str, msgspec.Meta(min_length=1)]
    symbol: Annotated[str, msgspec.Meta(min_length=1)]
    timeframe: str
    qty: float
    price: float
    time: str | None = None
    fee: float = 0.0
    id: str | None = None
    note: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class ExecutionsController(Controller):
    path = "/api/executions"
    tags = ["signals"]

    @post("/", summary="Record a fill you executed", status_code=202, responses=ERROR_RESPONSES)
    async def record(self, runtime: NamedDependency[ApiRuntime], data: JSONBody[ExecutionIn]) -> Execution:
        """Hands the fill to the inference workers, which book it (once per ``id``; default: one
        made from the fill itself) into the paper book of that series; `GET /api/portfolio` shows it
        after their next snapshot. ``time``: ISO-8601 or epoch s/ms/us/ns (default: now)."""
        check_timeframe("timeframe", data.timeframe)
        if not math.isfinite(data.qty) or data.qty == 0:
            raise BadParameterError("qty", "must be a non-zero number (+ bought, - sold)")
        if not math.isfinite(data.price) or data.price <= 0:
            raise BadParameterError("price", "must be a number > 0")
        if not math.isfinite(data.fee):
            raise BadParameterError("fee", "must be a number")
        ts_ns = parse_time_ns("time", data.time) if data.time else time.time_ns()
        ex_id = data.id or "exec." + hashlib.blake2b(
            msgspec.json.encode([data.venue, data.symbol, data.timeframe, data.qty, data.price, ts_ns]),
            digest_size=10).hexdigest()
        ex = Execution(id=ex_id, venue=data.venue, symbol=data.symbol, tf=data.timeframe, qty=data.qty,
                       px=data.price, ts_ns=ts_ns, fee=data.fee, note=data.note)
        kv = await runtime.js.key_value(STATE_BUCKET)
        await kv.put(execution_key(ex.id), msgspec.json.encode(ex))
        return ex
