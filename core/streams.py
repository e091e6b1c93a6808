"""JetStream streams, durable consumers and KV buckets tickmesh needs, defined in one place."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, KeyValueConfig, ObjectStoreConfig,
                         RetentionPolicy, StorageType, StreamConfig)
from nats.js.errors import BadRequestError, NotFoundError

from core.config import StreamsConfig

__all__ = [
    "MD_STREAM",
    "BARS_STREAM",
    "DLQ_STREAM",
    "FEAT_STREAM",
    "SNAPSHOT_BUCKET",
    "FEATURES_WORKER",
    "SINK_FEAT",
    "PRED_STREAM",
    "INFERENCE_WORKER",
    "SINK_PRED",
    "SIG_STREAM",
    "SINK_SIG",
    "ALERT_STREAM",
    "SINK_ALERT",
    "STATE_BUCKET",
    "PORTFOLIO_KEY",
    "BARS_WORKER",
    "SINK_MD",
    "SINK_BARS",
    "SINK_DLQ",
    "stream_configs",
    "consumer_configs",
    "ensure",
]

MD_STREAM = "MD"
BARS_STREAM = "BARS"
DLQ_STREAM = "DLQ"
FEAT_STREAM = "FEAT"
PRED_STREAM = "PRED"
SIG_STREAM = "SIG"
ALERT_STREAM = "ALERT"
STATE_BUCKET = "tickmesh_state"
# Key in the state bucket: the paper portfolio as JSON, put by the inference worker, read by the API.
PORTFOLIO_KEY = "portfolio"
# Snapshots too large for a KV value (feature state grows with symbols) go to an object store.
SNAPSHOT_BUCKET = "tickmesh_snapshots"

BARS_WORKER = "bars-worker"
SINK_MD = "sink-md"
SINK_BARS = "sink-bars"
SINK_DLQ = "sink-dlq"
FEATURES_WORKER = "features-worker"
SINK_FEAT = "sink-feat"
INFERENCE_WORKER = "inference-worker"
SINK_PRED = "sink-pred"
SINK_SIG = "sink-sig"
SINK_ALERT = "sink-alert"


def stream_configs(cfg: StreamsConfig) -> list[StreamConfig]:
    """The streams, with the age/byte limits and duplicate window from config."""

    def stream(name: str, subjects: list[str], max_age_s: float, max_bytes: int) -> StreamConfig:
        return StreamConfig(
            name=name, subjects=subjects, retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            max_age=max_age_s, max_bytes=max_bytes, discard=DiscardPolicy.OLD,
            duplicate_window=cfg.duplicate_window_s, num_replicas=cfg.replicas)

    return [
        stream(MD_STREAM, ["md.>", "news.>"], cfg.md_max_age_s, cfg.md_max_bytes),
        stream(BARS_STREAM, ["bar.>"], cfg.bars_max_age_s, cfg.bars_max_bytes),
        stream(DLQ_STREAM, ["dlq.>"], cfg.dlq_max_age_s, cfg.dlq_max_bytes),
        stream(FEAT_STREAM, ["feat.>"], cfg.feat_max_age_s, cfg.feat_max_bytes),
        stream(PRED_STREAM, ["pred.>"], cfg.pred_max_age_s, cfg.pred_max_bytes),
        stream(SIG_STREAM, ["sig.>"], cfg.sig_max_age_s, cfg.sig_max_bytes),
        stream(ALERT_STREAM, ["alert.>"], cfg.alert_max_age_s, cfg.alert_max_bytes),
    ]


def consumer_configs() -> dict[str, tuple[str, ConsumerConfig]]:
    """Durable pull consumers by name: (stream, config)."""

    def durable(name: str, subject: str, ack_policy: AckPolicy = AckPolicy.EXPLICIT) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=name, ack_policy=ack_policy, deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject, ack_wait=30.0, max_ack_pending=20_000)

    return {
        # One owner processing in stream order: acking the last message of a chunk acks it all.
        BARS_WORKER: (MD_STREAM, durable(BARS_WORKER, "md.*.trade.>", AckPolicy.ALL)),
        SINK_MD: (MD_STREAM, durable(SINK_MD, "md.>")),
        SINK_BARS: (BARS_STREAM, durable(SINK_BARS, "bar.>")),
        SINK_DLQ: (DLQ_STREAM, durable(SINK_DLQ, "dlq.>")),
        FEATURES_WORKER: (BARS_STREAM, durable(FEATURES_WORKER, "bar.>", AckPolicy.ALL)),
        SINK_FEAT: (FEAT_STREAM, durable(SINK_FEAT, "feat.>")),
        INFERENCE_WORKER: (FEAT_STREAM, durable(INFERENCE_WORKER, "feat.>", AckPolicy.ALL)),
        SINK_PRED: (PRED_STREAM, durable(SINK_PRED, "pred.>")),
        SINK_SIG: (SIG_STREAM, durable(SINK_SIG, "sig.>")),
        SINK_ALERT: (ALERT_STREAM, durable(SINK_ALERT, "alert.>")),
    }


async def ensure(js: JetStreamContext, cfg: StreamsConfig, consumers: bool = True) -> list[str]:
    """Creates or updates every stream (and, by default, durable consumer). Idempotent.

    Returns:
        One line per object saying whether it was created or updated.
    """
    report = []
    for sc in stream_configs(cfg):
        try:
            await js.stream_info(sc.name)
            await js.update_stream(sc)
            report.append(f"stream {sc.name}: updated")
        except NotFoundError:
            await js.add_stream(sc)
            report.append(f"stream {sc.name}: created")
    try:
        await js.key_value(STATE_BUCKET)
        report.append(f"kv {STATE_BUCKET}: exists")
    except (NotFoundError, BadRequestError):
        await js.create_key_value(KeyValueConfig(bucket=STATE_BUCKET, history=1, storage=StorageType.FILE))
        report.append(f"kv {STATE_BUCKET}: created")
    try:
        await js.object_store(SNAPSHOT_BUCKET)
        report.append(f"object store {SNAPSHOT_BUCKET}: exists")
    except (NotFoundError, BadRequestError):
        await js.create_object_store(SNAPSHOT_BUCKET, ObjectStoreConfig(storage=StorageType.FILE))
        report.append(f"object store {SNAPSHOT_BUCKET}: created")
    if consumers:
        for name, (stream, cc) in consumer_configs().items():
            try:
                await js.consumer_info(stream, name)
                report.append(f"consumer {stream}/{name}: exists")
            except NotFoundError:
                await js.add_consumer(stream, cc)
                report.append(f"consumer {stream}/{name}: created")
    return report
