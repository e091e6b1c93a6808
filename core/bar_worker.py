"""The bar worker: trades from JetStream in, closed OHLCV bars out on ``bar.<tf>.<venue>.<symbol>``.

Exactly-once by construction:
- Input is the MD stream in stream order, through the durable pull consumer ``bars-worker``.
- After each fetched chunk the worker publishes the bars it closed (Nats-Msg-Id is the bar's identity,
  `core.schema.bar_msg_id`), waits for every PubAck, then stores a snapshot of the whole bar state with
  the last consumed stream sequence in the JetStream KV bucket, and only then acks the chunk.
- On start it restores that snapshot and recreates its consumer to begin right after the snapshot's
  sequence. A worker killed at any point (kill -9 included) therefore re-reads exactly the trades whose
  effect is not in the snapshot, rebuilds the same bars, and the republished ones are dropped by the
  BARS stream's duplicate window (and by the sink's ReplacingMergeTree keys beyond it).

Within one trade batch, bars are published in end-time order, the longer timeframe first on a tie
(so per venue and symbol the BARS stream is ordered by bar end). Bars close on event time only (see `core.bars`), never on the wall clock, so a replay produces the same
bars as the live run. Late trades are dead-lettered on ``dlq.worker.<venue>`` with the reason and the
trades themselves; the raw trades are stored by the sink regardless.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import msgspec
import nats
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from core import streams, subjects
from core._consumer import WorkerGapError, next_delivery, rebind
from core._jspublish import AckedPublisher, Message
from core._service import run_command
from core.bars import BarBuilder
from core.config import Config, WorkerConfig
from core.errors import SchemaError, TickmeshError, ValidationError
from core.schema import (HDR_MSG_ID, HDR_REASON, HDR_SCHEMA, HDR_TRACEPARENT, SCHEMA_VERSION, TIMEFRAME_NS, Codec,
                         DeadLetter, TradeBatch, bar_msg_id, traceparent)

__all__ = ["WorkerStats", "BarWorker", "WorkerGapError", "register"]

log = logging.getLogger("tickmesh.worker")

METRICS_SUBJECT = "tickmesh.metrics.worker"
_SCHEMA = str(SCHEMA_VERSION)
# Consecutive messages of one series go to the bar builder together up to about this many trades:
# the builder's fixed cost per call is paid off well before, while the bars of a longer run (up to
# ~1.2 per trade where trades are sparse) would pile up as objects before they are published.
RUN_TRADES = 8192


def _end_then_longer(bar) -> tuple[int, int]:
    tf_ns = TIMEFRAME_NS[bar.tf]
    return bar.start_ns + tf_ns, -tf_ns


class _Snapshot(msgspec.Struct, array_like=True):
    last_seq: int
    builder: bytes


class WorkerStats(msgspec.Struct):
    """Counters of one worker process, published once a second as JSON."""

    messages: int = 0
    trades: int = 0
    bars: int = 0
    late_trades: int = 0
    dead_letters: int = 0
    last_seq: int = 0
    lag: int = 0
    restored_seq: int = 0


class BarWorker:
    """Consumes trade batches and publishes closed bars, recoverably.

    Args:
        js: JetStream context.
        cfg: worker settings (timeframes, lateness, fetch size).
        name: durable consumer name and KV key; one worker owns one name at a time.
    """

    def __init__(self, js: JetStreamContext, cfg: WorkerConfig, name: str = streams.BARS_WORKER) -> None:
        self.js = js
        self._codec = Codec()
        self._out = AckedPublisher(js._nc)  # nats-py keeps the connection of a context private
        self._bar_subjects: dict[tuple[str, str, str], str] = {}
        self.cfg = cfg
        self.name = name
        self.stats = WorkerStats()
        self._builder = self._new_builder()
        self._kv = None
        self._sub = None
        self._consumer_seq = 0

    def __repr__(self) -> str:
        return f"BarWorker(name={self.name!r}, timeframes={list(self.cfg.timeframes)})"

    def _new_builder(self) -> BarBuilder:
        return BarBuilder(list(self.cfg.timeframes), lateness_ns=int(self.cfg.lateness_ms * 1e6))

    async def on_start(self) -> None:
        """Restores the last snapshot and binds a consumer that starts right after it."""
        self._kv = await self.js.key_value(streams.STATE_BUCKET)
        await self._out.close()
        await self._out.start()
        start_seq = 0
        try:
            entry = await self._kv.get(self._state_key)
            snap = msgspec.msgpack.decode(entry.value, type=_Snapshot)
            self._builder = BarBuilder.restore(snap.builder)
            start_seq = snap.last_seq
        except KeyNotFoundError:
            self._builder = self._new_builder()
        self.stats.last_seq = self.stats.restored_seq = start_seq
        if self._sub is not None:
            await self._sub.unsubscribe()
        self._sub = await rebind(self.js, self.name, start_seq, kind=streams.BARS_WORKER)
        self._consumer_seq = 0  # a new consumer counts its deliveries from 1
        log.info("worker %s starting after stream seq %d", self.name, start_seq)

    @property
    def _state_key(self) -> str:
        return f"{self.name}.state"

    async def run(self, stop: asyncio.Event) -> None:
        """Processes chunks until ``stop`` is set."""
        if self._sub is None:
            await self.on_start()
        while not stop.is_set():
            try:
                msgs = await self._sub.fetch(self.cfg.fetch_batch, timeout=0.25)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except nats.errors.Error as exc:  # disconnected: nats-py reconnects, the consumer persists
                log.warning("fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.on_chunk(msgs)
            except (TickmeshError, nats.errors.Error) as exc:
                # Nothing of this chunk was acked: start over from the last snapshot.
                log.warning("chunk failed (%s); resuming from the last snapshot", exc)
                await asyncio.sleep(1.0)
                await self.on_start()

    async def on_chunk(self, msgs: list) -> None:
        """Handles one fetched chunk: bars out, acks in, snapshot in between.

        Consecutive messages of one (venue, symbol) go to the bar builder in one call
        (`BarBuilder.update_many`, much cheaper than one call per message): its output does not
        depend on how trades are cut into batches, and it says which message closed each bar and
        carried each late trade, so the bars, their order on BARS, their trace parents and the
        dead letters are exactly those of handling one message at a time.
        """
        run: list[tuple[object, int, TradeBatch]] = []
        run_trades = 0
        high_seq = self.stats.last_seq  # the newest stream sequence taken in, run included
        for msg in msgs:
            meta = msg.metadata
            self._consumer_seq = next_delivery(self._consumer_seq, meta)
            seq = meta.sequence.stream
            if seq <= high_seq:
                continue  # redelivered and already in the snapshot (or in this run)
            high_seq = seq
            try:
                batch = self._codec.decode(msg.data)
                if not isinstance(batch, TradeBatch):
                    raise SchemaError(f"expected a TradeBatch on {msg.subject}, got {type(batch).__name__}")
            except SchemaError as exc:
                await self._on_run(run)
                run, run_trades = [], 0
                await self._out.publish(*self._dead_letter(msg, seq, str(exc), msg.data))
                self._done(seq, 0)
                continue
            if run and (run_trades >= RUN_TRADES or batch.symbol != run[-1][2].symbol
                        or batch.venue != run[-1][2].venue):
                await self._on_run(run)
                run, run_trades = [], 0
            run.append((msg, seq, batch))
            run_trades += len(batch)
        await self._on_run(run)
        await self._out.wait()
        snap = _Snapshot(self.stats.last_seq, self._builder.snapshot())
        await self._kv.put(self._state_key, msgspec.msgpack.encode(snap))
        if msgs:
            await msgs[-1].ack()  # AckPolicy.ALL: one ack covers the whole chunk

    async def _on_run(self, run: list[tuple[object, int, TradeBatch]]) -> None:
        """Feeds consecutive batches of one series to the builder; publishes what each closed and
        what came late, message by message."""
        if not run:
            return
        try:
            # The builder checks columns and values (NaN, negative size, ...) and leaves its state
            # unchanged when it refuses a batch: a poison message is dead-lettered, not retried forever.
            results = self._builder.update_many([batch for _, _, batch in run])
        except (SchemaError, ValidationError) as exc:
            if len(run) == 1:
                msg, seq, _ = run[0]
                await self._out.publish(*self._dead_letter(msg, seq, str(exc), msg.data))
                self._done(seq, 0)
                return
            for item in run:  # one at a time, so that only the refused message is dead-lettered
                await self._on_run([item])
            return
        for (msg, seq, batch), (bars, late) in zip(run, results):
            out: list[Message] = []
            if bars:
                self._bar_messages(msg, bars, out)
            for i, entry in enumerate(late):
                self.stats.late_trades += len(entry.trades)
                reason = f"late: {len(entry.trades)} trades after the {entry.tf} bar closed"
                out.append(self._dead_letter(msg, seq, reason, self._codec.encode(entry.trades), tag=f"{entry.tf}.{i}"))
            if out:
                # One write per message, not per run: acks of the earlier messages come back
                # while the later ones are encoded (a run of sparse trades closes thousands of bars).
                await self._out.publish_many(out)
            self._done(seq, len(batch))

    def _done(self, seq: int, trades: int) -> None:
        self.stats.last_seq = seq
        self.stats.messages += 1
        self.stats.trades += trades

    def _bar_messages(self, msg, bars: list, out: list[Message]) -> None:
        """Appends the bars one message closed to ``out``, as messages for BARS."""
        # Publish in end-time order, the longer timeframe first on a tie: a consumer joining a
        # higher timeframe onto a lower one then always has the higher bar it needs already.
        bars.sort(key=_end_then_longer)
        # Bars this message closed continue its trace: handling the message is one span, the
        # parent of every bar it closed (one traceparent per message, not per bar).
        parent = msg.headers.get(HDR_TRACEPARENT) if msg.headers else None
        trace = traceparent(parent)
        encode = self._codec.encode
        bar_subjects = self._bar_subjects
        for bar in bars:
            key = (bar.tf, bar.venue, bar.symbol)
            subject = bar_subjects.get(key) or bar_subjects.setdefault(key, subjects.bar(*key))
            out.append((subject, encode(bar), {HDR_MSG_ID: bar_msg_id(bar), HDR_SCHEMA: _SCHEMA, HDR_TRACEPARENT: trace}))
        self.stats.bars += len(bars)

    def _dead_letter(self, msg, seq: int, reason: str, raw: bytes, tag: str = "") -> Message:
        """The dead letter of message ``msg`` (stream sequence ``seq``), as a message to publish."""
        self.stats.dead_letters += 1
        try:
            venue = subjects.parse(msg.subject).venue
        except Exception:  # a subject outside our families still gets its dead letter
            venue = "unknown"
        letter = DeadLetter("worker", venue, reason, raw=raw, recv_ns=time.time_ns(), detail=msg.subject)
        return (subjects.dlq("worker", venue), self._codec.encode(letter),
                {HDR_MSG_ID: f"dlq.worker.{seq}.{tag}", HDR_REASON: reason, HDR_SCHEMA: _SCHEMA})

    async def lag(self) -> int:
        """Messages in the stream not yet delivered to this worker."""
        info = await self.js.consumer_info(streams.MD_STREAM, self.name)
        return info.num_pending


def _cmd_worker(args: argparse.Namespace, cfg: Config) -> int:
    return run_command("worker", cfg, args.url, lambda js: BarWorker(js, cfg.worker), METRICS_SUBJECT)


def register(sub) -> None:
    p = sub.add_parser("worker", help="run the bar worker (trades in, bars out)")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.set_defaults(func=_cmd_worker)
