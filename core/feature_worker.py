"""The feature worker: closed bars from JetStream in, feature vectors out on ``feat.<tf>.<venue>.<symbol>``.

Exactly-once by construction, like the bar worker (`core.bar_worker`), with one difference: the
feature state grows with the number of series, so it is snapshotted every
``features.snapshot_interval_s`` (and on stop) into the JetStream object store
``tickmesh_snapshots`` rather than after every chunk:

- Input is the BARS stream in stream order through the durable pull consumer ``features-worker``.
- After each chunk the worker publishes one `core.schema.FeatureVector` per bar (Nats-Msg-Id is the
  bar's identity, `core.schema.feat_msg_id`), waits for every PubAck, and acks the chunk.
- Now and then it stores the whole `core.features.book.FeatureBook` with the last consumed stream
  sequence. On start it restores that snapshot and recreates its consumer right after that
  sequence, so a worker killed at any point recomputes the vectors since the snapshot from the same
  bars in the same order: identical values, republished under the same Msg-Ids (dropped by the FEAT
  stream's duplicate window, and replaced by identical rows in the sink's ReplacingMergeTree).

A message that is not a bar is dead-lettered on ``dlq.features.<venue>``; so is a bar the engine
refuses (non-finite prices), whose vector is still published, all NaN, so every bar has a vector.
"""

from __future__ import annotations

import argparse
import logging
import time

import msgspec
from nats.js import JetStreamContext

from core import streams, subjects
from core._service import run_command
from core._snapshot_worker import SnapshotWorker
from core.config import Config, FeaturesConfig
from core.errors import SchemaError
from core.features._xp import array_module
from core.features.book import FeatureBook
from core.features.featureset import FeatureSet
from core.schema import (HDR_MSG_ID, HDR_SCHEMA, HDR_TRACEPARENT, SCHEMA_VERSION, Bar,
                         FeatureVector, feat_msg_id, traceparent)

__all__ = ["FeatureWorker", "FeatureStats", "register"]

log = logging.getLogger("tickmesh.features")

METRICS_SUBJECT = "tickmesh.metrics.features"
_SCHEMA = str(SCHEMA_VERSION)


class FeatureStats(msgspec.Struct):
    """Counters of one feature worker, published once a second as JSON."""

    messages: int = 0
    bars: int = 0
    vectors: int = 0
    refused: int = 0
    dead_letters: int = 0
    series: int = 0
    features: int = 0
    last_seq: int = 0
    lag: int = 0
    restored_seq: int = 0
    snapshots: int = 0
    step_ms: float = 0.0


class FeatureWorker(SnapshotWorker):
    """Consumes bars and publishes feature vectors, recoverably.

    Args:
        js: JetStream context.
        cfg: feature settings (device, reference symbol, fetch size, snapshot interval).
        fs: the feature layout (default: every default feature).
        name: durable consumer name and snapshot name; one worker owns one name at a time.
    """

    stage = "features"
    stream = streams.BARS_STREAM
    kind = streams.FEATURES_WORKER

    def __init__(self, js: JetStreamContext, cfg: FeaturesConfig, fs: FeatureSet | None = None,
                 name: str = streams.FEATURES_WORKER) -> None:
        self.cfg = cfg
        self.fs = fs or FeatureSet()
        self._xp = array_module(cfg.device)
        self._subjects: dict[tuple[str, str, str], str] = {}
        self._names = list(self.fs.names)
        self.stats = FeatureStats(features=len(self._names))
        super().__init__(js, name, cfg.fetch_batch, cfg.snapshot_interval_s)
        self.book = self._new_book()

    def __repr__(self) -> str:
        return f"FeatureWorker(name={self.name!r}, features={len(self._names)}, device={self.cfg.device!r})"

    def _new_book(self) -> FeatureBook:
        return FeatureBook(self.fs, self._xp, self.cfg.reference)

    def reset_state(self) -> None:
        self.book = self._new_book()

    def restore_state(self, data: bytes) -> None:
        self.book.restore(data)

    def state_bytes(self) -> bytes:
        return self.book.snapshot()

    async def on_chunk(self, msgs: list) -> None:
        """Handles one fetched chunk: vectors out, then one ack for the chunk."""
        bars: list[Bar] = []
        parents: list[str | None] = []
        for msg in msgs:
            if not self.accept(msg):
                continue
            try:
                bar = self._codec.decode(msg.data)
                if not isinstance(bar, Bar):
                    raise SchemaError(f"expected a Bar on {msg.subject}, got {type(bar).__name__}")
            except SchemaError as exc:
                await self.dead_letter(msg.subject, str(exc), msg.data, f"{msg.metadata.sequence.stream}")
                continue
            bars.append(bar)
            parents.append(msg.headers.get(HDR_TRACEPARENT) if msg.headers else None)
        if bars:
            t0 = time.perf_counter()
            values, refused = self.book.on_bars(bars)
            self.stats.step_ms = (time.perf_counter() - t0) * 1e3
            await self._publish(bars, values, parents)
            for i in refused.tolist():
                b = bars[i]
                self.stats.refused += 1
                await self.dead_letter(subjects.bar(b.tf, b.venue, b.symbol),
                                       "refused: bar with a non-finite price or volume, or a negative volume",
                                       self._codec.encode(b), f"refused.{b.tf}.{b.venue}.{b.symbol}.{b.start_ns}")
            self.stats.bars += len(bars)
            self.stats.series = self.book.series
        await self.ack(msgs)

    async def _publish(self, bars: list[Bar], values, parents: list[str | None]) -> None:
        data = values.astype("<f8", copy=False)
        for bar, row, parent in zip(bars, data, parents):
            vec = FeatureVector(bar.venue, bar.symbol, bar.tf, bar.start_ns, self._names, row.tobytes(),
                                self.fs.digest, bar.last_recv_ns, bar.close)
            key = (bar.tf, bar.venue, bar.symbol)
            subject = self._subjects.get(key) or self._subjects.setdefault(key, subjects.feat(*key))
            await self._out.publish(subject, self._codec.encode(vec), {
                HDR_MSG_ID: feat_msg_id(vec), HDR_SCHEMA: _SCHEMA, HDR_TRACEPARENT: traceparent(parent)})
        self.stats.vectors += len(bars)


def _cmd(args: argparse.Namespace, cfg: Config) -> int:
    return run_command("feature-worker", cfg, args.url, lambda js: FeatureWorker(js, cfg.features), METRICS_SUBJECT)


def register(sub) -> None:
    p = sub.add_parser("feature-worker", help="run the feature worker (bars in, feature vectors out)")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="array backend (default: config features.device)")
    p.set_defaults(func=lambda a, c: _cmd(a, msgspec.structs.replace(
        c, features=msgspec.structs.replace(c.features, device=a.device)) if a.device else c))
