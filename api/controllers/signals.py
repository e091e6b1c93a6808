"""``GET /api/signals``: stored signals of one symbol, filtered as a trader asks for them;
``POST /api/signals/{id}/feedback``: a user's verdict on one; ``GET /api/signals/{id}/similar``:
how past signals like it did."""

from __future__ import annotations

import math
import time
from typing import Annotated, Literal

import msgspec
import numpy as np
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody, Parameter

from api.controllers._query import ERROR_RESPONSES, End, Limit, Start, Symbol
from api.models import FeedbackEntryOut, FeedbackOut, SignalOut, SimilarOut, SimilarSignalOut
from api.params import check_range, check_timeframe, parse_time_ns
from api.runtime import ApiRuntime
from core.signals import Feedback, feedback_key
from core.store import Store
from core.streams import STATE_BUCKET

__all__ = ["SignalsController", "FeedbackController", "SimilarController", "FeedbackIn"]

OptionalVenue = Annotated[str | None, Parameter(description="venue id, e.g. `kraken` (default: every venue)")]
OptionalTimeframe = Annotated[str | None, Parameter(description="bar timeframe, e.g. `5m` (default: every one)")]
MinConfidence = Annotated[float, Parameter(ge=0, le=100, description="least confidence, 0..100 (default 0)")]
MaxRisk = Annotated[float | None, Parameter(
    ge=0, le=100, description="largest loss at the stop-loss, percent of the price (`risk_pct`); signals "
                              "without a stop are left out (default: no limit)")]
Action = Annotated[Literal["BUY", "SELL", "HOLD"] | None, Parameter(description="only this action")]


class SignalsController(Controller):
    path = "/api/signals"
    tags = ["signals"]

    @get("/", summary="Signals of one symbol", responses=ERROR_RESPONSES)
    async def list_signals(self, store: NamedDependency[Store], symbol: Symbol, venue: OptionalVenue = None,
                           timeframe: OptionalTimeframe = None, min_confidence: MinConfidence = 0.0,
                           action: Action = None, start: Start = None, end: End = None,
                           limit: Limit = 100, max_risk: MaxRisk = None) -> list[SignalOut]:
        """Signals with ``confidence >= min_confidence`` (and ``risk_pct <= max_risk`` when given)
        for bars with ``start <= start_ns < end``, ascending; the latest ``limit``. Each carries its evidence: expected return and uncertainty,
        risk-reward, expected value, Kelly fraction and position size, stop-loss and take-profit,
        each source's contribution, the top features, model versions and ``degraded``.
        """
        tf = check_timeframe("timeframe", timeframe) if timeframe else None
        start_ns, end_ns = parse_time_ns("start", start), parse_time_ns("end", end)
        check_range(start_ns, end_ns)
        rows = await store.run(store.signals, symbol, venue, tf, min_confidence, action, start_ns, end_ns, limit,
                               max_risk)
        return [SignalOut.from_row(r) for r in rows]


class FeedbackIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A verdict on a signal: ``executed`` (you acted on it), ``dismissed`` (you did not agree) or
    ``note`` (a remark only; the weights do not move)."""

    kind: Literal["executed", "dismissed", "note"]
    note: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class FeedbackController(Controller):
    path = "/api/signals/{signal_id:str}/feedback"
    tags = ["signals"]

    @post("/", summary="Feedback on a signal", status_code=201, responses=ERROR_RESPONSES)
    async def give(self, store: NamedDependency[Store], runtime: NamedDependency[ApiRuntime],
                   signal_id: FromPath[str], data: JSONBody[FeedbackIn]) -> FeedbackOut:
        """Stores the verdict (the audit trail) and hands it to the inference workers, which move
        the hit rates of the sources that voted for the signal on its series (executed: as if the
        market had agreed; dismissed: as if it had not). 404 for an unknown signal id.
        """
        row = await store.run(store.signal, signal_id)
        if row is None:
            raise NotFoundException(f"no signal {signal_id!r}")
        fb = Feedback(id=signal_id, venue=row["venue"], symbol=row["symbol"], tf=row["tf"], action=row["action"],
                      kind=data.kind, note=data.note, contributions=dict(row["contributions"]),
                      received_ns=time.time_ns())
        await store.run(store.insert_feedback, [fb])
        kv = await runtime.js.key_value(STATE_BUCKET)
        await kv.put(feedback_key(signal_id), msgspec.json.encode(fb))
        return FeedbackOut(id=fb.id, kind=fb.kind, note=fb.note, received_ns=fb.received_ns,
                           history=[FeedbackEntryOut(r["kind"], r["note"], r["received_ns"])
                                    for r in await store.run(store.feedback, signal_id)])


class SimilarController(Controller):
    path = "/api/signals/{signal_id:str}/similar"
    tags = ["signals"]

    @get("/", summary="How past signals like this one did", responses=ERROR_RESPONSES)
    async def similar(self, store: NamedDependency[Store], signal_id: FromPath[str],
                      horizon: Annotated[int, Parameter(ge=1, le=1000, description="bars ahead (default 1)")] = 1,
                      limit: Annotated[int, Parameter(ge=1, le=1000, description="most similar signals")] = 50,
                      ) -> SimilarOut:
        """Earlier signals of the same venue, symbol, timeframe and action, nearest in vote score,
        each with its outcome: the log return from its price to the close ``horizon`` bars later
        (null when that bar is not stored). ``hit_rate``: share of outcomes in the action's
        direction. 404 for an unknown signal id.
        """
        got = await store.run(store.similar_signals, signal_id, horizon, limit)
        if got is None:
            raise NotFoundException(f"no signal {signal_id!r}")
        this, rows = got
        sign = {"BUY": 1.0, "SELL": -1.0}.get(this["action"], 0.0)
        outcomes = np.array([r["outcome"] for r in rows], dtype=np.float64)
        known = outcomes[np.isfinite(outcomes)]
        return SimilarOut(
            id=signal_id, action=this["action"], score=this["score"], horizon_bars=horizon, count=len(rows),
            with_outcome=int(known.size),
            hit_rate=float((np.sign(known) == sign).mean()) if known.size and sign else None,
            mean_return=float(known.mean()) if known.size else None,
            median_return=float(np.median(known)) if known.size else None,
            similar=[SimilarSignalOut(r["id"], r["start_ns"], r["score"], r["confidence"], bool(r["degraded"]),
                                      None if math.isnan(r["outcome"]) else r["outcome"]) for r in rows])
