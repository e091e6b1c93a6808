"""The sink: JetStream market data, bars, feature vectors, predictions, signals, alerts and dead
letters into ClickHouse.

Seven durable pull consumers (`core.streams.SINK_MD`, `SINK_BARS`, `SINK_FEAT`, `SINK_PRED`,
`SINK_SIG`, `SINK_ALERT`, `SINK_DLQ`) are drained concurrently. Each fetch of up to ``batch``
messages is decoded, grouped by type and written with one columnar insert per table through the
Store's worker thread; messages are acked only after their insert succeeded. A failed insert
leaves its messages unacked (negative ack with a delay) so JetStream redelivers them; the tables
are ReplacingMergeTree, so a redelivered batch is stored once. A message the sink cannot use
(undecodable, wrong type for its stream, malformed columns) becomes a row in ``dead_letters`` with
stage ``sink`` and is acked: never dropped silently, never a crash of the loop.

Counters are kept in a `SinkStats` struct and published as JSON every second on core NATS
subject ``tickmesh.metrics.sink``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import time
from typing import Any, Callable, NamedTuple

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from core import streams
from core.config import Config
from core.errors import SchemaError, SubjectError, TickmeshError
from core.schema import Alert, Bar, Codec, DeadLetter, FeatureVector, Prediction, QuoteBatch, Signal, TradeBatch
from core.store import Store
from core.subjects import parse as parse_subject

__all__ = ["METRICS_SUBJECT", "STAGE", "SinkStats", "Sink", "register"]

METRICS_SUBJECT = "tickmesh.metrics.sink"
STAGE = "sink"

log = logging.getLogger(__name__)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class SinkStats(msgspec.Struct, kw_only=True):
    """Counters since the sink started. Rows are counted per insert, so a redelivered batch
    counts again here while ClickHouse (FINAL) counts it once."""

    messages: int = 0  # messages acked (stored or dead-lettered)
    trades: int = 0  # trade rows inserted
    quotes: int = 0  # quote rows inserted
    bars: int = 0  # bar rows inserted
    features: int = 0  # feature-vector rows inserted
    predictions: int = 0  # prediction rows inserted
    signals: int = 0  # signal rows inserted
    alerts: int = 0  # alert rows inserted
    dead_letters: int = 0  # dead-letter rows inserted (from the DLQ stream and the sink's own)
    insert_errors: int = 0  # failed inserts (their messages were left for redelivery)
    fetch_errors: int = 0  # failed fetches other than an idle timeout
    lag: int = 0  # messages not yet delivered, summed over the consumers


class _Source(NamedTuple):
    """One durable consumer the sink drains and the wire types it accepts from it."""

    consumer: str
    stream: str
    accepts: tuple[type, ...]


_SOURCES = (
    _Source(streams.SINK_MD, streams.MD_STREAM, (TradeBatch, QuoteBatch)),
    _Source(streams.SINK_BARS, streams.BARS_STREAM, (Bar,)),
    _Source(streams.SINK_FEAT, streams.FEAT_STREAM, (FeatureVector,)),
    _Source(streams.SINK_PRED, streams.PRED_STREAM, (Prediction,)),
    _Source(streams.SINK_SIG, streams.SIG_STREAM, (Signal,)),
    _Source(streams.SINK_ALERT, streams.ALERT_STREAM, (Alert,)),
    _Source(streams.SINK_DLQ, streams.DLQ_STREAM, (DeadLetter,)),
)


def _fits_int64(*values: int) -> bool:
    return all(_INT64_MIN <= v <= _INT64_MAX for v in values)


def _check(item: Any) -> None:
    """Raises SchemaError when a decoded message cannot become table rows."""
    if isinstance(item, (TradeBatch, QuoteBatch)):
        item.columns()  # byte lengths must fit the dtypes and agree
    elif isinstance(item, Bar):
        if not _fits_int64(item.start_ns, item.n_trades, item.last_recv_ns):
            raise SchemaError("Bar: start_ns, n_trades or last_recv_ns outside int64")
    elif isinstance(item, FeatureVector):
        item.array()  # one float64 per name
        if not _fits_int64(item.start_ns, item.last_recv_ns):
            raise SchemaError("FeatureVector: start_ns or last_recv_ns outside int64")
    elif isinstance(item, Prediction):
        if not _fits_int64(item.start_ns, item.last_recv_ns, item.latency_us) or not 0 <= item.version < 2**32:
            raise SchemaError("Prediction: start_ns, last_recv_ns, latency_us or version out of range")
    elif isinstance(item, Signal):
        if not _fits_int64(item.start_ns) or any(not 0 <= v < 2**32 for v in item.model_versions.values()):
            raise SchemaError("Signal: start_ns or a model version out of range")
    elif isinstance(item, Alert):
        if not _fits_int64(item.start_ns) or not 0 <= item.count < 2**32:
            raise SchemaError("Alert: start_ns or count out of range")
    elif isinstance(item, DeadLetter):
        if not _fits_int64(item.recv_ns):
            raise SchemaError("DeadLetter: recv_ns outside int64")


class Sink:
    """Drains the sink consumers into a `Store`.

    Args:
        js: JetStream context of a connection whose streams and consumers exist
            (`core.streams.ensure`).
        store: where rows go; used only through `Store.run`.
        batch: most messages fetched (and inserted together) per consumer at a time.
        idle_s: how long a fetch waits for messages; also bounds how fast `run` notices a stop.
        retry_s: redelivery delay of messages whose insert failed.
        metrics_interval_s: period of the stats snapshot on ``tickmesh.metrics.sink``.
        nc: connection for the metrics publish; defaults to the one ``js`` was made from.
    """

    def __init__(self, js: JetStreamContext, store: Store, *, batch: int = 500, idle_s: float = 0.2,
                 retry_s: float = 2.0, metrics_interval_s: float = 1.0, nc: NATS | None = None) -> None:
        if batch < 1 or idle_s <= 0 or retry_s < 0 or metrics_interval_s <= 0:
            raise ValueError("batch >= 1, idle_s > 0, retry_s >= 0 and metrics_interval_s > 0 are required")
        self._js = js
        # nats-py keeps the connection on the context; core NATS publishes need it.
        self._nc: NATS = nc if nc is not None else js._nc
        self._store = store
        self._codec = Codec()
        self._batch = batch
        self._idle_s = idle_s
        self._retry_s = retry_s
        self._metrics_interval_s = metrics_interval_s
        self._stats = SinkStats()
        self._lag: dict[str, int] = {}
        self._encoder = msgspec.json.Encoder()

    def __repr__(self) -> str:
        return f"Sink(store={self._store!r}, batch={self._batch}, idle_s={self._idle_s})"

    @property
    def stats(self) -> SinkStats:
        """A copy of the counters."""
        return msgspec.structs.replace(self._stats, lag=sum(self._lag.values()))

    def snapshot(self) -> bytes:
        """The counters as the JSON published on `METRICS_SUBJECT`, with a ``ts_ns`` stamp."""
        return self._encoder.encode({"ts_ns": time.time_ns(), **msgspec.structs.asdict(self.stats)})

    # ------------------------------------------------------------------ run loop

    async def run(self, stop: asyncio.Event) -> None:
        """Drains every consumer until ``stop`` is set; the batch in hand is finished first.

        Raises:
            TickmeshError: a sink consumer does not exist (run ``tickmesh streams ensure``).
        """
        subs = []
        for src in _SOURCES:
            try:
                await self._js.consumer_info(src.stream, src.consumer)
            except NotFoundError:
                raise TickmeshError(
                    f"JetStream consumer {src.stream}/{src.consumer} not found: run `tickmesh streams ensure`"
                ) from None
            subs.append(await self._js.pull_subscribe_bind(durable=src.consumer, stream=src.stream))
        tasks = [asyncio.create_task(self._drain(src, sub, stop), name=f"sink:{src.consumer}")
                 for src, sub in zip(_SOURCES, subs)]
        tasks.append(asyncio.create_task(self._publish_metrics(stop), name="sink:metrics"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection may already be closed
                    pass
            await self._publish_snapshot()

    async def _drain(self, src: _Source, sub: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self._batch, timeout=self._idle_s)
            except asyncio.TimeoutError:  # nothing pending: the consumer is caught up
                self._lag[src.consumer] = 0
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down, consumer deleted...: keep trying, visibly
                self._stats.fetch_errors += 1
                log.warning("sink %s: fetch failed: %s", src.consumer, exc)
                await self._sleep(stop, self._idle_s)
                continue
            if not msgs:
                continue
            self._lag[src.consumer] = msgs[-1].metadata.num_pending
            try:
                stored, failed = await self.write(src.consumer, msgs)
            except Exception:  # a bug must not stop the sink: redeliver and say so loudly
                log.exception("sink %s: unexpected error on %d messages, left for redelivery",
                              src.consumer, len(msgs))
                stored, failed = [], msgs
            await self._settle(stored, failed)

    async def _settle(self, stored: list[Msg], failed: list[Msg]) -> None:
        for msg in stored:
            try:
                await msg.ack()
                self._stats.messages += 1
            except Exception as exc:  # redelivered after ack_wait and stored once: harmless
                log.warning("sink: ack failed: %s", exc)
        for msg in failed:
            try:
                await msg.nak(delay=self._retry_s or None)
            except Exception as exc:  # without the nak it is still redelivered after ack_wait
                log.warning("sink: nak failed: %s", exc)
        try:
            # Acks are buffered publishes: push them out now so a stop right after loses none.
            await self._nc.flush()
        except Exception as exc:
            log.warning("sink: flush after ack failed: %s", exc)

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ decoding and inserts

    def _dead_letter(self, msg: Msg, reason: str) -> DeadLetter:
        try:
            subject = parse_subject(msg.subject)
            venue, symbol = subject.venue, subject.symbol
        except SubjectError:
            venue = symbol = ""
        return DeadLetter(stage=STAGE, venue=venue, symbol=symbol, reason=reason, raw=bytes(msg.data),
                          recv_ns=time.time_ns(), detail=f"subject={msg.subject}")

    async def write(self, consumer: str, msgs: list[Msg]) -> tuple[list[Msg], list[Msg]]:
        """Decodes messages from one sink consumer and inserts them, without acking.

        Messages the sink cannot use become ``sink`` dead letters. Rows are inserted one table at
        a time; a table whose insert fails fails only its own messages.

        Args:
            consumer: which sink consumer the messages came from (decides the accepted types).
            msgs: JetStream messages of that consumer.

        Returns:
            (stored, failed): messages whose rows are in the store, and messages to redeliver.

        Raises:
            ValueError: ``consumer`` is not one of the sink's consumers.
        """
        src = next((s for s in _SOURCES if s.consumer == consumer), None)
        if src is None:
            raise ValueError(f"not a sink consumer: {consumer!r}; known: {[s.consumer for s in _SOURCES]}")
        # table -> (messages, items); items are what the Store's insert method takes
        groups: dict[str, tuple[list[Msg], list[Any]]] = {}

        def add(table: str, msg: Msg, item: Any) -> None:
            group = groups.setdefault(table, ([], []))
            group[0].append(msg)
            group[1].append(item)

        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                item = self._codec.decode(msg.data)
                if not isinstance(item, src.accepts):
                    raise SchemaError(
                        f"unexpected {type(item).__name__} on {msg.subject}: consumer {consumer} takes "
                        + ", ".join(t.__name__ for t in src.accepts))
                _check(item)
            except SchemaError as exc:
                add("dead_letters", msg, (self._dead_letter(msg, str(exc)), seq))
                continue
            if isinstance(item, TradeBatch):
                add("trades", msg, item)
            elif isinstance(item, QuoteBatch):
                add("quotes", msg, item)
            elif isinstance(item, Bar):
                add("bars", msg, item)
            elif isinstance(item, FeatureVector):
                add("features", msg, item)
            elif isinstance(item, Prediction):
                add("predictions", msg, item)
            elif isinstance(item, Signal):
                add("signals", msg, item)
            elif isinstance(item, Alert):
                add("alerts", msg, item)
            else:
                add("dead_letters", msg, (item, seq))

        inserts: dict[str, Callable[[list], int]] = {
            "trades": self._store.insert_trades,
            "quotes": self._store.insert_quotes,
            "bars": self._store.insert_bars,
            "features": self._store.insert_features,
            "predictions": self._store.insert_predictions,
            "signals": self._store.insert_signals,
            "alerts": self._store.insert_alerts,
            "dead_letters": functools.partial(self._store.insert_dead_letters, stream=src.stream),
        }
        stored: list[Msg] = []
        failed: list[Msg] = []
        for table, (group_msgs, items) in groups.items():
            try:
                rows = await self._store.run(inserts[table], items)
            except Exception as exc:  # StoreError, or anything else: the loop must go on
                self._stats.insert_errors += 1
                log.error("sink %s: insert of %d messages into %s failed, left for redelivery: %s",
                          consumer, len(group_msgs), table, exc)
                failed.extend(group_msgs)
                continue
            setattr(self._stats, table, getattr(self._stats, table) + rows)
            stored.extend(group_msgs)
        return stored, failed

    # ------------------------------------------------------------------ metrics

    async def _publish_snapshot(self) -> None:
        try:
            await self._nc.publish(METRICS_SUBJECT, self.snapshot())
        except Exception as exc:  # metrics are best effort; the data path must not stop for them
            log.debug("sink: metrics publish failed: %s", exc)

    async def _publish_metrics(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._sleep(stop, self._metrics_interval_s)
            await self._publish_snapshot()


# ---------------------------------------------------------------------- command line


def _run_sink(args: argparse.Namespace, cfg: Config) -> int:
    import nats

    url = args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}"

    async def on_error(exc: Exception) -> None:  # one line per NATS error instead of a traceback
        log.warning("nats: %s", str(exc) or type(exc).__name__)

    async def main() -> None:
        try:
            # Reconnect forever once running; the first connect is bounded by the wait_for.
            nc = await asyncio.wait_for(
                nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=on_error),
                cfg.nats.ready_timeout_s)
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
            reason = str(exc) or f"no connection within {cfg.nats.ready_timeout_s:g} s"
            raise TickmeshError(f"cannot connect to NATS at {url}: {reason}") from None
        store = Store.open(cfg.store_dsn, cfg.store.database)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            print(f"tickmesh sink: {url} -> {store!r} (Ctrl-C stops)", flush=True)
            await Sink(nc.jetstream(), store, nc=nc).run(stop)
        finally:
            store.close()
            await nc.close()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``tickmesh sink [--url NATS_URL]``.

    The standalone sink is for a ClickHouse server (``store.dsn``); with embedded chDB the API
    process runs the sink, since one process owns a chDB directory.
    """
    p = subparsers.add_parser("sink", help="write JetStream market data, bars and dead letters to ClickHouse")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.set_defaults(func=_run_sink)
