"""The decision stage on real bars: signals consistent with their own arithmetic, the paper book
following them, degraded and versioned evidence, and a replay resumed from a snapshot equal to
an uninterrupted one."""

from __future__ import annotations

import hashlib
import math

import msgspec
import numpy as np
import pytest

from core.features.barfile import load_bars
from core.features.featureset import FeatureSet
from core.features.offline import compute
from core.alerts import AlertSettings, priority
from core.risk import RiskSettings
from core.schema import Codec, FeatureVector, Prediction, sig_id
from core.decision import RULE_FEATURES
from core.errors import SchemaError
from core._jspublish import header_block
from core.inference_worker import signal_message, signal_messages
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


def mixed_closes(vectors: list[FeatureVector], closes: int = 30, series: int = 48):
    """Bar closes of ``series`` series replaying the bars from their own offsets, with every kind
    of evidence: forecasts (some degraded, some with empty or missing outputs), anomaly flags,
    regimes, no predictions at all, several model versions; odd symbols (escaped in subjects),
    two venues and timeframes, unknown prices, features missing; and some calls holding vectors
    of two bar times. Yields (vectors, predictions) per call."""
    names = vectors[0].names
    atr, rsi = names.index("atr_14"), names.index("rsi_14")
    for t in range(closes):
        vecs, preds = [], []
        for k in range(series):
            v = vectors[300 + 13 * k + t]
            start_ns = 1_500_000_000_000_000_000 + 3_600_000_000_000 * (t + (k % 7 == 6 and t % 3 == 0))
            values = v.array().copy()
            close = v.close
            if (k + t) % 23 == 0:
                close = math.nan
            elif (k + t) % 29 == 0:
                values[atr] = math.nan
            elif (k + t) % 31 == 0:
                values[rsi] = math.nan
            symbol = (f"X{k}/USD", f"E{k}.U S*", f"\u00c4{k}-EUR", f"P{k}-USD-PERP")[k % 4]
            venue, tf = ("kraken", "binance")[k % 2], ("1h", "1m")[k // 2 % 2]
            vecs.append(FeatureVector(venue, symbol, tf, start_ns, names, values.tobytes(), v.digest, 0, close))
            r = values[names.index("logret_5")]
            p_up = 0.5 if math.isnan(r) else 0.5 + 0.3 * math.tanh(r * 500)
            m = (k * 7 + t * 3) % 12
            p: dict[str, Prediction] = {}
            if m:
                outputs = {"P_UP": [p_up, 0.4], "MEAN": [r / 5 if r == r else 0.0], "STD": [1e-3 * (1 + m)]}
                if m == 2:
                    outputs = {"P_UP": [], "MEAN": [0.2], "STD": [0.3]}
                elif m == 3:
                    outputs = {"MEAN": [0.2]}
                if m != 1:
                    p["forecast"] = Prediction("forecast", venue, symbol, tf, start_ns, m % 4, "production", outputs,
                                               degraded=m in (4, 9))
                if m in (1, 4, 5, 6, 7):
                    flag = {"FLAG": [float((k + t) % 3 == 0)]} if m != 7 else {"SCORE": [1.0]}
                    p["anomaly"] = Prediction("anomaly", venue, symbol, tf, start_ns, 3, "production", flag,
                                              degraded=m == 5)
                if m in (1, 5, 6, 8, 9):
                    label = {"LABEL": [float((k + t) % 4)]} if m != 9 else {"LABEL": [math.nan]}
                    p["regime"] = Prediction("regime", venue, symbol, tf, start_ns, 1, "canary", label)
            preds.append(p)
        yield vecs, preds


# sha256 of every payload of `mixed_closes`, then the stage's snapshot: the encoder writing
# payloads from the columns must give the bytes that `Codec.encode` made of the stage's Signal
# objects (commit 5a6f268). Changed once since, on purpose (session 6): Kelly's p is the chance of
# the take-profit first (expected_value, kelly_fraction, sizes and some exposure vetoes changed;
# decoded and compared field by field), and the engine snapshot carries the anomaly quantiles.
MIXED_DIGEST = "7cdde9bbfec5ce9e18ed980e30d0bab73767fe9f6f0737cc8a8af46829608fd3"


def test_payloads_are_the_bytes_codec_encode_makes_of_the_signals(vectors):
    stage = DecisionStage(vectors[0].names, risk=RiskSettings(max_exposure_fraction=0.3))
    codec, digest = Codec(), hashlib.sha256()
    for vecs, preds in mixed_closes(vectors):
        batch = stage.decide_batch(vecs, preds)
        signals = batch.signals()
        assert [codec.encode(s) for s in signals] == batch.payloads  # canonical: what msgspec writes
        assert [s.id for s in signals] == batch.ids == [sig_id(v.tf, v.venue, v.symbol, v.start_ns) for v in vecs]
        assert batch.keys == [(v.tf, v.venue, v.symbol) for v in vecs]
        assert [codec.encode(batch.signal(i)) for i in (0, len(batch) - 1)] == [batch.payloads[0], batch.payloads[-1]]
        for s, v, p in zip(signals, vecs, preds):  # fields read straight from the inputs
            assert (s.venue, s.symbol, s.tf, s.start_ns) == (v.venue, v.symbol, v.tf, v.start_ns)
            assert s.model_versions == {m: q.version for m, q in p.items()}
            assert s.degraded == any(q.degraded for q in p.values())
        for payload in batch.payloads:
            digest.update(payload)
    digest.update(stage.snapshot())
    assert digest.hexdigest() == MIXED_DIGEST


def test_alerting_rows_are_every_signal_an_alert_can_come_from(vectors):
    stage = DecisionStage(vectors[0].names)
    anyone = AlertSettings(min_priority="low")
    seen = 0
    for vecs, preds in mixed_closes(vectors, closes=12):
        batch = stage.decide_batch(vecs, preds)
        alerting = set(batch.alerting().tolist())
        for i, s in enumerate(batch.signals()):
            assert (priority(s, anyone) is not None) == (i in alerting)
        seen += len(alerting)
    assert seen  # some signals could alert


def test_signal_messages_are_what_signal_message_makes_of_each_signal(vectors):
    stage = DecisionStage(vectors[0].names)
    codec, subject_of = Codec(), {}
    v = vectors[400]
    odd = [msgspec.structs.replace(v, symbol=s) for s in ("A\r\nB", "C\tD ", "\u00c4\u2028")]  # ids to clean
    for vecs, preds in [*mixed_closes(vectors, closes=6), (odd, [{}] * len(odd))]:
        batch = stage.decide_batch(vecs, preds)
        expected = [signal_message(codec, s) for s in batch.signals()]
        assert [(m[0], m[1], m[2]) for m in signal_messages(batch, subject_of)] == [
            (subject, payload, header_block(headers)) for subject, payload, headers in expected]
    assert len(subject_of) == 48 + len(odd)  # one subject per series, escaped once
