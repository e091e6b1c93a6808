"""Batches normalized events per (kind, symbol) and publishes them to JetStream asynchronously.

Why batches: awaiting each JetStream publish gives ~6k msg/s from Python; 500 events per message
and acks collected asynchronously give millions of events/s. Events are appended to plain lists
(the cheapest per-event work Python has) and turned into NumPy columns once per batch. Columnar
blocks of bulk frames (:class:`~edge.events.TradeColumns`, in a :class:`~edge.events.FrameEvents`)
are appended as whole arrays, sliced at batch boundaries exactly where adding their rows one by
one would cut, so the batches (and their Nats-Msg-Ids) are the same either way.

A buffer is sealed into a :class:`~core.schema.TradeBatch`/``QuoteBatch`` when it holds
``max_batch`` events or is ``flush_ms`` old. Age is measured on one of two clocks:

* ``flush_clock="recv"``: receive times of the data (``recv_ns`` given to :meth:`add`). Batch
  boundaries then depend only on the frames, never on scheduling, so replaying a file twice gives
  byte-identical batches, equal Nats-Msg-Ids, and JetStream stores them once. Used for replays.
* ``flush_clock="wall"`` (live): receive times too, plus a background timer on the local monotonic
  clock so that a quiet symbol's last events do not wait for the next frame.

Memory is bounded by ``max_pending_events``: events (and dead letters, one unit plus one per KiB
of raw input) that were accepted but not yet acknowledged by JetStream. Beyond it the overflow policy applies, counted in
the stats: ``"block"`` makes :meth:`add` wait until acks drain (file replays: nothing is lost);
``"drop"`` refuses the newest events at once (live sockets must never block), counts them in
``overflow_dropped`` and publishes one summarizing dead letter per flush period.

Acks: every message is published with ``<inbox>.<n>`` as its reply subject and one wildcard
subscription receives all PubAcks; only an error reply is parsed (a future and a parsed PubAck per
message, as nats-py's ``publish_async`` does, cost about as much as the publish itself).

Publish failures (ack timeouts, no responders, connection errors) are counted in
``publish_errors`` and retried with backoff up to ``max_attempts`` times; the deterministic
Nats-Msg-Id makes a retry of an already stored batch harmless. A retried batch may land after
later batches of its symbol; consumers order by event time. What still fails is counted in
``publish_failed`` (with ``last_error``), never silently forgotten.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import hashlib
import json
import time
from typing import Iterable, Literal

import msgspec
import nats.js.errors
import numpy as np

from core import subjects
from core.errors import SchemaError, SubjectError
from core.schema import (HDR_MSG_ID, HDR_REASON, HDR_SCHEMA, HDR_TRACEPARENT, SCHEMA_VERSION, Codec, DeadLetter,
                         QuoteBatch, TradeBatch, batch_msg_id, traceparent)
from edge.events import Event, FrameEvents, Quote, Trade, TradeColumns
from edge.metrics import EdgeStats

__all__ = ["BatchPublisher", "Overflow", "FlushClock", "DLQ_RAW_MAX_BYTES"]

Overflow = Literal["block", "drop"]
FlushClock = Literal["wall", "recv"]

# A dead letter keeps at most this much of its raw input: NATS refuses payloads over max_payload
# (1 MiB by default), and the head of a frame is enough to see what went wrong.
DLQ_RAW_MAX_BYTES = 256 * 1024
_REASON_HEADER_MAX = 200
_INT63_MASK = (1 << 63) - 1
_SCHEMA = str(SCHEMA_VERSION)
_KINDS = {Trade: "trade", Quote: "quote"}
_STATUS_HDR = "Status"
_NO_RESPONDERS = "503"
# What a malformed event can raise while it is turned into a subject and columns.
_UNENCODABLE = (SubjectError, SchemaError, OverflowError, ValueError, TypeError, KeyError)


def _dead_letter_units(dl: DeadLetter) -> int:
    """What a dead letter counts against ``max_pending_events``: 1, plus 1 per KiB of raw input.

    A flood of large unparseable frames must be bounded in bytes, not just in count.
    """
    return 1 + len(dl.raw) // 1024


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Waits for ``event`` at most ``timeout_s``; True if it is set.

    ``asyncio.timeout`` rather than ``wait_for``: no task per call, and on 3.11 ``wait_for`` can
    swallow a cancellation that arrives as the event is set.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return event.is_set()


class _Buffer:
    """Events of one (kind, symbol) waiting to be sealed into a batch.

    The newest single events are in ``rows`` (with their receive times in ``recv``); when a
    columnar block arrives, that run moves to ``parts`` and the block follows it there, so
    ``parts`` then ``rows`` hold the batch in arrival order. ``n_parts`` counts the events in
    ``parts`` and ``row_cap`` (= max_batch - n_parts) is how many ``rows`` fill the batch.
    ``offsets`` lists (first row, time offset, trade-id offset) segments: one, unless
    :meth:`BatchPublisher.shift` happened while the buffer was open.
    """

    __slots__ = ("cls", "symbol", "rows", "recv", "parts", "n_parts", "row_cap", "offsets", "first_recv_ns",
                 "first_mono_ns")

    def __init__(self, cls: type, symbol: str, recv_ns: int, offsets: tuple[int, int], max_batch: int) -> None:
        self.cls = cls
        self.symbol = symbol
        self.rows: list[Event] = []
        self.recv: list[int] = []
        # (TradeColumns, recv_ns) or (list of events, list of recv_ns), in arrival order.
        self.parts: list[tuple[TradeColumns | list[Event], int | list[int]]] = []
        self.n_parts = 0
        self.row_cap = max_batch
        self.offsets: list[tuple[int, int, int]] = [(0, *offsets)]
        self.first_recv_ns = recv_ns
        self.first_mono_ns = time.monotonic_ns()


def _reply_error(data: bytes) -> Exception:
    """The nats-py exception for a JetStream error reply (what ``publish_async`` would raise)."""
    try:
        nats.js.errors.APIError.from_error(json.loads(data)["error"])
    except nats.js.errors.APIError as exc:
        return exc
    except (ValueError, KeyError, TypeError):
        pass
    return nats.js.errors.APIError(description=data.decode(errors="replace")[:200])


def _split_items(items: list[Event | TradeColumns], k: int) -> tuple[list, list]:
    """(the first ``k`` events of ``items``, the rest), splitting a block if need be."""
    head: list = []
    for i, item in enumerate(items):
        if k <= 0:
            return head, list(items[i:])
        if item.__class__ is TradeColumns:
            if len(item) > k:
                return head + [item.take(slice(0, k))], [item.take(slice(k, None))] + list(items[i + 1:])
            k -= len(item)
        else:
            k -= 1
        head.append(item)
    return head, []


def _part_columns(buf: _Buffer) -> tuple[list, np.ndarray]:
    """Trade columns (fields of Trade, symbol slot unused) and receive times of a buffer with parts."""
    pieces = buf.parts + [(buf.rows, buf.recv)] if buf.rows else buf.parts
    cols: list[list[np.ndarray]] = [[] for _ in range(5)]
    recv: list[np.ndarray] = []
    for data, recv_ns in pieces:
        if data.__class__ is TradeColumns:
            recv.append(np.full(len(data), recv_ns, dtype=np.int64))
        else:
            data = TradeColumns.from_events(buf.symbol, data)
            recv.append(np.array(recv_ns, dtype=np.int64))
        for col, arr in zip(cols, data.columns()):
            col.append(arr)
    return [None] + [np.concatenate(c) for c in cols], np.concatenate(recv)


def _buffer_events(buf: _Buffer) -> tuple[list[Event], list[int]]:
    """Every event of a buffer one by one, with its receive time (the slow path's view)."""
    rows: list[Event] = []
    recv: list[int] = []
    for data, recv_ns in buf.parts:
        if data.__class__ is TradeColumns:
            rows.extend(data.events())
            recv.extend(itertools.repeat(recv_ns, len(data)))
        else:
            rows.extend(data)
            recv.extend(recv_ns)
    rows.extend(buf.rows)
    recv.extend(buf.recv)
    return rows, recv


class _Item:
    """One encoded message on its way to JetStream, with what its ack settles."""

    __slots__ = ("subject", "payload", "headers", "units", "is_batch", "attempts", "sent_mono")

    def __init__(self, subject: str, payload: bytes, headers: dict[str, str], units: int,
                 is_batch: bool) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.units = units  # events in a batch; see _dead_letter_units for a dead letter
        self.is_batch = is_batch
        self.attempts = 0
        self.sent_mono = 0.0


class BatchPublisher:
    """Per-(kind, symbol) column buffers published as JetStream batches with bounded memory.

    Use as ``async with BatchPublisher(js, venue) as pub:`` or call :meth:`close` at the end;
    the background task starts on first use.

    Args:
        js: a ``nats.js.JetStreamContext``; the MD and DLQ streams must exist.
        venue: venue token of every subject and batch (``adapter.venue``).
        flush_ms: a buffer older than this is sealed and published.
        max_batch: events per batch at most.
        max_pending_events: accepted but unacknowledged events (and dead letters) at most.
        overflow: ``"block"`` or ``"drop"``; see the module docstring.
        flush_clock: ``"wall"`` or ``"recv"``; see the module docstring.
        max_inflight: unacknowledged publishes at most.
        ack_timeout_s: an ack not received within this is a failed attempt.
        max_attempts: publish attempts per message before it counts as failed.
        stats: counters to update; a fresh :class:`EdgeStats` by default.
    """

    def __init__(self, js, venue: str, *, flush_ms: float = 20.0, max_batch: int = 500,
                 max_pending_events: int = 200_000, overflow: Overflow = "block",
                 flush_clock: FlushClock = "wall", max_inflight: int = 256, ack_timeout_s: float = 5.0,
                 max_attempts: int = 5, stats: EdgeStats | None = None) -> None:
        if overflow not in ("block", "drop"):
            raise ValueError(f"overflow must be 'block' or 'drop', not {overflow!r}")
        if flush_clock not in ("wall", "recv"):
            raise ValueError(f"flush_clock must be 'wall' or 'recv', not {flush_clock!r}")
        if max_batch < 1 or max_pending_events < 1 or max_inflight < 1 or max_attempts < 1:
            raise ValueError("max_batch, max_pending_events, max_inflight and max_attempts must be >= 1")
        self.js = js
        self.venue = venue
        self._codec = Codec()
        self.stats = stats if stats is not None else EdgeStats()
        self.flush_ns = int(flush_ms * 1_000_000)
        self.max_batch = max_batch
        self.max_pending_events = max_pending_events
        self.overflow = overflow
        self.flush_clock = flush_clock
        self.max_inflight = max_inflight
        self.ack_timeout_s = ack_timeout_s
        self.max_attempts = max_attempts
        # Subjects validate the venue token now rather than at the first publish.
        self._dlq_subject = subjects.dlq("edge", venue)
        self._subject_cache: dict[tuple[type, str], str] = {}
        self._buffers: dict[tuple[type, str], _Buffer] = {}
        self._oldest_recv_ns = 0
        self._ready: collections.deque[_Item] = collections.deque()
        # Unacknowledged messages by the number in their reply subject, in send order.
        self._inflight: dict[int, _Item] = {}
        self._nc = js._nc  # acks arrive on a plain subscription of the JetStream context's connection
        self._ack_prefix = ""
        self._ack_sub = None
        self._ack_lock = asyncio.Lock()
        self._seq = 0
        self._retries: set[asyncio.TimerHandle] = set()
        self._pending = 0  # units accepted and not yet settled (acked or given up)
        self._space = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._dropped_window = 0
        self._dropped_symbols: collections.Counter[str] = collections.Counter()
        self._dropped_first_ns = 0
        self._ts_offset_ns = 0
        self._id_offset = 0
        # Smallest and largest time (exchange or receive) sealed so far, while tracked: four
        # reductions per batch are a fifth of sealing a small one, and only a looped replay asks.
        self.track_time_range = False
        self._time_min_ns: int | None = None
        self._time_max_ns: int | None = None

    def __repr__(self) -> str:
        return (f"BatchPublisher(venue={self.venue!r}, flush_ms={self.flush_ns / 1e6:g}, "
                f"max_batch={self.max_batch}, max_pending_events={self.max_pending_events}, "
                f"overflow={self.overflow!r}, flush_clock={self.flush_clock!r})")

    async def __aenter__(self) -> "BatchPublisher":
        self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Events and dead letters accepted but not yet acknowledged or given up."""
        return self._pending

    @property
    def time_range_ns(self) -> tuple[int, int] | None:
        """(min, max) over every exchange and receive time sealed into a batch since
        ``track_time_range`` was set to True; None if no batch was sealed since.

        Raises:
            RuntimeError: ``track_time_range`` is off.
        """
        if not self.track_time_range:
            raise RuntimeError("BatchPublisher.time_range_ns needs track_time_range = True before sealing")
        if self._time_min_ns is None:
            return None
        return self._time_min_ns, self._time_max_ns

    def start(self) -> None:
        """Starts the background flush task (idempotent; needs a running event loop)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"publisher-{self.venue}")

    # ------------------------------------------------------------------ accepting input

    async def add(self, events: list[Event | TradeColumns] | FrameEvents | TradeColumns, recv_ns: int) -> int:
        """Buffers one frame's events (any mix of kinds and symbols).

        Args:
            events: validated :class:`~edge.events.Trade`/``Quote`` events, columnar
                :class:`~edge.events.TradeColumns` blocks among them or alone, or a
                :class:`~edge.events.FrameEvents` (as ``process_frame`` returns for bulk frames).
            recv_ns: local receive time of the frame they came from.

        Returns:
            How many events were accepted (fewer than given only under the "drop" policy).
        """
        kind = events.__class__
        if kind is FrameEvents:
            return await self._add_items(events.items, len(events), recv_ns)
        if kind is TradeColumns:
            return await self._add_items([events], len(events), recv_ns)
        n = len(events)
        if not n:
            return 0
        if TradeColumns in map(type, events):
            return await self._add_items(events, sum(len(e) if type(e) is TradeColumns else 1 for e in events),
                                         recv_ns)
        events, n, recv_ns = await self._admit(events, n, recv_ns)
        if not n:
            return 0
        first = events[0]
        cls, symbol = first.__class__, first[0]
        if n == 1:
            # One event per frame is common (Coinbase, Binance, sim): the shortest path.
            buf = self._buffers.get((cls, symbol))
            if buf is not None and len(buf.rows) < buf.row_cap - 1:
                buf.rows.append(first)
                buf.recv.append(recv_ns)
                return 1
            if self._append(cls, symbol, events, recv_ns):
                await self._pump()
            return 1
        sealed = False
        # Nearly every frame holds one kind of one symbol: check that with a tight loop, then
        # append the whole list at C speed. Mixed frames are grouped first.
        for ev in events:
            if ev[0] != symbol or ev.__class__ is not cls:
                groups: dict[tuple[type, str], list[Event]] = {}
                for e in events:
                    groups.setdefault((e.__class__, e[0]), []).append(e)
                for (cls, symbol), group in groups.items():
                    sealed |= self._append(cls, symbol, group, recv_ns)
                break
        else:
            sealed = self._append(cls, symbol, events, recv_ns)
        if sealed:
            await self._pump()
        return n

    def add_nowait(self, events: list[Event] | FrameEvents | TradeColumns, recv_ns: int) -> bool:
        """:meth:`add` for the commonest frame, when that needs no waiting; else does nothing.

        One event per frame is the rule on WebSocket feeds (Coinbase, Binance, sim), and awaiting
        :meth:`add` for each costs about as much as the append itself. This takes a frame of
        one event whose (kind, symbol) buffer is open, has room for it without filling up and is
        not yet due by age, while the memory bound has room: exactly the case in which
        :meth:`add` would append and return without suspending.

        Returns:
            True if the event was buffered; False if nothing was done and the caller must
            ``await add(events, recv_ns)``.
        """
        if (events.__class__ is not list or len(events) != 1 or self._task is None or self._closed
                or self._pending >= self.max_pending_events):
            return False
        recv_ns += self._ts_offset_ns
        if recv_ns - self._oldest_recv_ns >= self.flush_ns:
            return False
        ev = events[0]
        cls = ev.__class__
        if cls is TradeColumns:
            return False
        buf = self._buffers.get((cls, ev[0]))
        if buf is None or len(buf.rows) >= buf.row_cap - 1:
            return False
        buf.rows.append(ev)
        buf.recv.append(recv_ns)
        self._pending += 1
        self.stats.events += 1
        return True

    async def _admit(self, items: list, n: int, recv_ns: int) -> tuple[list, int, int]:
        """Applies the memory bound to ``n`` events in ``items`` and seals aged buffers.

        Returns:
            The accepted items, their event count (0: all dropped) and the receive time shifted
            by the replay offset (ages and the recv_ns column use the shifted time).
        """
        if self._task is None or self._closed:
            if self._closed:
                raise RuntimeError("BatchPublisher is closed")
            self.start()
        if self._pending + n > self.max_pending_events:
            if self.overflow == "drop":
                room = max(0, self.max_pending_events - self._pending)
                items, dropped = _split_items(items, room)
                self._count_drop(dropped, recv_ns)
                if not room:
                    return items, 0, recv_ns
                n = room
            else:
                await self._wait_for_room(n)
        self._pending += n
        self.stats.events += n
        if self._ts_offset_ns:
            recv_ns += self._ts_offset_ns
        if recv_ns - self._oldest_recv_ns >= self.flush_ns and self._buffers:
            self._seal_aged(recv_ns - self.flush_ns, None)
            await self._pump()
        return items, n, recv_ns

    async def _add_items(self, items: list[Event | TradeColumns], n: int, recv_ns: int) -> int:
        """:meth:`add` for a frame with columnar blocks: ``n`` events in ``items``."""
        if not n:
            return 0
        items, n, recv_ns = await self._admit(items, n, recv_ns)
        if not n:
            return 0
        sealed = False
        # In item order, so each (kind, symbol) gets its events in arrival order; a run of
        # single events of one key is appended at once.
        run: list[Event] = []
        run_key = None
        for item in items:
            if item.__class__ is TradeColumns:
                if run:
                    sealed |= self._append(*run_key, run, recv_ns)
                    run = []
                sealed |= self._append_block(item, recv_ns)
                continue
            key = (item.__class__, item[0])
            if key != run_key and run:
                sealed |= self._append(*run_key, run, recv_ns)
                run = []
            run_key = key
            run.append(item)
        if run:
            sealed |= self._append(*run_key, run, recv_ns)
        if sealed:
            await self._pump()
        return n

    def _buffer(self, key: tuple[type, str], recv_ns: int) -> _Buffer:
        buf = self._buffers.get(key)
        if buf is None:
            if not self._buffers:
                self._oldest_recv_ns = recv_ns
            buf = self._buffers[key] = _Buffer(key[0], key[1], recv_ns, (self._ts_offset_ns, self._id_offset),
                                               self.max_batch)
        return buf

    def _append(self, cls: type, symbol: str, events: list[Event], recv_ns: int) -> bool:
        """Appends events of one (kind, symbol); True if a buffer filled up and was sealed."""
        key = (cls, symbol)
        sealed = False
        while events:
            buf = self._buffer(key, recv_ns)
            rows = buf.rows
            room = buf.row_cap - len(rows)
            take = events if len(events) <= room else events[:room]
            rows.extend(take)
            buf.recv.extend(itertools.repeat(recv_ns, len(take)))
            events = events[len(take):] if take is not events else ()
            if len(rows) >= buf.row_cap:
                self._seal(buf)
                sealed = True
        return sealed

    def _append_block(self, block: TradeColumns, recv_ns: int) -> bool:
        """Appends a block's rows, sliced where a batch fills up; True if a buffer was sealed."""
        key = (Trade, block.symbol)
        sealed = False
        start, n = 0, len(block)
        while start < n:
            buf = self._buffer(key, recv_ns)
            if buf.rows:
                buf.parts.append((buf.rows, buf.recv))
                buf.n_parts += len(buf.rows)
                buf.rows, buf.recv = [], []
            take = min(self.max_batch - buf.n_parts, n - start)
            buf.parts.append((block if take == n else block.take(slice(start, start + take)), recv_ns))
            buf.n_parts += take
            buf.row_cap = self.max_batch - buf.n_parts
            start += take
            if buf.row_cap <= 0:
                self._seal(buf)
                sealed = True
        return sealed

    async def dead_letter(self, reason: str, raw: str | bytes, recv_ns: int, symbol: str = "",
                          detail: str = "", stage: str = "edge") -> bool:
        """Publishes a :class:`~core.schema.DeadLetter` to ``dlq.<stage>.<venue>``.

        Returns:
            False if the "drop" policy refused it (counted in ``overflow_dropped``).
        """
        raw_b = raw.encode("utf-8", "backslashreplace") if isinstance(raw, str) else bytes(raw)
        return await self.publish_dead_letter(DeadLetter(stage=stage, venue=self.venue, reason=reason,
                                                         raw=raw_b, recv_ns=recv_ns, symbol=symbol,
                                                         detail=detail))

    async def publish_dead_letter(self, dl: DeadLetter, ordinal: int = 0) -> bool:
        """Publishes a ready DeadLetter to ``dlq.<dl.stage>.<venue>`` with a ``Tm-Reason`` header.

        Its Nats-Msg-Id is a digest of its content and ``ordinal``, so re-collecting the same
        input (a replay) stores it once, while distinct dead letters of one frame (give each its
        own ``ordinal``) are all kept.

        Returns:
            False if the "drop" policy refused it (counted in ``overflow_dropped``).
        """
        if self._closed:
            raise RuntimeError("BatchPublisher is closed")
        if self._task is None:
            self.start()
        units = _dead_letter_units(dl)
        if self._pending + units > self.max_pending_events:
            if self.overflow == "drop":
                self._count_drop((), dl.recv_ns, dead_letters=1)
                return False
            await self._wait_for_room(units)
        self._enqueue_dead_letter(dl, ordinal)
        await self._pump()
        return True

    async def flush(self) -> None:
        """Seals every buffer now and starts publishing it (does not wait for acks)."""
        for buf in list(self._buffers.values()):
            self._seal(buf)
        await self._pump()

    def shift(self, ts_offset_ns: int, trade_id_offset: int = 0) -> None:
        """From now on adds offsets to the times and trade ids of added events (looped replays).

        ``ts_offset_ns`` moves exchange and receive times alike (and so the receive-time age of
        buffers); trade ids wrap modulo 2**63 and stay non-negative. Events already added keep
        the offsets they were added with; open buffers need not be flushed.
        """
        self._ts_offset_ns = ts_offset_ns
        self._id_offset = trade_id_offset
        for buf in self._buffers.values():
            buf.offsets.append((buf.n_parts + len(buf.rows), ts_offset_ns, trade_id_offset))

    async def close(self) -> None:
        """Flushes everything, waits until every message is acknowledged or given up, stops.

        Bounded: each message gets at most ``max_attempts`` attempts of ``ack_timeout_s``.
        """
        if self._closed:
            return
        if self._task is None:
            self.start()
        self._report_drops()
        await self.flush()
        while self._pending > 0:
            self._space.clear()
            await self._pump()
            if not await _wait(self._space, self._tick_s()):
                self._expire_inflight()
        self._closed = True
        # A flag, not Task.cancel(): the task stops at its next turn with nothing left to do.
        self._wake.set()
        await self._task
        if self._ack_sub is not None:
            sub, self._ack_sub = self._ack_sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - a closed connection has no subscription left anyway
                self.stats.last_error = self.stats.last_error or f"ack unsubscribe: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ sealing and encoding

    def _tick_s(self) -> float:
        return max(self.flush_ns / 2e9, 0.001)

    def _seal_aged(self, limit_recv_ns: int | None, limit_mono_ns: int | None) -> None:
        """Seals the buffers opened at or before either limit (receive time, monotonic time)."""
        oldest = None
        for buf in list(self._buffers.values()):
            if ((limit_recv_ns is not None and buf.first_recv_ns <= limit_recv_ns)
                    or (limit_mono_ns is not None and buf.first_mono_ns <= limit_mono_ns)):
                self._seal(buf)
            elif oldest is None or buf.first_recv_ns < oldest:
                oldest = buf.first_recv_ns
        if oldest is not None:
            self._oldest_recv_ns = oldest

    def _seal(self, buf: _Buffer) -> None:
        """Encodes one buffer into a batch message and queues it for publishing."""
        key = (buf.cls, buf.symbol)
        del self._buffers[key]
        try:
            subject = self._subject(key)
            if buf.parts:
                cols, recv_ns = _part_columns(buf)
            else:
                cols, recv_ns = list(zip(*buf.rows)), np.array(buf.recv, dtype=np.int64)
            batch = self._encode(buf.cls, buf.symbol, cols, recv_ns, buf.offsets)
        except _UNENCODABLE:
            self._seal_row_by_row(buf)
            return
        self._queue_batch(subject, batch)

    def _subject(self, key: tuple[type, str]) -> str:
        subject = self._subject_cache.get(key)
        if subject is None:
            subject = self._subject_cache[key] = subjects.md(self.venue, _KINDS[key[0]], key[1])
        return subject

    def _encode(self, cls: type, symbol: str, cols, recv_ns, offsets) -> TradeBatch | QuoteBatch:
        """Columns as a batch; ``recv_ns`` already shifted, ``offsets`` as in _Buffer.

        ``cols`` follows the event's fields (``cols[0]``, the symbol, is not used).
        """
        ts_ns = np.array(cols[1], dtype=np.int64)  # a copy: offsets are added in place
        n_rows = len(ts_ns)
        if len(offsets) > 1 or offsets[0][1]:
            bounds = [start for start, _, _ in offsets[1:]] + [n_rows]
            for (start, ts_off, _), end in zip(offsets, bounds):
                ts_ns[start:end] += ts_off
        if cls is Trade:
            trade_id = np.array(cols[5], dtype=np.int64)
            if len(offsets) > 1 or offsets[0][2]:
                bounds = [start for start, _, _ in offsets[1:]] + [n_rows]
                for (start, _, id_off), end in zip(offsets, bounds):
                    if id_off:
                        trade_id[start:end] = (trade_id[start:end] + np.int64(id_off)) & np.int64(_INT63_MASK)
            batch = TradeBatch.from_columns(self.venue, symbol, ts_ns=ts_ns, recv_ns=recv_ns, px=cols[2],
                                            qty=cols[3], side=cols[4], trade_id=trade_id)
        elif cls is Quote:
            batch = QuoteBatch.from_columns(self.venue, symbol, ts_ns=ts_ns, recv_ns=recv_ns, bid_px=cols[2],
                                            bid_qty=cols[3], ask_px=cols[4], ask_qty=cols[5])
        else:
            raise TypeError(f"not an edge event: {cls.__name__}")
        if not self.track_time_range:
            return batch
        recv_arr = np.asarray(recv_ns)
        lo = min(int(ts_ns.min()), int(recv_arr.min()))
        hi = max(int(ts_ns.max()), int(recv_arr.max()))
        if self._time_min_ns is None:
            self._time_min_ns, self._time_max_ns = lo, hi
        else:
            self._time_min_ns = min(self._time_min_ns, lo)
            self._time_max_ns = max(self._time_max_ns, hi)
        return batch

    def _seal_row_by_row(self, buf: _Buffer) -> None:
        """Slow path when a batch does not encode: dead-letters the rows that do not fit a column."""
        good_rows, good_recv, good_offsets = [], [], []
        starts = [start for start, _, _ in buf.offsets]
        rows, recv = _buffer_events(buf)
        for i, (ev, recv_ns) in enumerate(zip(rows, recv)):
            # The offsets segment this row was added in.
            _, ts_off, id_off = buf.offsets[bisect.bisect_right(starts, i) - 1]
            try:
                subject = self._subject((buf.cls, buf.symbol))
                self._encode(buf.cls, buf.symbol, list(zip(ev)), [recv_ns], [(0, ts_off, id_off)])
            except _UNENCODABLE as exc:
                self._pending -= 1
                self.stats.rejected += 1
                self._enqueue_dead_letter(DeadLetter(
                    stage="edge", venue=self.venue, reason=f"unencodable event: {type(exc).__name__}: {exc}",
                    raw=repr(ev).encode(), recv_ns=recv_ns, symbol=str(buf.symbol), detail=repr(ev)))
                continue
            if not good_offsets or good_offsets[-1][1:] != (ts_off, id_off):
                good_offsets.append((len(good_rows), ts_off, id_off))
            good_rows.append(ev)
            good_recv.append(recv_ns)
        if good_rows:
            self._queue_batch(subject, self._encode(buf.cls, buf.symbol, list(zip(*good_rows)), good_recv,
                                                    good_offsets))

    def _queue_batch(self, subject: str, batch: TradeBatch | QuoteBatch) -> None:
        kind = "trade" if type(batch) is TradeBatch else "quote"
        n = len(batch)
        if kind == "trade":
            self.stats.trades += n
        else:
            self.stats.quotes += n
        headers = {HDR_MSG_ID: batch_msg_id(kind, batch), HDR_SCHEMA: _SCHEMA, HDR_TRACEPARENT: traceparent()}
        self._ready.append(_Item(subject, self._codec.encode(batch), headers, n, True))

    def _enqueue_dead_letter(self, dl: DeadLetter, ordinal: int = 0) -> None:
        if len(dl.raw) > DLQ_RAW_MAX_BYTES:
            detail = f"{dl.detail}; raw truncated from {len(dl.raw)} bytes".lstrip("; ")
            dl = msgspec.structs.replace(dl, raw=dl.raw[:DLQ_RAW_MAX_BYTES], detail=detail)
        if dl.venue != self.venue:
            dl = msgspec.structs.replace(dl, venue=self.venue)
        payload = self._codec.encode(dl)
        digest = hashlib.blake2b(payload, digest_size=12)
        if ordinal:
            digest.update(ordinal.to_bytes(8, "little", signed=True))
        # Header values are one line; the full reason is in the body.
        reason_hdr = " ".join(dl.reason.split())[:_REASON_HEADER_MAX] or "unspecified"
        headers = {HDR_MSG_ID: f"dlq.{dl.stage}.{self.venue}.{digest.hexdigest()}", HDR_SCHEMA: _SCHEMA,
                   HDR_REASON: reason_hdr}
        subject = self._dlq_subject if dl.stage == "edge" else subjects.dlq(dl.stage, self.venue)
        units = _dead_letter_units(dl)
        self._pending += units
        self.stats.dead_letters += 1
        reasons = self.stats.dead_letter_reasons
        reasons[dl.reason] = reasons.get(dl.reason, 0) + 1
        self._ready.append(_Item(subject, payload, headers, units, False))

    # ------------------------------------------------------------------ overflow

    async def _wait_for_room(self, units: int) -> None:
        """Block policy: waits until ``units`` more fit (or nothing is pending: oversize frames pass)."""
        while self._pending > 0 and self._pending + units > self.max_pending_events:
            if not self._inflight and not self._ready and not self._retries:
                # Everything pending sits in buffers: publish them, or nothing would ever drain.
                await self.flush()
                continue
            self._space.clear()
            await self._pump()
            await _wait(self._space, self._tick_s())

    def _count_drop(self, dropped: Iterable[Event | TradeColumns], recv_ns: int, dead_letters: int = 0) -> None:
        n = dead_letters
        for ev in dropped:
            if ev.__class__ is TradeColumns:
                self._dropped_symbols[ev.symbol] += len(ev)
                n += len(ev)
            else:
                self._dropped_symbols[ev[0]] += 1
                n += 1
        if dead_letters:
            self._dropped_symbols["(dead letters)"] += dead_letters
        if not self._dropped_window:
            self._dropped_first_ns = recv_ns
        self._dropped_window += n
        self.stats.overflow_dropped += n

    def _report_drops(self) -> None:
        """Publishes one dead letter summarizing the drops since the last report (bypasses the bound)."""
        if not self._dropped_window:
            return
        top = ", ".join(f"{sym}={cnt}" for sym, cnt in self._dropped_symbols.most_common(20))
        # The reason stays constant so summaries group; the count goes in the detail.
        reason = f"overflow: input dropped, max_pending_events={self.max_pending_events} reached"
        self._enqueue_dead_letter(DeadLetter(
            stage="edge", venue=self.venue, reason=reason, recv_ns=self._dropped_first_ns,
            detail=(f"dropped {self._dropped_window} from recv_ns {self._dropped_first_ns} until "
                    f"{time.time_ns()}; by symbol: {top}")))
        self._dropped_window = 0
        self._dropped_symbols.clear()

    # ------------------------------------------------------------------ publishing and acks

    async def _pump(self) -> None:
        """Publishes queued messages while fewer than ``max_inflight`` await their ack."""
        ready = self._ready
        inflight = self._inflight
        if ready and self._ack_sub is None:
            await self._subscribe_acks()
        publish = self._nc.publish
        prefix = self._ack_prefix
        while ready and len(inflight) < self.max_inflight:
            item = ready.popleft()
            item.attempts += 1
            self._seq += 1
            seq = self._seq
            try:
                await publish(item.subject, item.payload, reply=f"{prefix}{seq}", headers=item.headers)
            except Exception as exc:  # noqa: BLE001 - connection closed, buffer full, ...: retry later
                self._failed_attempt(item, exc)
                continue
            item.sent_mono = time.monotonic()
            inflight[seq] = item

    async def _subscribe_acks(self) -> None:
        """Subscribes ``<inbox>.*``, where every PubAck of this publisher arrives (once)."""
        async with self._ack_lock:
            if self._ack_sub is None:
                prefix = self._nc.new_inbox() + "."
                self._ack_sub = await self._nc.subscribe(prefix + "*", cb=self._on_ack)
                self._ack_prefix = prefix

    async def _on_ack(self, msg) -> None:
        """One reply: a PubAck, an error, or a no-responders status (no stream takes the subject)."""
        item = self._inflight.pop(int(msg.subject[len(self._ack_prefix):]), None)
        if item is None:
            return  # the ack of an attempt that already timed out (and was retried)
        data = msg.data
        headers = msg.headers
        if headers and headers.get(_STATUS_HDR) == _NO_RESPONDERS:
            self._failed_attempt(item, nats.js.errors.NoStreamResponseError())
        elif b'"error"' in data:
            self._failed_attempt(item, _reply_error(data))
        else:
            if item.is_batch:
                self.stats.batches += 1
                # The server writes `"duplicate": true` (with a space) and omits it when false.
                if b'"duplicate"' in data and b"true" in data:
                    self.stats.duplicates += 1
            self._settle(item)
        self._wake.set()

    def _settle(self, item: _Item) -> None:
        self._pending -= item.units
        self._space.set()

    def _failed_attempt(self, item: _Item, exc: BaseException) -> None:
        self.stats.publish_errors += 1
        self.stats.last_error = f"{item.subject}: {type(exc).__name__}: {exc}".rstrip(": ")
        if item.attempts >= self.max_attempts:
            self.stats.publish_failed += item.units
            self._settle(item)
            return
        delay_s = min(0.05 * 2 ** item.attempts, 2.0)
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            self._retries.discard(handle)
            self._ready.appendleft(item)
            self._wake.set()

        handle = asyncio.get_running_loop().call_later(delay_s, requeue)
        self._retries.add(handle)

    def _expire_inflight(self) -> None:
        """Gives up waiting for acks that are overdue: each is a failed attempt, retried."""
        deadline = time.monotonic() - self.ack_timeout_s
        inflight = self._inflight
        expired = []
        for seq, item in inflight.items():
            if item.sent_mono > deadline:
                break  # insertion order is send order
            expired.append(seq)
        for seq in expired:
            self._failed_attempt(inflight.pop(seq), TimeoutError(f"no ack within {self.ack_timeout_s:g} s"))
        if expired:
            self._wake.set()

    async def _run(self) -> None:
        """Background task: flushes by wall-clock age, reports drops, retries, refills in-flight."""
        tick_s = self._tick_s()
        next_report = time.monotonic() + tick_s
        while not self._closed:
            await _wait(self._wake, tick_s)
            self._wake.clear()
            try:
                now = time.monotonic()
                if self.flush_clock == "wall" and self._buffers:
                    self._seal_aged(None, time.monotonic_ns() - self.flush_ns)
                if now >= next_report:
                    next_report = now + tick_s
                    self._report_drops()
                    self._expire_inflight()
                await self._pump()
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop every later flush
                self.stats.last_error = f"publisher task: {type(exc).__name__}: {exc}"
