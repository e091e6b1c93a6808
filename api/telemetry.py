"""What the API knows about the mesh and itself: component snapshots and its own counters.

Components publish JSON snapshots on core NATS (``tickmesh.metrics.edge.<venue>``,
``tickmesh.metrics.worker``, ``tickmesh.metrics.sink``); the latest of each is kept here with its
receive time, shown by ``/health`` and turned into Prometheus text by ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["METRICS_SUBJECT_PREFIX", "Snapshot", "Telemetry", "Sample", "render_prometheus"]

log = logging.getLogger(__name__)

METRICS_SUBJECT_PREFIX = "tickmesh.metrics."
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
# When a snapshot was sent: not a measurement of the component, so not exported.
_SEND_TIME_FIELDS = frozenset({"ts", "ts_ns"})


@dataclass(frozen=True)
class Snapshot:
    subject: str
    received_monotonic_s: float
    values: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample: metric name, type, help, labels, value."""

    name: str
    kind: str  # counter | gauge | untyped
    help: str
    labels: tuple[tuple[str, str], ...]
    value: float


class Telemetry:
    """Latest component snapshots plus the API's own counters. One per app, kept on ``app.state``."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.counters: Counter[str] = Counter()
        self.ws_clients = 0

    def __repr__(self) -> str:
        return f"Telemetry(components={sorted(self.snapshots)}, requests={sum(self.requests.values())})"

    def on_snapshot(self, subject: str, data: bytes) -> None:
        """Keeps a component's snapshot; a malformed one is counted and logged, never fatal."""
        try:
            values = json.loads(data)
            if not isinstance(values, dict):
                raise ValueError(f"expected a JSON object, got {type(values).__name__}")
        except ValueError as exc:
            self.counters["bad_metric_snapshots"] += 1
            log.warning("ignoring malformed metrics snapshot on %s: %s", subject, exc)
            return
        name = subject.removeprefix(METRICS_SUBJECT_PREFIX)
        self.snapshots[name] = Snapshot(subject, time.monotonic(), values)

    def count_request(self, method: str, path: str, status: int) -> None:
        self.requests[(method, path, status)] += 1

    def component_ages(self) -> dict[str, tuple[Snapshot, float]]:
        """Each component's latest snapshot with its age in seconds (since it was received here)."""
        now = time.monotonic()
        return {name: (snap, now - snap.received_monotonic_s) for name, snap in sorted(self.snapshots.items())}

    def samples(self) -> list[Sample]:
        """The API's own counters and every numeric field of every component snapshot."""
        out = [Sample("tickmesh_api_requests_total", "counter", "HTTP requests answered by the API",
                      (("method", m), ("path", p), ("status", str(s))), n)
               for (m, p, s), n in sorted(self.requests.items())]
        out.append(Sample("tickmesh_api_ws_clients", "gauge", "WebSocket clients connected now", (), self.ws_clients))
        for key, help_text in (("bars_fanned_out", "bar messages sent to WebSocket clients"),
                               ("bad_bar_messages", "bar.> messages that did not decode as a Bar"),
                               ("ws_slow_clients_closed", "WebSocket clients closed for not keeping up"),
                               ("bad_metric_snapshots", "metrics snapshots that were not a JSON object")):
            out.append(Sample(f"tickmesh_api_{key}_total", "counter", help_text, (), self.counters[key]))
        for name, (snap, age_s) in self.component_ages().items():
            labels = (("component", name),)
            out.append(Sample("tickmesh_component_snapshot_age_seconds", "gauge",
                              "seconds since the component's latest metrics snapshot arrived", labels, age_s))
            for field, value in _numeric_leaves(snap.values):
                # Snapshot fields are the component's own (cumulative counts and gauges mixed), so
                # their type is not known here: Prometheus 'untyped' says exactly that.
                out.append(Sample(f"tickmesh_{field}", "untyped",
                                  f"field '{field}' of tickmesh.metrics.* snapshots", labels, value))
        return out


def _numeric_leaves(values: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, float]]:
    for key, value in values.items():
        name = _BAD_NAME_CHARS.sub("_", f"{prefix}{key}")
        if isinstance(value, bool):
            yield name, float(value)
        elif isinstance(value, (int, float)):
            if name not in _SEND_TIME_FIELDS and math.isfinite(value):
                yield name, float(value)
        elif isinstance(value, dict):
            yield from _numeric_leaves(value, f"{name}_")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def render_prometheus(samples: Iterable[Sample]) -> str:
    """Prometheus text exposition format 0.0.4: one HELP/TYPE block per metric name."""
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    lines = []
    for name, group in by_name.items():
        lines.append(f"# HELP {name} {_escape(group[0].help)}")
        lines.append(f"# TYPE {name} {group[0].kind}")
        for s in group:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            lines.append(f"{name}{{{labels}}} {_format_value(s.value)}" if labels
                         else f"{name} {_format_value(s.value)}")
    return "\n".join(lines) + "\n"
