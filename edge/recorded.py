"""Recorded WebSocket sessions (cryptofeed's raw-data recorder layout) and paced replay.

File layout::

    <ws url> <-> <connect epoch s>
    <ws url> <- <epoch s>: <json sent>        (one per subscribe request)
    <receive epoch s>: <frame text exactly as received>

Receive times are converted to ns from their decimal text, exactly.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator

from core.errors import DataFileError, ParseError
from edge.adapters.base import decimal_to_ns

__all__ = ["RecordedFile", "open_recorded", "paced", "replay_offsets_s"]

_CONNECT_MARK = " <-> "
_SENT_MARK = " <- "


class RecordedFile:
    """One recorded session: its URL, connect time, the requests sent, and the frames.

    Attributes:
        path: the file.
        url: the WebSocket URL (with its query string, e.g. Binance's stream list).
        connect_s: connect time, epoch seconds.
        sent: the texts sent after connecting (subscribe requests), in order.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        """Reads the header lines.

        Raises:
            DataFileError: the file is missing or its first line is not ``<url> <-> <time>``.
        """
        self.path = Path(path)
        self.sent: list[str] = []
        try:
            with self.path.open(encoding="utf-8") as fh:
                first = fh.readline().rstrip("\n")
                url, mark, connect = first.partition(_CONNECT_MARK)
                if not mark or "://" not in url:
                    raise DataFileError(f"{self.path}: not a recorded WebSocket session (first line {first[:80]!r})")
                try:
                    self.connect_s = float(connect)
                except ValueError:
                    raise DataFileError(f"{self.path}: bad connect time {connect!r} on line 1") from None
                self.url = url
                sent_prefix = url + _SENT_MARK
                for line in fh:
                    if not line.startswith(sent_prefix):
                        break
                    self.sent.append(line.rstrip("\n").partition(": ")[2])
        except FileNotFoundError:
            raise DataFileError(f"recorded file not found: {self.path}") from None
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{self.path}: not UTF-8 text: {exc}") from None

    def __repr__(self) -> str:
        return f"RecordedFile({str(self.path)!r}, url={self.url!r})"

    def frames(self) -> Iterator[tuple[int, str]]:
        """Yields ``(recv_ns, frame text)`` in file order; header and sent lines are skipped.

        Raises:
            DataFileError: a frame line does not start with ``<epoch s>: `` (names the line).
        """
        sent_prefix = self.url + _SENT_MARK
        with self.path.open(encoding="utf-8") as fh:
            fh.readline()
            for lineno, line in enumerate(fh, start=2):
                if line.startswith(sent_prefix):
                    continue
                if line.endswith("\n"):
                    line = line[:-1]
                if not line:
                    continue
                ts_text, sep, frame = line.partition(": ")
                try:
                    if not sep:
                        raise ParseError("no ': ' separator")
                    recv_ns = decimal_to_ns(ts_text)
                except ParseError as exc:
                    raise DataFileError(f"{self.path}:{lineno}: not '<epoch s>: <frame>' ({exc})") from None
                yield recv_ns, frame


def open_recorded(path: str | os.PathLike) -> RecordedFile:
    """Opens a recorded session file (see :class:`RecordedFile`)."""
    return RecordedFile(path)


class _Schedule:
    """Offsets of frames from the first one's due time, in seconds, for a replay speed."""

    def __init__(self, speed: float | None) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"replay speed must be positive (or None for unpaced), got {speed!r}")
        self._speed = speed
        self._first_ns: int | None = None
        self._last_s = 0.0

    def offset_s(self, recv_ns: int) -> float:
        if self._speed is None:
            return 0.0
        if self._first_ns is None:
            self._first_ns = recv_ns
        # Never decreasing: a receive time stepping backwards is replayed at once, not reordered.
        self._last_s = max(self._last_s, (recv_ns - self._first_ns) / 1e9 / self._speed)
        return self._last_s


def replay_offsets_s(recv_ns: Iterable[int], speed: float | None) -> Iterator[float]:
    """Seconds after the first frame at which each frame is due in a replay at ``speed``.

    This is the schedule :func:`paced` follows. Offsets never decrease; ``speed`` None gives 0.0
    for every frame (as fast as possible).

    Raises:
        ValueError: ``speed`` is not positive.
    """
    schedule = _Schedule(speed)
    for ns in recv_ns:
        yield schedule.offset_s(ns)


async def paced(
    frames: Iterable[tuple[int, str | bytes]] | AsyncIterable[tuple[int, str | bytes]],
    speed: float | None,
) -> AsyncIterator[tuple[int, str | bytes]]:
    """Re-yields ``(recv_ns, raw)`` keeping the recorded gaps divided by ``speed``.

    The schedule (:func:`replay_offsets_s`) is anchored at the first frame, so sleep overshoot
    does not accumulate. ``speed`` None yields as fast as possible, still giving the event loop
    a turn every few hundred frames.

    Raises:
        ValueError: ``speed`` is not positive.
    """
    schedule = _Schedule(speed)
    start = time.monotonic()
    n = 0
    async for recv_ns, raw in _aiter(frames):
        n += 1
        delay = start + schedule.offset_s(recv_ns) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif n % 256 == 0:
            await asyncio.sleep(0)
        yield recv_ns, raw


async def _aiter(frames):
    if hasattr(frames, "__aiter__"):
        async for item in frames:
            yield item
    else:
        for item in frames:
            yield item
