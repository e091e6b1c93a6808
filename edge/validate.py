"""Sanity checks on normalized events, and the one frame -> events/dead-letters step.

:func:`process_frame` is the exact code path both the live collector and the offline readers run:
parse, validate, and turn every failure into a :class:`core.schema.DeadLetter` with a reason, so
nothing is dropped silently and a bad frame never stops the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Iterable, NamedTuple

from core.errors import ParseError
from core.schema import DeadLetter
from edge.adapters.base import Adapter
from edge.events import Event, FrameEvents, Quote, Trade, TradeColumns

__all__ = ["validate", "validate_columns", "process_frame", "FrameResult", "STAGE"]

STAGE = "edge"
_isfinite = math.isfinite
_INF = math.inf
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_tuple_new = tuple.__new__  # builds FrameResult without a Python-level __new__ call


def _trade_problem(ev: Trade, recv_ns: int, max_skew_ns: int | None) -> str | None:
    if not (ev.px > 0 and _isfinite(ev.px)):
        return f"bad price: px={ev.px!r} (must be positive and finite)"
    if not (ev.qty > 0 and _isfinite(ev.qty)):
        return f"bad size: qty={ev.qty!r} (must be positive and finite)"
    if max_skew_ns is not None and abs(ev.ts_ns - recv_ns) > max_skew_ns:
        return f"exchange time off by {(ev.ts_ns - recv_ns) / 1e9:+.3f} s from receive time (limit {max_skew_ns / 1e9:g} s)"
    return None


def _quote_problem(ev: Quote, recv_ns: int, max_skew_ns: int | None) -> str | None:
    if not (ev.bid_px > 0 and _isfinite(ev.bid_px)):
        return f"bad price: bid_px={ev.bid_px!r} (must be positive and finite)"
    if not (ev.ask_px > 0 and _isfinite(ev.ask_px)):
        return f"bad price: ask_px={ev.ask_px!r} (must be positive and finite)"
    # Sizes may be 0.0: some venues (Coinbase ticker, 2021) send no top-of-book sizes.
    if not (ev.bid_qty >= 0 and _isfinite(ev.bid_qty)):
        return f"bad size: bid_qty={ev.bid_qty!r} (must be non-negative and finite)"
    if not (ev.ask_qty >= 0 and _isfinite(ev.ask_qty)):
        return f"bad size: ask_qty={ev.ask_qty!r} (must be non-negative and finite)"
    if ev.bid_px > ev.ask_px:
        return f"crossed quote: bid_px {ev.bid_px!r} > ask_px {ev.ask_px!r}"
    if max_skew_ns is not None and abs(ev.ts_ns - recv_ns) > max_skew_ns:
        return f"exchange time off by {(ev.ts_ns - recv_ns) / 1e9:+.3f} s from receive time (limit {max_skew_ns / 1e9:g} s)"
    return None


def validate(
    events: Iterable[Event], recv_ns: int, max_skew_ns: int | None
) -> tuple[list[Event], list[tuple[Event, str]]]:
    """Splits events into good ones and rejected ones with the reason.

    Rejects a non-positive, NaN or infinite price or trade size, a negative quote size, a crossed
    quote (bid > ask; a locked quote, bid == ask, passes) and an exchange time farther than
    ``max_skew_ns`` from ``recv_ns``.

    Args:
        events: from one frame.
        recv_ns: the frame's local receive time.
        max_skew_ns: allowed |ts_ns - recv_ns|; None skips the check (historical files, whose
            receive time is not a real one).

    Returns:
        (good events in input order, [(event, reason), ...]).
    """
    good: list[Event] = []
    bad: list[tuple[Event, str]] = []
    for ev in events:
        # Fast path with chained comparisons: NaN fails every one, inf fails `< _INF`. The
        # detailed reason is worked out only for the rare rejected event.
        if type(ev) is Trade:
            _, ts_ns, px, qty, _, _ = ev
            ok = 0 < px < _INF and 0 < qty < _INF
        else:
            _, ts_ns, bid_px, bid_qty, ask_px, ask_qty = ev
            ok = 0 < bid_px <= ask_px < _INF and 0 <= bid_qty < _INF and 0 <= ask_qty < _INF
        if ok and (max_skew_ns is None or -max_skew_ns <= ts_ns - recv_ns <= max_skew_ns):
            good.append(ev)
        else:
            problem = _trade_problem if type(ev) is Trade else _quote_problem
            bad.append((ev, problem(ev, recv_ns, max_skew_ns) or "rejected"))
    return good, bad


def validate_columns(
    block: TradeColumns, recv_ns: int, max_skew_ns: int | None
) -> tuple[TradeColumns | None, list[tuple[Trade, str]]]:
    """:func:`validate` for a columnar block: the same rules and reasons, checked on whole arrays.

    Returns:
        (the good rows as a block, or None if none is good; [(rejected row as a Trade, reason),
        ...] in row order). An all-good block is returned as it is.
    """
    px, qty = block.px, block.qty
    # NaN fails every comparison, inf fails `< inf`: the same test as the per-event fast path.
    ok = (px > 0) & (px < _INF) & (qty > 0) & (qty < _INF)
    if max_skew_ns is not None:
        # Bounds clipped to int64 rather than a difference of int64 columns, which could wrap.
        ts_ns = block.ts_ns
        ok &= (ts_ns >= max(recv_ns - max_skew_ns, _I64_MIN)) & (ts_ns <= min(recv_ns + max_skew_ns, _I64_MAX))
    if ok.all():
        return block, []
    bad_rows = block.take(~ok).events()
    bad = [(ev, _trade_problem(ev, recv_ns, max_skew_ns) or "rejected") for ev in bad_rows]
    return (block.take(ok) if ok.any() else None), bad


def _validate_items(
    items: list[Event | TradeColumns], recv_ns: int, max_skew_ns: int | None
) -> tuple[list[Event | TradeColumns], list[tuple[Event, str]]]:
    """Validates a FrameEvents' items: blocks column-wise, single events one by one, order kept."""
    good: list[Event | TradeColumns] = []
    bad: list[tuple[Event, str]] = []
    for item in items:
        if type(item) is TradeColumns:
            ok_block, rejected = validate_columns(item, recv_ns, max_skew_ns)
            if ok_block is not None:
                good.append(ok_block)
            bad.extend(rejected)
        else:
            g, b = validate((item,), recv_ns, max_skew_ns)
            good.extend(g)
            bad.extend(b)
    return good, bad


