"""Bar closes: which vectors are decided together (core.closes.BarCloses)."""

from __future__ import annotations

import pytest

from core.closes import BarCloses
from core.errors import SchemaError

M = 60_000_000_000  # one 1m bar, ns


def feed(g: BarCloses, events) -> list[list[str]]:
    """Adds (symbol, bar index[, decided?]) events of 1m/x; returns every group that fell due."""
    out = []
    for sym, t, *keep in events:
        out += g.add("1m", "x", sym, t * M, f"{sym}{t}" if not keep or keep[0] else None)
    return out


def test_a_bar_close_is_due_when_every_symbol_of_the_previous_bar_is_in():
    g = BarCloses()
    assert feed(g, [("A", 0), ("B", 0), ("C", 0)]) == [["A0"], ["B0"], ["C0"]]  # nothing expected yet
    assert feed(g, [("B", 1), ("A", 1)]) == []
    assert g.pending == 2
    assert feed(g, [("C", 1)]) == [["B1", "A1", "C1"]]
    assert g.pending == 0


def test_a_symbol_that_skips_a_bar_holds_it_until_the_next_bar_arrives():
    g = BarCloses()
    feed(g, [("A", 0), ("B", 0)])
    assert feed(g, [("A", 1)]) == []  # B is expected and did not trade in bar 1
    # The watermark closes bar 1; B skipped it, so bar 2 expects only A and is due at once:
    # B's bar 2 comes late and goes alone.
    assert feed(g, [("A", 2)]) == [["A1"], ["A2"]]
    assert feed(g, [("B", 2)]) == [["B2"]]
    assert feed(g, [("B", 3)]) == []  # bar 2 had A and B: both expected again
    assert feed(g, [("A", 3)]) == [["B3", "A3"]]


def test_late_and_repeated_vectors_are_decided_alone():
    g = BarCloses()
    feed(g, [("A", 0), ("B", 0), ("A", 1), ("B", 1)])
    assert feed(g, [("A", 2)]) == []
    assert feed(g, [("C", 1)]) == [["C1"]]  # bar 1 was decided already
    assert feed(g, [("A", 2)]) == [["A2"]]  # A is in bar 2's open group already
    assert feed(g, [("B", 2)]) == [["A2", "B2"]]


def test_vectors_that_are_not_decided_still_count_as_present():
    g = BarCloses()
    feed(g, [("A", 0), ("B", 0)])
    assert feed(g, [("A", 1, False), ("B", 1)]) == [["B1"]]
    assert feed(g, [("A", 2, False), ("B", 2, False)]) == []  # an empty close yields no group


def test_timeframes_and_venues_group_apart():
    g = BarCloses()
    for venue in ("x", "y"):
        g.add("1m", venue, "A", 0, "a")
        g.add("1m", venue, "B", 0, "b")
    assert g.add("1m", "x", "A", M, "xa") == [] and g.add("1m", "y", "A", M, "ya") == []
    assert g.add("1h", "x", "A", 0, "h") == [["h"]]
    assert g.add("1m", "y", "B", M, "yb") == [["ya", "yb"]]
    assert g.add("1m", "x", "B", M, "xb") == [["xa", "xb"]]
    with pytest.raises(SchemaError, match="timeframe"):
        g.add("7m", "x", "A", 0, "a")


def test_a_restart_from_a_snapshot_gives_the_same_groups():
    events = [(s, t) for t in range(6) for s in "ABC" if (s, t) != ("C", 3)]
    whole = feed(BarCloses(), events)
    for cut in range(1, len(events)):
        g = BarCloses()
        head = feed(g, events[:cut])
        h = BarCloses()
        h.restore(g.snapshot(), str)
        assert head + feed(h, events[cut:]) == whole, cut
    assert whole[-4:] == [["A3", "B3"], ["A4", "B4"], ["C4"], ["A5", "B5", "C5"]]
