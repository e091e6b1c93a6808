"""A lean acknowledged JetStream publisher: one wildcard reply inbox instead of a future per message.

nats-py's ``publish_async`` builds a future, a semaphore slot and a parsed PubAck per message; for
the worker's many small bar messages that costs twice the publish itself. Here every message gets
``<inbox>.<n>`` as its reply subject, acks are counted by one subscription, and only an error
reply is parsed. ``wait()`` returns once every message published so far is acknowledged.
At most ``max_inflight`` messages await their ack at once: JetStream refuses a burst beyond its
ingest queue with 429 "too many requests", so ``publish`` waits for room instead.

Messages are framed here (``HPUB`` commands, the NATS protocol) and handed to the connection's
write buffer in one piece per :meth:`AckedPublisher.publish_many` call: nats-py's ``publish``
spends ~10 µs per message re-validating and re-encoding headers, as much as the rest of a bar's
trip. Subjects and header keys are still checked for what would break the framing, and header
values are sent as nats-py sends them (stripped, CR/LF turned into spaces); a message may carry
its header block already made (`header_block`'s text), which is sent as is. When the connection
is not connected (reconnecting, closed) or the client lacks the write-buffer methods this relies
on, messages go through ``nc.publish`` as before, so its buffering and errors apply unchanged.
"""

from __future__ import annotations

import asyncio
import re
from typing import Sequence

from core.errors import TickmeshError

__all__ = ["StreamPublishError", "AckedPublisher", "Message", "header_block"]

# (subject, payload, headers): what one publish sends. Headers are a dict, or the NATS header block
# `header_block` makes of one (a str), for a caller that writes many alike more cheaply itself.
Message = tuple[str, bytes, dict[str, str] | str]

# Whitespace would split a protocol line; CR/LF would end it (and inject commands).
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
_BAD_HEADER_KEY = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_HDR_LINE = "NATS/1.0\r\n"
_NEWLINES_TO_SPACES = str.maketrans({"\r": " ", "\n": " "})
_MAX_KEYS_OK = 1000  # bound of the cache of checked header keys (a worker uses a handful)


class StreamPublishError(TickmeshError):
    """JetStream refused a message, or did not acknowledge it in time."""


def header_block(headers: dict[str, str], keys_ok: set[str] | None = None) -> str:
    """The NATS header block of ``headers``, as text (sent encoded as UTF-8).

    Values are stripped and CR/LF become spaces, as nats-py's ``publish`` does. A `Message` may
    carry the block instead of the dict; text equal to what this returns is sent as is.

    Args:
        headers: header key -> value.
        keys_ok: keys already found to be header tokens (not checked again); keys found good
            here are added, up to `_MAX_KEYS_OK`.

    Raises:
        StreamPublishError: a key is not a header token.
    """
    block = _HDR_LINE
    for key, value in headers.items():
        if keys_ok is None or key not in keys_ok:
            if not key or _BAD_HEADER_KEY.search(key):
                raise StreamPublishError(f"header key {key!r} is not a header token")
            if keys_ok is not None and len(keys_ok) < _MAX_KEYS_OK:
                keys_ok.add(key)
        value = value.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES_TO_SPACES)
        block += f"{key}: {value}\r\n"
    return block + "\r\n"


def _parse_header_block(block: str) -> dict[str, str]:
    """The headers a `header_block` text holds (for ``nc.publish``, which takes a dict)."""
    lines = block[len(_HDR_LINE):].split("\r\n")
    return dict(line.split(": ", 1) for line in lines if line)


