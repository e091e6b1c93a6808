"""Counters of one edge collector, and their once-a-second JSON snapshot on core NATS.

The supervisor (and anyone else) subscribes to ``tickmesh.metrics.edge.<venue>`` to print a status
line. Snapshots go on core NATS, not JetStream: they are a live view, not history.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

__all__ = ["METRICS_PREFIX", "EdgeStats", "metrics_subject", "publish_metrics", "publish_snapshot"]

METRICS_PREFIX = "tickmesh.metrics.edge"

# Fields of the JSON snapshot; `ts` (wall-clock ns) is added when it is taken.
_SNAPSHOT_FIELDS = ("frames", "events", "trades", "quotes", "control_frames", "dead_letters",
                    "overflow_dropped", "batches", "publish_errors", "publish_failed")


class EdgeStats(msgspec.Struct, kw_only=True):
    """Counters of one collector and its publisher; mutated in place, read at any time.

    Frames: every frame is counted once in ``frames`` and once in exactly one of
    ``event_frames`` (parsed into at least one event), ``control_frames`` (heartbeats, acks),
    ``empty_frames`` (parsed into nothing, not a control frame) and ``failed_frames`` (parse
    error or internal error, dead-lettered).

    Events: ``events`` were accepted by the publisher; ``trades``/``quotes`` were sealed into
    batches (they catch up with ``events`` at each flush); ``rejected`` failed validation and
    were dead-lettered; ``overflow_dropped`` were refused by the "drop" overflow policy (each
    period's drops are summarized in one dead letter).

    Publishing: ``batches`` MD batches acknowledged by JetStream (``duplicates`` of them were
    already stored), ``dead_letters`` accepted for the DLQ, ``publish_errors`` failed publish
    attempts (each retried), ``publish_failed`` events and dead letters given up on after the
    last retry, with ``last_error`` saying why.
    """

    frames: int = 0
    event_frames: int = 0
    control_frames: int = 0
    empty_frames: int = 0
    failed_frames: int = 0
    events: int = 0
    trades: int = 0
    quotes: int = 0
    rejected: int = 0
    batches: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = msgspec.field(default_factory=dict)
    overflow_dropped: int = 0
    publish_errors: int = 0
    publish_failed: int = 0
    last_error: str = ""

    def snapshot(self) -> dict[str, int]:
        """The counters the status line shows, with ``ts`` (wall-clock ns) of the snapshot."""
        out = {name: getattr(self, name) for name in _SNAPSHOT_FIELDS}
        out["ts"] = time.time_ns()
        return out


def metrics_subject(venue: str) -> str:
    """``tickmesh.metrics.edge.<venue>``."""
    return f"{METRICS_PREFIX}.{venue}"


async def publish_metrics(nc, venue: str, stats: EdgeStats, interval_s: float = 1.0) -> None:
    """Publishes ``stats.snapshot()`` as JSON every ``interval_s`` until cancelled.

    A failed publish (connection lost, reconnecting) skips one snapshot; metrics never stop the
    collector.

    Args:
        nc: a connected ``nats.aio.client.Client``.
        venue: subject token of the venue.
        stats: the live counters.
        interval_s: seconds between snapshots.
    """
    while True:
        await asyncio.sleep(interval_s)
        await publish_snapshot(nc, venue, stats)


async def publish_snapshot(nc, venue: str, stats: EdgeStats) -> bool:
    """Publishes one snapshot now; False if it could not be sent (harmless: the next one follows)."""
    try:
        await nc.publish(metrics_subject(venue), msgspec.json.encode(stats.snapshot()))
    except Exception:  # noqa: BLE001 - connection lost or closed: metrics never stop the collector
        return False
    return True
