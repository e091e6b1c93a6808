"""The decision stage on real bars: signals consistent with their own arithmetic, the paper book
following them, degraded and versioned evidence, and a replay resumed from a snapshot equal to
an uninterrupted one."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from core.features.barfile import load_bars
from core.features.featureset import FeatureSet
from core.features.offline import compute
from core.risk import RiskSettings
from core.schema import FeatureVector, Prediction
from core.decision import RULE_FEATURES
from core.errors import SchemaError
from core.signals import DecisionStage
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def vectors() -> list[FeatureVector]:
    s = load_bars(shared_file("bars/eurusd_1h_2017-2018.csv"))[0]
    s.columns = {k: v[:1200] for k, v in s.columns.items()}
    fs = FeatureSet()
    values = compute([s], fs)[0]
    names = list(fs.names)
    return [FeatureVector("fx", "EUR-USD", "1h", int(t), names, row.tobytes(), fs.digest, 0, float(c))
            for t, row, c in zip(s.columns["ts_ns"], values, s.columns["close"])]


def forecast(v: FeatureVector, degraded: bool = False) -> dict[str, Prediction]:
    """A forecast leaning the way of the last 5-bar return (a stand-in for the model's answer)."""
    r = v.array()[v.names.index("logret_5")]
    p_up = 0.5 if math.isnan(r) else 0.5 + 0.3 * math.tanh(r * 500)
    return {"forecast": Prediction("forecast", v.venue, v.symbol, v.tf, v.start_ns, 0 if degraded else 2,
                                   "fallback" if degraded else "production",
                                   {"MEAN": [r / 5 if r == r else 0.0] * 3, "STD": [1e-3] * 3, "P_UP": [p_up] * 3},
                                   degraded=degraded)}


def run(stage: DecisionStage, vectors, start: int, stop: int):
    return [stage.decide([v], [forecast(v, degraded=(i % 97 == 0))])[0] for i, v in enumerate(vectors)
            if start <= i < stop]


def test_signals_are_consistent_and_the_paper_book_follows(vectors):
    risk = RiskSettings()
    stage = DecisionStage(vectors[0].names, risk=risk)
    signals = run(stage, vectors, 0, len(vectors))
    trades = [s for s in signals if s.qty != 0]
    assert {s.action for s in signals} == {"BUY", "SELL", "HOLD"} and len(trades) > 10
    for s in signals:
        assert 0 <= s.confidence <= 100 and s.id == f"sig.1h.fx.EUR-USD.{s.start_ns}"
        assert s.model_versions == {"forecast": 0 if s.degraded else 2}
        if s.qty:
            assert s.action in ("BUY", "SELL") and np.sign(s.qty) == (1 if s.action == "BUY" else -1)
            lo, hi = sorted((s.stop_loss, s.take_profit))
            assert lo < s.price < hi
            assert s.risk_reward == pytest.approx(abs(s.take_profit - s.price) / abs(s.price - s.stop_loss))
            assert 0 < s.position_fraction <= risk.max_position_fraction + 1e-12
            assert s.position_size == pytest.approx(s.qty * s.price)
            assert s.top_features and sum(s.contributions.values()) == pytest.approx(s.score)
        elif s.action != "HOLD":
            assert s.veto  # a view without a position says why
    assert any(s.degraded for s in signals) and not all(s.degraded for s in signals)
    # The top features are those the (up to) two strongest rules read, strongest first, with the
    # vector's values.
    by_id = {f"sig.1h.fx.EUR-USD.{v.start_ns}": dict(zip(v.names, v.array().tolist())) for v in vectors}
    for s in signals:
        rules = sorted((r for r in RULE_FEATURES if r in s.contributions), key=lambda r: -abs(s.contributions[r]))
        want = [f for r in rules[:2] for f in RULE_FEATURES[r]]
        assert list(s.top_features) == want
        assert [s.top_features[f] for f in want] == pytest.approx([by_id[s.id][f] for f in want], nan_ok=True)
    fills = stage.portfolio.fills
    assert len([f for f in fills if not f.id.startswith("exit.")]) == len(trades)
    assert all(f.source == "signal" for f in fills)
    assert stage.portfolio.snapshot()["equity"] != risk.equity_start  # marked to market along the way


def test_replay_resumed_from_a_snapshot_equals_the_uninterrupted_one(vectors):
    whole = run(DecisionStage(vectors[0].names), vectors, 0, len(vectors))
    first = DecisionStage(vectors[0].names)
    part1 = run(first, vectors, 0, 600)
    second = DecisionStage(vectors[0].names)
    second.restore(first.snapshot())
    part2 = run(second, vectors, 600, len(vectors))
    # Compared as encoded bytes: NaN fields (no stop while ATR warms up) are equal there.
    assert [msgspec.msgpack.encode(x) for x in part1 + part2] == [msgspec.msgpack.encode(x) for x in whole]


def test_stops_and_take_profits_close_positions_on_real_bars(vectors):
    stage = DecisionStage(vectors[0].names)
    signals = run(stage, vectors, 0, len(vectors))
    fills = {f.id: f for f in stage.portfolio.fills}
    exits = [f for f in fills.values() if f.id.startswith("exit.")]
    # Follow the book bar by bar with the rule written out: at each close, first a position whose
    # level the close crossed is closed whole at the close, then the signal trades; a signal whose
    # fill leaves the position on its side sets the levels, a close or a flip drops them.
    qty, stop, take = 0.0, math.nan, math.nan
    reasons = []
    for s in signals:
        crossed_stop = (qty > 0 and s.price <= stop) or (qty < 0 and s.price >= stop)
        crossed_take = (qty > 0 and s.price >= take) or (qty < 0 and s.price <= take)
        reason = "stop_loss" if crossed_stop else "take_profit"
        exit_fill = fills.get(f"exit.{reason}.{s.id}")
        assert (exit_fill is not None) == (crossed_stop or crossed_take), s.id
        if exit_fill is not None:
            assert (exit_fill.qty, exit_fill.px, exit_fill.ts_ns) == (-qty, s.price, s.start_ns)
            reasons.append(reason)
            qty, stop, take = 0.0, math.nan, math.nan
        if s.qty:
            before, qty = qty, qty + fills[s.id].qty
            if abs(qty) <= 1e-12 * abs(before):  # the portfolio's dust rule
                qty = 0.0
            if qty == 0 or np.sign(qty) != np.sign(before):
                stop = take = math.nan
            if qty and np.sign(qty) == np.sign(s.qty):
                stop, take = s.stop_loss, s.take_profit
    assert len(exits) == len(reasons) and {"stop_loss", "take_profit"} <= set(reasons)
    book = stage.portfolio.positions()[0]
    assert book["qty"] == pytest.approx(qty, abs=1e-9)
    assert (book["stop_px"], book["take_px"]) == ((None, None) if qty == 0 or math.isnan(stop) else (stop, take))


def test_exits_can_be_turned_off(vectors):
    stage = DecisionStage(vectors[0].names, risk=RiskSettings(exits=False))
    signals = run(stage, vectors, 0, len(vectors))
    fills = stage.portfolio.fills
    assert fills and len(fills) == sum(s.qty != 0 for s in signals)
    assert not any(f.id.startswith("exit.") for f in fills)
    assert all(p["stop_px"] is None for p in stage.portfolio.positions())


def test_vectors_of_another_layout_or_length_are_refused(vectors):
    stage = DecisionStage(vectors[0].names)
    v = vectors[200]
    with pytest.raises(SchemaError, match="feature layout differs"):
        stage.decide([msgspec.structs.replace(v, names=v.names[::-1])], [{}])
    with pytest.raises(SchemaError, match="value bytes"):
        stage.decide([msgspec.structs.replace(v, values=v.values[:-8])], [{}])
    same = msgspec.structs.replace(v, names=tuple(v.names))  # the same layout as a tuple is fine
    assert stage.decide([same], [{}])[0].id == f"sig.1h.fx.EUR-USD.{v.start_ns}"
