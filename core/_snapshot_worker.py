"""A stream worker whose state is snapshotted to the object store with the stream sequence it
covers, so that a restart (or a kill -9) resumes exactly where the snapshot left off.

Subclasses (`core.feature_worker.FeatureWorker`, `core.inference_worker.InferenceWorker`) set
``stage`` (dead-letter stage and log name), ``stream`` (the input stream) and ``kind`` (their
consumer in `core.streams.consumer_configs`), and implement ``reset_state``, ``restore_state``,
``state_bytes`` and ``on_chunk``. ``stats`` must have ``messages``, ``dead_letters``, ``last_seq``,
``restored_seq``, ``snapshots`` and ``lag``.

- Input comes in stream order through one durable pull consumer (AckPolicy.ALL).
- After each chunk the subclass publishes its outputs with deterministic Msg-Ids and waits for
  every PubAck (`AckedPublisher`); then the chunk is acked.
- Every ``snapshot_interval_s`` (and on stop) the state is stored with the last consumed stream
  sequence. On start the snapshot is restored and the consumer recreated right after that
  sequence: the messages since are processed again into identical outputs under the same
  Msg-Ids, which the output stream's duplicate window and the sink's ReplacingMergeTree absorb.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from core import streams, subjects
from core._consumer import next_delivery, rebind
from core._jspublish import AckedPublisher
from core.errors import SchemaError, TickmeshError
from core.schema import HDR_MSG_ID, HDR_REASON, HDR_SCHEMA, SCHEMA_VERSION, Codec, DeadLetter

__all__ = ["SnapshotWorker"]

_SCHEMA = str(SCHEMA_VERSION)


class _Snapshot(msgspec.Struct, array_like=True):
    last_seq: int
    state: bytes


class SnapshotWorker:
    """Base of the workers that keep state across messages (see the module docstring).

    Args:
        js: JetStream context.
        name: durable consumer name and snapshot name; one worker owns one name at a time.
        fetch_batch: messages fetched per chunk.
        snapshot_interval_s: seconds between snapshots.
    """

    stage = ""
    stream = ""
    kind = ""

    def __init__(self, js: JetStreamContext, name: str, fetch_batch: int, snapshot_interval_s: float) -> None:
        self.js = js
        self.name = name
        self.fetch_batch = fetch_batch
        self.snapshot_interval_s = snapshot_interval_s
        self.log = logging.getLogger(f"tickmesh.{self.stage}")
        self._codec = Codec()
        self._out = AckedPublisher(js._nc)  # nats-py keeps the connection of a context private
        self._objects = None
        self._sub = None
        self._consumer_seq = 0
        self._snap_seq = 0
        self._snap_at = time.monotonic()

    # -- what a subclass provides -------------------------------------------------------------
    def reset_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def restore_state(self, data: bytes) -> None:  # pragma: no cover - abstract
        """Loads a snapshot; raises SchemaError or msgspec.DecodeError when it is not usable."""
        raise NotImplementedError

    def state_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    async def on_chunk(self, msgs: list) -> None:  # pragma: no cover - abstract
        """Handles one chunk: `accept` each message, publish, then ``await self.ack(msgs)``."""
        raise NotImplementedError

    # -- the machinery ------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Restores the last snapshot and binds a consumer that starts right after it."""
        self._objects = await self.js.object_store(streams.SNAPSHOT_BUCKET)
        await self._out.close()
        await self._out.start()
        self.reset_state()
        start_seq = 0
        try:
            # One owner writes this object, so nothing replaces it while we read; the bound only
            # turns an unexpected stall into an error and a retry.
            got = await asyncio.wait_for(self._objects.get(self.name), 60.0)
            snap = msgspec.msgpack.decode(got.data, type=_Snapshot)
            self.restore_state(snap.state)
            start_seq = snap.last_seq
        except ObjectNotFoundError:
            pass
        except asyncio.TimeoutError:
            raise TickmeshError(f"reading the snapshot {streams.SNAPSHOT_BUCKET}/{self.name} stalled") from None
        except (SchemaError, msgspec.DecodeError) as exc:
            # A snapshot of another state layout (an upgrade): recompute from the stream's start.
            self.log.warning("%s snapshot not usable (%s); starting from the stream's first message", self.name, exc)
            self.reset_state()
        self.stats.last_seq = self.stats.restored_seq = self._snap_seq = start_seq
        if self._sub is not None:
            await self._sub.unsubscribe()
        self._sub = await rebind(self.js, self.name, start_seq, kind=self.kind)
        self._consumer_seq = 0
        self.log.info("%s starting after stream seq %d", self.name, start_seq)

    async def run(self, stop: asyncio.Event) -> None:
        """Processes chunks until ``stop`` is set, then snapshots."""
        if self._sub is None:
            await self.on_start()
        while not stop.is_set():
            try:
                msgs = await self._sub.fetch(self.fetch_batch, timeout=0.25)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                msgs = []
            except nats.errors.Error as exc:  # disconnected: nats-py reconnects, the consumer persists
                self.log.warning("fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                if msgs:
                    await self.on_chunk(msgs)
                if time.monotonic() - self._snap_at >= self.snapshot_interval_s:
                    await self.snapshot()
            except (TickmeshError, nats.errors.Error) as exc:
                self.log.warning("chunk failed (%s); resuming from the last snapshot", exc)
                await asyncio.sleep(1.0)
                await self.on_start()
        try:
            await self.snapshot()
        except (TickmeshError, nats.errors.Error) as exc:
            self.log.warning("final snapshot failed (%s); the next start replays from the previous one", exc)

    async def snapshot(self) -> None:
        """Stores the state with the last consumed sequence (only when something changed)."""
        self._snap_at = time.monotonic()
        if self.stats.last_seq == self._snap_seq:
            return
        await self._out.wait()
        data = msgspec.msgpack.encode(_Snapshot(self.stats.last_seq, self.state_bytes()))
        await self._objects.put(self.name, data)
        self._snap_seq = self.stats.last_seq
        self.stats.snapshots += 1

    def accept(self, msg) -> bool:
        """Sequence bookkeeping for one message: False when it is a redelivery already in the state.

        Raises:
            core._consumer.WorkerGapError: a delivery was skipped.
        """
        meta = msg.metadata
        self._consumer_seq = next_delivery(self._consumer_seq, meta)
        if meta.sequence.stream <= self.stats.last_seq:
            return False
        self.stats.last_seq = meta.sequence.stream
        self.stats.messages += 1
        return True

    async def ack(self, msgs: list) -> None:
        """Acks a chunk once every output published for it is stored."""
        await self._out.wait()
        await msgs[-1].ack()  # AckPolicy.ALL: one ack covers the whole chunk

    async def dead_letter(self, subject: str, reason: str, raw: bytes, tag: str, venue: str | None = None) -> None:
        """Publishes a dead letter on ``dlq.<stage>.<venue>`` (Msg-Id ``dlq.<stage>.<tag>``); the
        venue is read from ``subject`` unless given."""
        self.stats.dead_letters += 1
        try:
            venue = venue or subjects.parse(subject).venue
        except Exception:  # a subject outside our families still gets its dead letter
            venue = "unknown"
        letter = DeadLetter(self.stage, venue, reason, raw=raw, recv_ns=time.time_ns(), detail=subject)
        await self._out.publish(subjects.dlq(self.stage, venue), self._codec.encode(letter),
                                {HDR_MSG_ID: f"dlq.{self.stage}.{tag}", HDR_REASON: reason, HDR_SCHEMA: _SCHEMA})

    async def lag(self) -> int:
        """Messages in the input stream not yet delivered to this worker."""
        info = await self.js.consumer_info(self.stream, self.name)
        return info.num_pending
