"""The decision engine: each rule, the weighted vote, the documented weight update (hand-computed),
vetoes, calibration (and its file), and a replay of real bars that resumes from a snapshot identically."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from core.decision import (BUY, HOLD, SELL, SOURCES, VETO_REASONS, Calibration, CalibrationProvenance,
                           DecisionEngine, DecisionSettings)
from core.errors import ConfigError
from core.features.barfile import load_bars
from core.features.featureset import FeatureSet
from core.features.offline import compute
from tests.conftest import shared_file

NAMES = ["ema_12", "ema_26", "adx_14", "rsi_14", "bbands_20_2_2_0.upperband", "bbands_20_2_2_0.lowerband",
         "donchian_20.upper", "donchian_20.lower"]


def row(ema_12=101.0, ema_26=100.0, adx_14=30.0, rsi_14=60.0, upper=110.0, lower=90.0, dhi=115.0, dlo=85.0):
    return [ema_12, ema_26, adx_14, rsi_14, upper, lower, dhi, dlo]


def test_each_rule_by_hand():
    eng = DecisionEngine(NAMES)
    f = np.array([
        row(),                                       # up trend at half strength, RSI 60, inside bands
        row(ema_12=99.0, adx_14=50.0, rsi_14=20.0),  # strong down trend, RSI clipped to -1
        row(adx_14=15.0, rsi_14=50.0),               # no trend (ADX < 20), neutral RSI
        row(),                                       # below the lower band by 0.1 band widths
        row(),                                       # above the upper band and a new 20-bar high
    ])
    price = np.array([100.0, 100.0, 100.0, 88.0, 116.0])
    v = eng.votes(f, price)
    i = {s: SOURCES.index(s) for s in SOURCES}
    np.testing.assert_allclose(v[:, i["trend"]], [0.5, -1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(v[:, i["momentum"]], [0.5, -1.0, 0.0, 0.5, 0.5])
    # %b = (88 - 90) / 20 = -0.1 -> +0.4; (116 - 90) / 20 = 1.3 -> -min(4 * 0.3, 1) = -1
    np.testing.assert_allclose(v[:, i["mean_reversion"]], [0.0, 0.0, 0.0, 0.4, -1.0])
    np.testing.assert_allclose(v[:, i["breakout"]], [0.0, 0.0, 0.0, 0.0, 1.0])
    assert np.isnan(v[:, i["forecast"]]).all() and np.isnan(v[:, i["sentiment"]]).all()  # no model input given
    v2 = eng.votes(f[:1], price[:1], p_up=np.array([0.7]), sentiment=np.array([[0.1, 0.3, 0.6]]))
    assert v2[0, i["forecast"]] == pytest.approx(0.4) and v2[0, i["sentiment"]] == pytest.approx(0.5)


def test_vote_contributions_threshold_and_vetoes():
    eng = DecisionEngine(NAMES)
    f = np.array([row(), row(ema_12=99.0, adx_14=50.0, rsi_14=20.0), row(adx_14=15.0, rsi_14=52.0), row()])
    price = np.array([100.0, 100.0, 100.0, 100.0])
    d = eng.step(eng.grow(4), f, price, anomaly=np.array([False, False, False, True]), regime=np.array([0, 2, 1, 1]))
    # Row 0: votes trend .5, momentum .5, mean reversion 0, breakout 0, equal weights -> S = 1/4.
    assert d.score[0] == pytest.approx(0.25) and d.action[0] == BUY
    np.testing.assert_allclose(d.contributions[0].sum(), d.score[0])
    assert d.score[1] == pytest.approx(-0.5) and d.action[1] == SELL
    assert d.score[2] == pytest.approx(0.025) and d.action[2] == HOLD  # below the 0.15 threshold
    assert d.action[3] == HOLD and VETO_REASONS[d.veto[3]] == "anomaly"  # would have been BUY
    np.testing.assert_allclose(d.size_factor, [1.0, 0.5, 1.0, 1.0])
    assert not d.calibrated
    np.testing.assert_allclose(d.confidence, 50 + 50 * np.abs(d.score))
    nothing = eng.step(eng.grow(1), np.full((1, len(NAMES)), np.nan), np.array([100.0]))
    assert nothing.action[0] == HOLD and VETO_REASONS[nothing.veto[0]] == "no view"


def test_weight_update_by_hand():
    eng = DecisionEngine(NAMES)
    rows = eng.grow(3)
    votes = np.full((3, len(SOURCES)), np.nan)
    votes[:, 0] = [0.5, 0.2, -0.3]   # trend: up, up, down
    votes[:, 1] = [0.0, 0.0, 0.0]    # momentum: no direction, never scored
    eng.learn(rows, votes, np.array([0.01, -0.02, -0.01]))  # trend right, wrong, right
    np.testing.assert_allclose(eng.hit_rate[:, 0], [0.51, 0.49, 0.51])  # 0.5 + 0.02 (hit - 0.5)
    assert (eng.hit_rate[:, 1] == 0.5).all()
    np.testing.assert_allclose(eng.weights(rows)[:, 0], [1.04, 0.96, 1.04])
    eng.learn(rows[:1], votes[:1], np.array([0.02]))  # right again: 0.51 + 0.02 (1 - 0.51)
    assert eng.hit_rate[0, 0] == pytest.approx(0.5198)
    eng.hit_rate[0] = [1.0, 0.0, 0.6, 0.4, 0.5, 0.5]
    np.testing.assert_allclose(eng.weights(rows[:1])[0], [2.0, 0.25, 1.4, 0.6, 1.0, 1.0])  # bounded
    off = DecisionEngine(NAMES, DecisionSettings(base_weights={"breakout": 0.0}))
    assert np.isnan(off.votes(np.array([row()]), np.array([116.0]))[0, SOURCES.index("breakout")])
    with pytest.raises(ConfigError, match="unknown sources"):
        DecisionEngine(NAMES, DecisionSettings(base_weights={"astrology": 1.0}))


def test_step_scores_last_bars_votes_against_this_bars_price():
    eng = DecisionEngine(NAMES)
    rows = eng.grow(2)
    eng.step(rows, np.array([row(), row(ema_12=99.0)]), np.array([100.0, 100.0]))  # trend up / down
    eng.step(rows, np.array([row(), row()]), np.array([101.0, 101.0]))  # both rose: row 0 right, row 1 wrong
    np.testing.assert_allclose(eng.hit_rate[:, 0], [0.51, 0.49])
    np.testing.assert_allclose(eng.hit_rate[:, 1], [0.51, 0.51])  # momentum voted +0.5 on both


def test_feedback_moves_the_voters():
    eng = DecisionEngine(NAMES)
    r = int(eng.grow(1)[0])
    votes = np.array([0.5, -0.5, np.nan, 0.0, 0.2, np.nan])
    eng.feedback(r, votes, BUY, agreed=True)
    np.testing.assert_allclose(eng.hit_rate[r], [0.51, 0.49, 0.5, 0.5, 0.51, 0.5])
    eng.feedback(r, votes, BUY, agreed=False)  # dismissed: as if the market fell
    assert eng.hit_rate[r, 0] == pytest.approx(0.51 - 0.02 * 0.51)


def test_calibration_is_monotone_and_maps_strength():
    rng = np.random.default_rng(0)
    strength = rng.uniform(0, 1, 50_000)
    hit = rng.uniform(0, 1, 50_000) < 0.5 + 0.3 * strength  # truly stronger = more often right
    cal = Calibration.fit(strength, hit, bins=10)
    assert np.all(np.diff(cal.hit_rate) >= 0) and sum(cal.counts) == 50_000
    # The first and last bins centre on strength 0.05 and 0.95 (5,000 samples each: std 0.007).
    assert cal(np.array([0.05]))[0] == pytest.approx(0.515, abs=0.025)
    assert cal(np.array([0.95]))[0] == pytest.approx(0.785, abs=0.025)
    flat = Calibration.fit(np.linspace(0, 1, 100), np.r_[np.ones(50), np.zeros(50)], bins=4)  # decreasing data
    assert np.all(np.diff(flat.hit_rate) >= 0)  # pooled, never decreasing
    with pytest.raises(ConfigError, match="too few"):
        Calibration.fit(np.ones(5), np.ones(5))


@pytest.fixture(scope="module")
def eurusd():
    s = load_bars(shared_file("bars/eurusd_1h_2017-2018.csv"))[0]
    s.columns = {k: v[:1500] for k, v in s.columns.items()}
    fs = FeatureSet()
    return list(fs.names), compute([s], fs)[0], s.columns["close"]


def replay(engine: DecisionEngine, values: np.ndarray, close: np.ndarray, start: int, stop: int, row: np.ndarray):
    out = []
    for t in range(start, stop):
        d = engine.step(row, values[t:t + 1], close[t:t + 1])
        out.append((int(d.action[0]), float(d.score[0]) if np.isfinite(d.score[0]) else None))
    return out


def test_replay_of_real_bars_resumes_identically_from_a_snapshot(eurusd):
    names, values, close = eurusd
    whole = DecisionEngine(names)
    row_ = whole.grow(1)
    full = replay(whole, values, close, 0, len(close), row_)
    actions = [a for a, _ in full]
    assert actions.count(BUY) > 20 and actions.count(SELL) > 20 and actions.count(HOLD) > 20
    assert not np.allclose(whole.hit_rate, 0.5)  # it learned from the realized returns

    first = DecisionEngine(names)
    r = first.grow(1)
    part1 = replay(first, values, close, 0, 700, r)
    second = DecisionEngine(names)
    second.restore(first.snapshot())
    part2 = replay(second, values, close, 700, len(close), r)
    assert part1 + part2 == full
    np.testing.assert_array_equal(second.hit_rate, whole.hit_rate)


def test_many_rows_at_once_vote_as_each_alone(eurusd):
    names, values, close = eurusd
    eng = DecisionEngine(names)
    sel = np.arange(200, 1500, 7)
    together = eng.votes(values[sel], close[sel])
    alone = np.vstack([eng.votes(values[i:i + 1], close[i:i + 1]) for i in sel])
    np.testing.assert_array_equal(together, alone)


def test_calibration_file_round_trip_keeps_the_table_and_its_provenance(tmp_path):
    rng = np.random.default_rng(1)
    strength = rng.uniform(0.15, 1, 2_000)
    cal = Calibration.fit(strength, rng.uniform(0, 1, 2_000) < 0.4 + 0.3 * strength)
    cal = msgspec.structs.replace(cal, provenance=CalibrationProvenance(
        data="bars/eurusd_1h_2017-2018.csv", tf="1h", start_ns=1, end_ns=2, signals=2_000, holdout=0.5,
        fitted_at="2026-11-26T00:00:00+00:00", command="tickmesh backtest --fit-calibration cal.json"))
    path = tmp_path / "cal.json"
    cal.save(path)
    back = Calibration.load(path)
    assert back == cal
    np.testing.assert_array_equal(back(strength), cal(strength))  # floats survive JSON exactly
    assert Calibration.load(path).provenance.signals == 2_000


@pytest.mark.parametrize("text, match", [
    (None, "not found"),
    (b"{not json", "is not a calibration"),
    (b'{"edges": [0.1, 0.2]}', "is not a calibration"),  # required fields missing
    (b'{"edges": [0.1, 0.2, 0.3], "hit_rate": [0.5], "counts": [10]}', "one hit rate"),  # ragged
    (b'{"edges": [0.2, 0.1], "hit_rate": [0.5], "counts": [10]}', "increasing edges"),
    (b'{"edges": [0.1, 0.2], "hit_rate": [1.5], "counts": [10]}', r"in \[0, 1\]"),
])
def test_a_bad_calibration_file_is_a_config_error_naming_it(tmp_path, text, match):
    path = tmp_path / "cal.json"
    if text is not None:
        path.write_bytes(text)
    with pytest.raises(ConfigError, match=match) as info:
        Calibration.load(path)
    assert str(path) in str(info.value)
