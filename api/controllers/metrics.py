"""``GET /metrics``: Prometheus text exposition."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from api.runtime import ApiRuntime
from api.telemetry import render_prometheus

__all__ = ["MetricsController", "PROMETHEUS_MEDIA_TYPE"]

PROMETHEUS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]

    @get("/", summary="Prometheus metrics", media_type=PROMETHEUS_MEDIA_TYPE)
    async def metrics(self, runtime: NamedDependency[ApiRuntime]) -> Response[str]:
        """API request counts, WebSocket fan-out counters, dependency gauges, sink consumer lag,
        and every numeric field of the latest ``tickmesh.metrics.*`` snapshot of each component
        (labelled ``component``)."""
        samples = runtime.telemetry.samples() + await runtime.status_samples()
        return Response(render_prometheus(samples), media_type=PROMETHEUS_MEDIA_TYPE)