class AckedPublisher:
    """Publishes into streams over ``nc`` and waits for the acks in bulk.

    Args:
        nc: a connected ``nats.aio.client.Client``.
        max_inflight: unacknowledged messages at most.
        ack_timeout_s: how long ``publish`` and ``wait`` wait for acks before giving up.
    """

    def __init__(self, nc, max_inflight: int = 4096, ack_timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._max_inflight = max_inflight
        self._ack_timeout_s = ack_timeout_s
        self._room = asyncio.Event()
        self._room.set()
        self._prefix = ""
        self._sub = None
        self._seq = 0
        self._outstanding = 0
        self._errors: list[str] = []
        self._idle = asyncio.Event()
        self._idle.set()
        # Framing needs nats-py's write buffer (present since 2.0); without it, nc.publish.
        self._can_frame = all(hasattr(nc, name) for name in ("_send_command", "_flush_pending", "_flush_queue"))
        self._subjects_ok: set[str] = set()
        self._keys_ok: set[str] = set()

    def __repr__(self) -> str:
        return f"AckedPublisher(max_inflight={self._max_inflight}, ack_timeout_s={self._ack_timeout_s:g})"

    async def start(self) -> "AckedPublisher":
        """Subscribes a fresh reply inbox; acks of an earlier inbox no longer count."""
        self._outstanding, self._errors = 0, []
        self._idle.set()
        self._room.set()
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Sends one message; waits first while ``max_inflight`` messages await their ack.

        Raises:
            StreamPublishError: no room came within ``ack_timeout_s``, or the subject or a
                header cannot be framed.
        """
        await self.publish_many(((subject, payload, headers),))

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Sends ``messages`` in order, in as few writes as the in-flight bound allows.

        Raises:
            StreamPublishError: as :meth:`publish`; earlier slices may have been sent (the
                caller starts over from its last consistent state in any case).
        """
        start, n = 0, len(messages)
        while start < n:
            if self._outstanding >= self._max_inflight:
                self._room.clear()
                await self._await(self._room)
            stop = min(n, start + self._max_inflight - self._outstanding)
            await self._send(messages[start:stop])
            start = stop

    async def _send(self, messages: Sequence[Message]) -> None:
        nc = self._nc
        if not (self._can_frame and nc.is_connected):
            for subject, payload, headers in messages:
                self._count_one()
                if type(headers) is str:
                    headers = _parse_header_block(headers)
                await nc.publish(subject, payload, reply=f"{self._prefix}{self._seq}", headers=headers)
            return
        max_payload = nc.max_payload
        parts: list[bytes] = []
        prefix = self._prefix
        subjects_ok = self._subjects_ok
        keys_ok = self._keys_ok
        seq = self._seq
        n_bytes = 0
        try:
            for subject, payload, headers in messages:
                if subject not in subjects_ok:
                    if not subject or _BAD_SUBJECT.search(subject):
                        raise StreamPublishError(f"subject {subject!r} cannot be published")
                    if len(subjects_ok) < 100_000:  # a cache of known-good subjects, bounded
                        subjects_ok.add(subject)
                hdr = headers if type(headers) is str else header_block(headers, keys_ok)
                hdr_size = len(hdr) if hdr.isascii() else len(hdr.encode())  # isascii: O(1), no copy
                size = hdr_size + len(payload)
                if size > max_payload:
                    raise StreamPublishError(f"{subject}: {size} bytes exceed the server's max_payload {max_payload}")
                seq += 1
                # The command line and the header block are text: one encode for both.
                parts += (f"HPUB {subject} {prefix}{seq} {hdr_size} {size}\r\n{hdr}".encode(), payload, b"\r\n")
                n_bytes += len(payload)
        finally:
            self._seq = seq  # reply subjects stay unique even after a refused slice
        self._outstanding += len(messages)
        self._idle.clear()
        nc.stats["out_msgs"] += len(messages)
        nc.stats["out_bytes"] += n_bytes
        await nc._send_command(b"".join(parts))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()  # wakes nats-py's flusher task, as its own publish does

    def _count_one(self) -> None:
        self._seq += 1
        self._outstanding += 1
        self._idle.clear()

    async def _on_ack(self, msg) -> None:
        # A PubAck is {"stream":..,"seq":..[,"duplicate":true]}; a refusal carries "error"; a
        # subject no stream captures gets an empty 503 status instead.
        if b'"error"' in msg.data:
            self._errors.append(msg.data.decode(errors="replace"))
        elif msg.headers and msg.headers.get("Status") == "503":
            self._errors.append(f"no stream stores {msg.subject.rsplit('.', 1)[0]}… (503 no responders)")
        self._outstanding -= 1
        if self._outstanding < self._max_inflight:
            self._room.set()
        if self._outstanding <= 0:
            self._idle.set()

    async def wait(self) -> None:
        """Waits until every message published so far is acknowledged.

        Raises:
            StreamPublishError: a message was refused, or acks did not arrive within ``ack_timeout_s``.
        """
        await self._await(self._idle)
        if self._errors:
            errors, self._errors = self._errors, []
            raise StreamPublishError(f"JetStream refused {len(errors)} messages, first: {errors[0]}")

    async def _await(self, event: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(event.wait(), self._ack_timeout_s)
        except asyncio.TimeoutError:
            # Forget the missing acks: the caller starts over from its last consistent state.
            missing, self._outstanding = self._outstanding, 0
            self._idle.set()
            self._room.set()
            raise StreamPublishError(
                f"{missing} publishes not acknowledged within {self._ack_timeout_s} s") from None
