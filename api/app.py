"""The Litestar application: REST history, live bars over WebSocket, health, metrics, dashboard.

Routes (one Controller per resource, see `api.controllers`):

* ``GET /health`` NATS, store, sink and component status; 200 when NATS and the store are up, else 503
* ``GET /api/symbols`` known (venue, symbol) series and the bar timeframes
* ``GET /api/bars?venue=&symbol=&timeframe=&start=&end=&limit=`` stored bars
* ``GET /api/trades?venue=&symbol=&start=&end=&limit=`` stored trades
* ``WS /ws/bars?venue=&symbol=&timeframe=`` each new bar as JSON
* ``GET /metrics`` Prometheus text
* ``GET /schema/openapi.json`` OpenAPI (Litestar's default), ``GET /`` the dashboard

Bad query parameters answer 400 with ``{"status_code", "detail", "param"}``; ``param`` names the
parameter and ``detail`` says what is accepted. Time rules are in `api.params`.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import AsyncIterator

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import Message, Scope

from api.controllers import CONTROLLERS
from api.errors import BadParameterError
from api.fanout import BarFanout, SignalFanout
from api.models import ErrorOut
from api.params import TIME_RULE
from api.runtime import ApiRuntime
from api.telemetry import Telemetry
from core.config import Config
from core.errors import StoreError, TickmeshError
from core.store import Store

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_QUOTED_NAME = re.compile(r"parameter '([^']+)'")
_DESCRIPTION = (
    "Market data history and live bars of the tickmesh mesh. Times are int64 epoch nanoseconds. "
    f"Query times (start, end) accept {TIME_RULE}. Bad query parameters answer 400 with a body whose "
    "`param` names the parameter. Live bars: `WS /ws/bars?venue=&symbol=&timeframe=` (each filter "
    "optional) pushes every new bar as a JSON object with the fields of BarOut; a bad timeframe closes "
    "it with code 1008, a client too slow to keep up with 1013."
)


def create_app(cfg: Config, *, run_sink: bool = True) -> Litestar:
    """Builds the API app; connections open in its lifespan (on server startup), not here.

    Args:
        cfg: the configuration; ``nats``, ``store`` and ``streams`` are used.
        run_sink: run the ClickHouse sink in this process. Leave True with embedded chDB, where the
            API process is the one that owns the chDB directory.
    """
    return Litestar(
        route_handlers=list(CONTROLLERS),
        lifespan=[_lifespan],
        state=State({"runtime": ApiRuntime(cfg, run_sink=run_sink)}),
        dependencies={
            "runtime": Provide(_provide_runtime, sync_to_thread=False),
            "store": Provide(_provide_store, sync_to_thread=False),
            "fanout": Provide(_provide_fanout, sync_to_thread=False),
            "signal_fanout": Provide(_provide_signal_fanout, sync_to_thread=False),
            "telemetry": Provide(_provide_telemetry, sync_to_thread=False),
        },
        exception_handlers={
            BadParameterError: _bad_parameter,
            ValidationException: _validation_failed,
            StoreError: _store_failed,
            TickmeshError: _tickmesh_failed,
        },
        before_send=[_count_response],
        openapi_config=OpenAPIConfig(title="tickmesh", version=_version(), description=_DESCRIPTION),
    )


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    runtime: ApiRuntime = app.state.runtime
    try:
        await runtime.start()
        app.state.store = runtime.store
        yield
    except Exception as exc:
        log.error("tickmesh api: startup failed: %s", exc)
        raise
    finally:
        await runtime.stop()


def _version() -> str:
    try:
        return version("tickmesh")
    except PackageNotFoundError:  # running from a bare checkout
        return "0"


# ---------------------------------------------------------------------- dependencies


def _provide_runtime(state: State) -> ApiRuntime:
    return state.runtime


def _provide_store(state: State) -> Store:
    return state.store


def _provide_fanout(state: State) -> BarFanout:
    return state.runtime.fanout


def _provide_signal_fanout(state: State) -> SignalFanout:
    return state.runtime.signal_fanout


def _provide_telemetry(state: State) -> Telemetry:
    return state.runtime.telemetry


# ---------------------------------------------------------------------- errors -> HTTP


def _error(status_code: int, detail: str, param: str | None = None) -> Response[ErrorOut]:
    return Response(ErrorOut(status_code=status_code, detail=detail, param=param), status_code=status_code)


def _bad_parameter(request: Request, exc: BadParameterError) -> Response[ErrorOut]:
    return _error(400, str(exc), exc.param)


def _validation_failed(request: Request, exc: ValidationException) -> Response[ErrorOut]:
    """Litestar's own checks (missing parameter, wrong type, out of bounds), reworded to name the parameter."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    keyed = [e for e in extra if isinstance(e, dict) and e.get("key")]
    if keyed:
        first = keyed[0]
        source = first.get("source") or "query"
        detail = "; ".join(f"invalid {e.get('source') or source} parameter {e['key']!r}: {e.get('message')}"
                           for e in keyed)
        return _error(400, detail, str(first["key"]))
    match = _QUOTED_NAME.search(exc.detail)
    detail = exc.detail.split(" for path ")[0]  # the rest repeats the URL the client sent
    return _error(400, detail, match.group(1) if match else None)


def _store_failed(request: Request, exc: StoreError) -> Response[ErrorOut]:
    log.error("store error on %s: %s", request.url.path, exc)
    return _error(503, f"store unavailable: {exc}")


def _tickmesh_failed(request: Request, exc: TickmeshError) -> Response[ErrorOut]:
    log.error("error on %s: %s", request.url.path, exc)
    return _error(500, str(exc))


# ---------------------------------------------------------------------- request counts


async def _count_response(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    runtime: ApiRuntime | None = getattr(scope["app"].state, "runtime", None)
    if runtime is not None:
        # The route template, not the raw path, keeps the label set small.
        runtime.telemetry.count_request(scope["method"], scope.get("path_template") or "<unmatched>",
                                        message["status"])
