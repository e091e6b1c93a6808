"""``GET /health``: is the API able to serve, and what does it know of the other components."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from api.models import ComponentHealth, Health, NatsHealth
from api.runtime import ApiRuntime

__all__ = ["HealthController"]


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/", summary="Health of NATS, the store, the sink and every component heard from",
         responses={503: ResponseSpec(data_container=Health, description="NATS or the store is down")})
    async def health(self, runtime: NamedDependency[ApiRuntime]) -> Response[Health]:
        """200 when NATS is connected and the store answers, 503 otherwise.

        ``components`` holds the latest ``tickmesh.metrics.<name>`` snapshot of each component
        (edge collectors, worker, sink) with its age in seconds: a large age means it went quiet.
        """
        store = await runtime.store_health()
        sink = await runtime.sink_health()
        nats_ok = runtime.nats_connected
        components = {
            name: ComponentHealth(subject=snap.subject, age_s=round(age_s, 3), snapshot=snap.values)
            for name, (snap, age_s) in runtime.telemetry.component_ages().items()
        }
        up = nats_ok and store.ok
        body = Health(status="ok" if up else "degraded", nats=NatsHealth(connected=nats_ok, url=runtime.nats_url),
                      store=store, sink=sink, components=components)
        return Response(body, status_code=200 if up else 503)