class FrameResult(NamedTuple):
    """What one frame became: valid events, and dead letters for everything else.

    ``events`` is a list, or a :class:`~edge.events.FrameEvents` (columnar blocks) where the
    adapter returned one; both are sequences of events.
    """

    events: Sequence[Event]
    dead_letters: list[DeadLetter]


def process_frame(adapter: Adapter, raw: str | bytes, recv_ns: int, max_skew_ns: int | None) -> FrameResult:
    """Parses and validates one frame; never raises for bad input.

    A frame the adapter cannot normalize becomes one DeadLetter (reason: error class and
    message); each rejected event becomes one DeadLetter carrying the whole raw frame, the
    event's symbol, and the event itself in ``detail``. Control frames give nothing.
    """
    try:
        events = adapter.parse(raw, recv_ns)
    except ParseError as exc:
        return FrameResult([], [
            DeadLetter(stage=STAGE, venue=adapter.venue, reason=f"{type(exc).__name__}: {exc}",
                       raw=_as_bytes(raw), recv_ns=recv_ns),
        ])
    except Exception as exc:  # noqa: BLE001 - an adapter bug must not stop the collector loop
        return FrameResult([], [
            DeadLetter(stage=STAGE, venue=adapter.venue, reason=f"adapter failure {type(exc).__name__}: {exc}",
                       raw=_as_bytes(raw), recv_ns=recv_ns),
        ])
    if not events:
        return _tuple_new(FrameResult, (events, []))
    if events.__class__ is list and len(events) == 1:
        # One event per frame is the rule on WebSocket feeds: validate()'s fast test, inlined.
        ev = events[0]
        if ev.__class__ is Trade:
            _, ts_ns, px, qty, _, _ = ev
            ok = 0 < px < _INF and 0 < qty < _INF
        elif ev.__class__ is Quote:
            _, ts_ns, bid_px, bid_qty, ask_px, ask_qty = ev
            ok = 0 < bid_px <= ask_px < _INF and 0 <= bid_qty < _INF and 0 <= ask_qty < _INF
        else:
            ok = False
        if ok and (max_skew_ns is None or -max_skew_ns <= ts_ns - recv_ns <= max_skew_ns):
            return _tuple_new(FrameResult, (events, []))
    if type(events) is FrameEvents:
        good_items, bad = _validate_items(events.items, recv_ns, max_skew_ns)
        good = events if not bad else FrameEvents(good_items)
    else:
        good, bad = validate(events, recv_ns, max_skew_ns)
    if not bad:
        return _tuple_new(FrameResult, (good, []))
    raw_bytes = _as_bytes(raw)
    return FrameResult(good, [
        DeadLetter(stage=STAGE, venue=adapter.venue, reason=f"ValidationError: {reason}", raw=raw_bytes,
                   recv_ns=recv_ns, symbol=ev.symbol, detail=repr(ev))
        for ev, reason in bad
    ])


def _as_bytes(raw: str | bytes) -> bytes:
    return raw.encode() if isinstance(raw, str) else bytes(raw)
