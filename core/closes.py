"""Bar closes: which feature vectors the decision stage takes in one call.

The paper book couples the series (equity, drawdown, exposure), so the signals depend on which
vectors are decided together. Deciding a whole bar close at once is also what makes the stage
fast (one vectorized call for 1k symbols instead of 1k calls). For a restart or a replay to give
the same signals, the groups must be a function of the stream's content and order, never of how
a worker's fetches cut it into chunks. `BarCloses` forms them so, message by message:

* A group is the vectors of one (timeframe, venue) with one bar start ``T``, at most one per
  symbol. One group per (timeframe, venue) is open at a time.
* **Expected members**: the symbols of that (timeframe, venue) whose previous vector was the
  bar before (``T - tf``). The group is decided as soon as all of them are in: with every symbol
  trading each bar, a bar close is decided when its last vector arrives, with no waiting.
* **Watermark**: a vector of a later bar of the same (timeframe, venue) decides the open group
  with whatever it holds (a symbol that skipped bar ``T`` delays that bar's group until then).
* **Late**: a vector of a bar whose group was already decided, or a second vector of a symbol
  already in the open group, is decided alone at once.
* A vector that arrived but cannot be decided (dead-lettered) still counts as present, so a bad
  input does not hold its bar close back.

The open groups are part of the worker's snapshot (`BarCloses.snapshot`), so vectors already
acknowledged but not yet decided survive a restart.

Example:
    >>> g = BarCloses()
    >>> g.add("1m", "x", "A", 0, "a0"), g.add("1m", "x", "B", 0, "b0")  # first bar: nothing expected
    ([['a0']], [['b0']])
    >>> g.add("1m", "x", "A", 60_000_000_000, "a1"), g.add("1m", "x", "B", 60_000_000_000, "b1")
    ([], [['a1', 'b1']])
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from core.errors import SchemaError
from core.schema import TIMEFRAME_NS

__all__ = ["BarCloses"]

Item = TypeVar("Item")


class _Open(msgspec.Struct, array_like=True):
    start_ns: int
    expected: set[str]
    waiting: int  # expected symbols not arrived yet
    members: dict  # symbol → its item (None: arrived, not to be decided), in arrival order


class _RawOpen(_Open):
    members: dict[str, msgspec.Raw]  # decoded by the caller's item type on restore


class _State(msgspec.Struct, array_like=True):
    # (tf, venue) → open group, last decided bar start, each symbol's last bar start
    open: list[tuple[str, str, _RawOpen]]
    decided: list[tuple[str, str, int]]
    last: list[tuple[str, str, str, int]]


class BarCloses(Generic[Item]):
    """Groups items (a vector and its predictions) into bar closes, in stream order."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Open] = {}
        self._decided: dict[tuple[str, str], int] = {}  # start of the newest group decided
        self._last: dict[tuple[str, str], dict[str, int]] = {}  # symbol → its newest bar start

    def __repr__(self) -> str:
        pending = sum(len(g.members) for g in self._open.values())
        return f"BarCloses(open={len(self._open)}, pending={pending})"

    @property
    def pending(self) -> int:
        """Vectors received and not yet decided."""
        return sum(sum(i is not None for i in g.members.values()) for g in self._open.values())

    def add(self, tf: str, venue: str, symbol: str, start_ns: int, item: Item | None) -> list[list[Item]]:
        """Takes the next vector of the stream; returns the groups now due, oldest first.

        Args:
            tf, venue, symbol, start_ns: the vector's series and bar start.
            item: what to decide (None: the vector arrived but is not decided, e.g. dead-lettered).

        Raises:
            SchemaError: an unknown timeframe.
        """
        if tf not in TIMEFRAME_NS:
            raise SchemaError(f"unknown timeframe {tf!r}")
        key = (tf, venue)
        due: list[list[Item]] = []
        g = self._open.get(key)
        if g is not None and start_ns > g.start_ns:  # the watermark passed the open group
            due.append(self._close(key))
            g = None
        last = self._last.setdefault(key, {})
        if g is None and start_ns <= self._decided.get(key, -1) or g is not None and (
                start_ns < g.start_ns or symbol in g.members):
            last[symbol] = max(last.get(symbol, start_ns), start_ns)
            if item is not None:
                due.append([item])
            return [d for d in due if d]
        if g is None:
            prev = start_ns - TIMEFRAME_NS[tf]
            expected = {s for s, t in last.items() if t == prev}
            g = self._open[key] = _Open(start_ns, expected, len(expected), {})
        g.members[symbol] = item
        g.waiting -= symbol in g.expected
        last[symbol] = start_ns
        if g.waiting == 0:
            due.append(self._close(key))
        return [d for d in due if d]

    def _close(self, key: tuple[str, str]) -> list[Item]:
        g = self._open.pop(key)
        self._decided[key] = g.start_ns
        return [i for i in g.members.values() if i is not None]

    def snapshot(self) -> bytes:
        """The open groups and the bookkeeping, msgpack (items as they are: msgspec-encodable)."""
        return msgspec.msgpack.encode(_State(
            [(tf, venue, g) for (tf, venue), g in self._open.items()],
            [(tf, venue, t) for (tf, venue), t in self._decided.items()],
            [(tf, venue, s, t) for (tf, venue), syms in self._last.items() for s, t in syms.items()]))

    def restore(self, data: bytes, item_type: type) -> None:
        """Restores `snapshot` output; ``item_type`` decodes the items (e.g. a tuple type)."""
        st = msgspec.msgpack.decode(data, type=_State)
        dec = msgspec.msgpack.Decoder(item_type | None)
        self._open = {(tf, venue): _Open(g.start_ns, g.expected, g.waiting,
                                         {s: dec.decode(i) for s, i in g.members.items()})
                      for tf, venue, g in st.open}
        self._decided = {(tf, venue): t for tf, venue, t in st.decided}
        self._last = {}
        for tf, venue, s, t in st.last:
            self._last.setdefault((tf, venue), {})[s] = t
