"""Risk rules against hand-computed cases, and the vectorized path against row-by-row calls."""

from __future__ import annotations

import math
import statistics

import msgspec
import numpy as np
import pytest

from core.errors import ValidationError
from core.risk import (ATR_TO_STD, VETO_NAMES, RiskSettings, Veto, _normal_ppf, bar_std, drawdown_factor,
                       expected_value, kelly, p_take_profit_first, risk_reward, size, stops)

EQUITY = 100_000.0
S = RiskSettings()


def one(action, confidence, price, atr, *, settings=S, equity=EQUITY, drawdown=0.0, daily_loss=0.0,
        exposure=0.0, position=0.0, sigma=None):
    """Sizes a single row with stops from ATR; returns a dict of Python scalars."""
    action = np.array([action], np.int8)
    stop, tp = stops(action, np.array([price]), np.array([atr]), settings)
    z = size(action, [confidence], [price], stop, tp, equity, drawdown, daily_loss, exposure, [position], settings,
             bar_std=None if sigma is None else [sigma])
    return {name: getattr(z, name)[0].item() for name in z._fields}


def p_win_by_hand(p: float, reward: float, risk: float, sigma: float) -> float:
    """The take-profit-first probability straight from its closed form, in plain floats: drift
    ``sigma * Phi^-1(p)`` (stdlib quantile), ``nu = 2 drift / sigma^2``."""
    nu = 2.0 * statistics.NormalDist().inv_cdf(p) / sigma
    if nu == 0.0:
        return risk / (reward + risk)
    return (1.0 - math.exp(nu * risk)) / (math.exp(-nu * reward) - math.exp(nu * risk))


# --- settings --------------------------------------------------------------------------------
def test_settings_defaults_and_constraints():
    assert (S.equity_start, S.max_position_fraction, S.max_exposure_fraction) == (100_000.0, 0.10, 0.50)
    assert (S.max_drawdown, S.downsize_drawdown, S.daily_loss_limit) == (0.20, 0.10, 0.05)
    assert (S.stop_atr, S.take_profit_atr, S.min_risk_reward) == (2.0, 3.0, 1.5)
    assert (S.kelly_fraction, S.min_confidence, S.max_risk_fraction) == (0.5, 0.0, 0.02)
    # Parsed the way config sections are: constraints and unknown fields are enforced.
    assert msgspec.convert({"kelly_fraction": 0.25}, RiskSettings).kelly_fraction == 0.25
    for bad in ({"max_drawdown": 1.5}, {"min_confidence": 101}, {"stop_atr": 0}, {"kelly_fraction": 0},
                {"typo": 1}, {"downsize_drawdown": 0.3}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, RiskSettings)
    with pytest.raises(AttributeError):
        S.stop_atr = 1.0  # frozen


# --- arithmetic ------------------------------------------------------------------------------
def test_kelly_and_expected_value_by_hand():
    # p = 0.6, b = 1.5: Kelly = 0.6 - 0.4/1.5 = 0.3333; EV = 0.6*1.5 - 0.4 = 0.5.
    assert kelly(0.6, 1.5) == pytest.approx(1 / 3)
    assert expected_value(0.6, 1.5) == pytest.approx(0.5)
    # p = 0.4, b = 2: Kelly = 0.4 - 0.6/2 = 0.1; EV = 0.8 - 0.6 = 0.2.
    assert kelly(0.4, 2.0) == pytest.approx(0.1)
    assert expected_value(0.4, 2.0) == pytest.approx(0.2)
    # Coin flip at even money: no edge. p = 0.3, b = 1.5: 0.3 - 0.7/1.5 = -0.1667 (negative).
    assert kelly(0.5, 1.0) == 0.0 and expected_value(0.5, 1.0) == 0.0
    assert kelly(0.3, 1.5) == pytest.approx(-1 / 6)
    assert kelly(0.5, 0.0) == -np.inf
    np.testing.assert_allclose(kelly(np.array([0.6, 0.4]), np.array([1.5, 2.0])), [1 / 3, 0.1])


def test_risk_reward_by_hand():
    # BUY 100, stop 98, target 103: reward 3 / risk 2 = 1.5; SELL 50, stop 51, target 48.5: 1.5 / 1.
    np.testing.assert_allclose(risk_reward([100.0, 50.0], [98.0, 51.0], [103.0, 48.5]), [1.5, 1.5])
    # Target at the price: no reward (0), which is defined.
    assert risk_reward(100.0, 98.0, 100.0) == 0.0
    # Stop at the price, stop and target on the same side, NaN input: undefined.
    assert np.isnan(risk_reward([100.0, 100.0, 100.0, np.nan], [100.0, 98.0, 98.0, 98.0],
                                [103.0, 99.0, np.nan, 103.0])).all()


def test_stops_buy_sell_hold_and_bad_atr():
    action = np.array([1, -1, 0, 1, 1, 1, 1], np.int8)
    price = np.array([100.0, 50.0, 10.0, 100.0, 100.0, 100.0, np.nan])
    atr = np.array([1.0, 0.5, 0.1, np.nan, 0.0, -1.0, 1.0])
    stop, tp = stops(action, price, atr, S)
    # BUY: 100 - 2*1 = 98, 100 + 3*1 = 103. SELL: 50 + 2*0.5 = 51, 50 - 3*0.5 = 48.5.
    np.testing.assert_array_equal(stop[:2], [98.0, 51.0])
    np.testing.assert_array_equal(tp[:2], [103.0, 48.5])
    # HOLD, NaN ATR, zero ATR, negative ATR, NaN price: no stops.
    assert np.isnan(stop[2:]).all() and np.isnan(tp[2:]).all()


def test_drawdown_factor():
    # Linear from 1 at 0.10 to 0 at 0.20: 0.15 is half way.
    assert drawdown_factor(0.15, S) == pytest.approx(0.5)
    assert drawdown_factor(0.12, S) == pytest.approx(0.8)
    assert drawdown_factor(0.0, S) == drawdown_factor(0.10, S) == 1.0
    assert drawdown_factor(0.20, S) == drawdown_factor(0.5, S) == drawdown_factor(np.nan, S) == 0.0
    step = RiskSettings(downsize_drawdown=0.2, max_drawdown=0.2)  # no ramp: full size, then nothing
    assert drawdown_factor(0.19, step) == 1.0 and drawdown_factor(0.2, step) == 0.0


# --- the take-profit-first model --------------------------------------------------------------
def test_normal_ppf_matches_the_standard_library():
    p = np.concatenate([[1e-300, 1e-20, 1e-9, 0.001, 0.0249, 0.0251, 0.075, 0.074, 0.3, 0.47, 0.5, 0.52,
                         0.925, 0.926, 0.9999, 1 - 1e-12], np.linspace(0.0005, 0.9995, 1999)])
    ref = np.array([statistics.NormalDist().inv_cdf(x) for x in p])
    np.testing.assert_allclose(_normal_ppf(p), ref, rtol=1e-14, atol=1e-15)
    assert _normal_ppf(0.5) == 0.0  # exactly: no drift at p = 0.5
    np.testing.assert_array_equal(_normal_ppf([0.0, 1.0]), [-np.inf, np.inf])
    assert np.isnan(_normal_ppf([-0.1, 1.1, np.nan])).all()


def test_p_take_profit_first_without_drift_is_risk_over_span():
    # X a martingale: P * reward = (1 - P) * risk, so P = risk / (reward + risk), for any vol.
    np.testing.assert_allclose(p_take_profit_first([3.0, 1.0, 3.0, 10.0], [2.0, 1.0, 1.0, 0.5], 0.0,
                                                   [0.6, 1.0, 5.0, 0.01]),
                               [0.4, 0.5, 0.25, 0.5 / 10.5], rtol=1e-15)
    assert p_take_profit_first(3.0, 2.0, 0.0, 0.6) == 0.4  # exactly, so Kelly at b = 1.5 is ~0
    # Continuous through 0 from both sides: no 0/0, no cancellation for tiny drifts.
    for drift in (1e-300, -1e-300, 1e-12, -1e-12, 1e-7, -1e-7):
        # First order: 0.4 * (1 + nu * 3 / 2), nu = 2 drift / 0.36.
        expected = 0.4 * (1 + 3.0 * drift / 0.36)
        assert p_take_profit_first(3.0, 2.0, drift, 0.6) == pytest.approx(expected, rel=1e-13, abs=0)


def test_p_take_profit_first_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50

    def exact(a, c, mu, sigma):  # the closed form as written, at 50 digits
        nu = 2 * mpmath.mpf(mu) / mpmath.mpf(sigma) ** 2
        return float((1 - mpmath.exp(nu * c)) / (mpmath.exp(-nu * a) - mpmath.exp(nu * c)))

    cases = [(3.0, 2.0, 0.2, 1.0), (3.0, 2.0, -0.2, 1.0), (3.0, 2.0, 0.05, 0.6267), (1.0, 4.0, 0.7, 0.5),
             (4.0, 1.0, -0.7, 0.5), (3.0, 2.0, 1e-6, 1.0), (3.0, 2.0, -1e-6, 1.0), (0.03, 0.02, 1e-4, 0.005),
             # |nu (a + c)| of about 80, 400 and 4000: exp overflows or loses everything in the raw form.
             (3.0, 2.0, 8.0, 1.0), (3.0, 2.0, -8.0, 1.0), (30.0, 20.0, 4.0, 1.0), (30.0, 20.0, -4.0, 1.0),
             (300.0, 200.0, -4.0, 1.0)]
    a, c, mu, sigma = (np.array(x) for x in zip(*cases))
    got = p_take_profit_first(a, c, mu, sigma)
    want = np.array([exact(*x) for x in cases])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
    assert got[0] == pytest.approx(0.636861, abs=1e-6)  # expm1(-0.8) / expm1(-2.0) = -0.550671 / -0.864665


def test_p_take_profit_first_against_monte_carlo():
    # Brownian motion with drift, stepped at dt = 0.02, with the Brownian-bridge probability of a
    # level crossed between two steps, so the exit is exact in distribution. 20_000 paths: a standard
    # error of 0.0035; a factor 2 missing from nu (0.52 instead of 0.64) or a flipped sign fails.
    rng = np.random.default_rng(7)
    a, c, sigma, dt = 3.0, 2.0, 1.0, 0.02
    for mu in (0.2, -0.15):
        x = np.zeros(20_000)
        top = np.zeros(x.size, bool)
        alive = np.ones(x.size, bool)
        while alive.any():
            i = np.flatnonzero(alive)
            y = x[i] + mu * dt + sigma * np.sqrt(dt) * rng.standard_normal(i.size)
            u = rng.random(i.size)
            v = sigma * sigma * dt
            hit_top = (y >= a) | (u < np.exp(-2 * np.maximum(a - x[i], 0) * np.maximum(a - y, 0) / v))
            hit_bottom = ~hit_top & ((y <= -c) | (rng.random(i.size) < np.exp(-2 * np.maximum(x[i] + c, 0)
                                                                                * np.maximum(y + c, 0) / v)))
            top[i[hit_top]] = True
            alive[i[hit_top | hit_bottom]] = False
            x[i] = y
        p = float(p_take_profit_first(a, c, mu, sigma))
        assert top.mean() == pytest.approx(p, abs=0.012), mu
    # The driftless value, as a sanity anchor of the simulation itself.
    assert p_take_profit_first(a, c, 0.0, sigma) == 0.4


def test_p_take_profit_first_vectorized_equals_scalar():
    rng = np.random.default_rng(11)
    n = 2_000
    a, c = rng.uniform(0.01, 10, n), rng.uniform(0.01, 10, n)
    sigma = rng.uniform(0.05, 5, n)
    mu = rng.normal(0, 1, n) * sigma * rng.choice([1e-9, 0.01, 0.3, 1.0], n)
    mu[:20] = 0.0
    got = p_take_profit_first(a, c, mu, sigma)

    def scalar(a, c, mu, sigma):  # the textbook form, used where it does not overflow
        nu = 2 * mu / sigma ** 2
        if abs(nu * (a + c)) < 1e-6:
            return c / (a + c) * (1 + nu * a / 2)
        return (1 - math.exp(nu * c)) / (math.exp(-nu * a) - math.exp(nu * c))

    want = np.array([scalar(*x) for x in zip(a, c, mu, sigma)])
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # Any shape: one row at a time gives the same.
    np.testing.assert_array_equal([p_take_profit_first(*x) for x in zip(a[:50], c[:50], mu[:50], sigma[:50])],
                                  got[:50])


def test_p_take_profit_first_limits_and_bad_inputs():
    assert p_take_profit_first(3.0, 2.0, np.inf, 1.0) == 1.0 and p_take_profit_first(3.0, 2.0, -np.inf, 1.0) == 0.0
    assert p_take_profit_first(3.0, 2.0, 1e6, 1.0) == 1.0 and p_take_profit_first(3.0, 2.0, -1e6, 1.0) == 0.0
    assert p_take_profit_first(0.0, 2.0, -np.inf, 1.0) == 1.0  # at the target already
    assert p_take_profit_first(3.0, 2.0, 0.3, 1.0) > 0.4 > p_take_profit_first(3.0, 2.0, -0.3, 1.0)
    bad = p_take_profit_first([np.nan, 3.0, 3.0, 3.0, -1.0, 3.0, np.inf], [2.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0],
                              [0.1, 0.1, 0.1, np.nan, 0.1, 0.1, 0.1], [1.0, 1.0, 0.0, 1.0, 1.0, np.inf, 1.0])
    assert np.isnan(bad).all()


def test_kelly_is_zero_without_edge_for_any_levels_and_sigma():
    # Confidence 50 %: no drift, p_win = c / (a + c) = 1 / (1 + b), Kelly 0 -> no position, BUY or SELL,
    # whatever the ATR multiples and sigma. Below 50 %, Kelly is negative.
    for stop_atr, take_atr in ((2.0, 3.0), (1.0, 1.5), (2.0, 5.0), (1.5, 4.5)):
        s = RiskSettings(stop_atr=stop_atr, take_profit_atr=take_atr)
        for action in (1, -1):
            for sigma in (None, 0.3, 2.0):
                z = one(action, 50.0, 100.1, 0.7, settings=s, sigma=sigma)
                assert abs(z["kelly"]) < 1e-12 and abs(z["expected_value"]) < 1e-12
                assert z["veto"] == Veto.NON_POSITIVE_KELLY and z["notional"] == 0.0
                z = one(action, 49.0, 100.1, 0.7, settings=s, sigma=sigma)
                assert z["kelly"] < 0 and z["veto"] == Veto.NON_POSITIVE_KELLY
    # The old rule (p_win = confidence) sized a calibrated 47 % signal at b = 1.5: Kelly 0.47 - 0.53/1.5 = 0.117.
    assert kelly(0.47, 1.5) > 0
    assert one(1, 47.0, 100.0, 1.0)["kelly"] == pytest.approx(kelly(0.265421073231, 1.5))


def test_size_p_win_matches_the_closed_form():
    # size() reads p_win from the model: Kelly and EV agree with the closed form by hand, BUY and SELL.
    for action in (1, -1):
        for conf in (45.0, 55.0, 70.0, 90.0):
            for sigma in (None, 0.4, 1.7):
                pw = p_win_by_hand(conf / 100, 3.0, 2.0, ATR_TO_STD if sigma is None else sigma)
                z = one(action, conf, 100.0, 1.0, sigma=sigma)
                assert z["kelly"] == pytest.approx(kelly(pw, 1.5), rel=1e-9, abs=1e-12)
                assert z["expected_value"] == pytest.approx(expected_value(pw, 1.5), rel=1e-9, abs=1e-12)


def test_bar_std_takes_the_largest_usable_estimate():
    assert ATR_TO_STD == pytest.approx(math.sqrt(math.pi / 8))
    price = np.array([100.0, 100.0, 100.0, 100.0, 100.0])
    atr = np.array([1.0, np.nan, 1.0, 1.0, np.nan])
    forecast = np.array([0.001, 0.02, np.nan, 0.0, np.nan])
    realized = np.array([0.002, 0.001, 0.03, -1.0, np.nan])
    # Row 0: max(0.6267, 0.1, 0.2); 1: ATR NaN -> max(2, 0.1); 2: forecast NaN -> 3; 3: 0 and < 0 left out.
    np.testing.assert_allclose(bar_std(price, atr, forecast, realized)[:4], [ATR_TO_STD, 2.0, 3.0, ATR_TO_STD])
    assert np.isnan(bar_std(price, atr, forecast, realized)[4])
    np.testing.assert_allclose(bar_std(price, 2.0), np.full(5, 2 * ATR_TO_STD))
    assert bar_std(100.0, 2.0) == pytest.approx(2 * ATR_TO_STD)


# --- sizing by hand --------------------------------------------------------------------------
def test_size_kelly_capped_by_position_fraction():
    # BUY @100, ATR 1: stop 98, target 103, b = 1.5. sigma = sqrt(pi/8) * 1 = 0.626657 (no bar_std).
    # p = 0.6: Phi^-1 = 0.253347, nu = 2 * 0.253347 / 0.626657 = 0.808567,
    # p_win = (1 - e^(2 nu)) / (e^(-3 nu) - e^(2 nu)) = 0.815850; Kelly = 0.815850 - 0.184150/1.5 =
    # 0.693083, half 0.346541, capped at 0.10 (risk cap 0.02 / (2/100) = 1.0 does not bind) ->
    # 10_000 notional, 100 units. EV = 1.5 * 0.815850 - 0.184150 = 1.039624.
    z = one(1, 60.0, 100.0, 1.0)
    assert z["fraction"] == pytest.approx(0.10)
    assert z["notional"] == pytest.approx(10_000.0) and z["qty"] == pytest.approx(100.0)
    assert z["kelly"] == pytest.approx(0.693082575277) and z["risk_reward"] == pytest.approx(1.5)
    assert z["expected_value"] == pytest.approx(1.039623862920)
    assert z["veto"] == Veto.NONE and not z["downsized"]


def test_size_half_kelly_below_cap():
    # p = 0.52: Phi^-1 = 0.0501536, nu = 0.160067, p_win = 0.497345; Kelly = 0.497345 - 0.502655/1.5
    # = 0.162242; half = 0.081121 < 0.10. Notional 8_112.08, qty 81.12 @100; EV = 0.243362.
    z = one(1, 52.0, 100.0, 1.0)
    assert z["kelly"] == pytest.approx(0.162241516329)
    assert z["fraction"] == pytest.approx(0.0811207581645)
    assert z["notional"] == pytest.approx(8_112.07581645) and z["qty"] == pytest.approx(81.1207581645)
    assert z["expected_value"] == pytest.approx(0.243362274493)


def test_size_with_bar_std_from_a_forecast():
    # The same BUY with sigma 1.0 (a forecast's 1-bar std of 1 % at 100) instead of ATR's 0.6267:
    # nu = 2 * 0.253347 / 1 = 0.506694, p_win = (1 - e^(2 nu)) / (e^(-3 nu) - e^(2 nu)) = 0.691941,
    # Kelly 0.691941 - 0.308059/1.5 = 0.486569: a wider sigma, a smaller edge per level.
    z = one(1, 60.0, 100.0, 1.0, sigma=1.0)
    assert z["kelly"] == pytest.approx(0.486569073658)
    assert z["kelly"] == pytest.approx(kelly(p_win_by_hand(0.6, 3.0, 2.0, 1.0), 1.5))
    # An unusable bar_std (NaN, 0, negative) falls back to ATR's sigma.
    for bad in (np.nan, 0.0, -1.0):
        assert one(1, 60.0, 100.0, 1.0, sigma=bad)["kelly"] == pytest.approx(0.693082575277)


def test_size_capped_by_max_risk():
    # Stop 2% away; max_risk_fraction 0.001 allows 0.001 / 0.02 = 0.05 of equity, below the 0.10
    # cap: a stop-out then loses 5_000 * 2% = 100 = 0.1% of equity.
    s = RiskSettings(max_risk_fraction=0.001)
    z = one(1, 60.0, 100.0, 1.0, settings=s)
    assert z["fraction"] == pytest.approx(0.05) and z["notional"] == pytest.approx(5_000.0)
    assert z["notional"] * 0.02 == pytest.approx(0.001 * EQUITY)
    # A wide stop binds the default 2% too: ATR 12 -> stop 76, 24% away -> 0.02 / 0.24 = 0.08333.
    z = one(1, 60.0, 100.0, 12.0)
    assert z["fraction"] == pytest.approx(0.02 / 0.24)


def test_size_sell_mirrors_buy():
    # SELL @100, ATR 1: stop 102, target 97; same b, Kelly and fraction as the BUY, negative size.
    buy, sell = one(1, 60.0, 100.0, 1.0), one(-1, 60.0, 100.0, 1.0)
    assert sell["fraction"] == buy["fraction"]
    assert sell["notional"] == -buy["notional"] and sell["qty"] == -buy["qty"]
    assert sell["risk_reward"] == buy["risk_reward"] and sell["kelly"] == buy["kelly"]


def test_risk_reward_rounding_does_not_veto():
    # 100.1 + 3*0.7 - 100.1 over 100.1 - (100.1 - 2*0.7) is 1.4999999999999898 in floats.
    z = one(1, 60.0, 100.1, 0.7)
    assert z["risk_reward"] < 1.5
    assert z["veto"] == Veto.NONE


def test_every_veto():
    assert one(0, 90.0, 100.0, 1.0)["veto"] == Veto.HOLD
    assert one(1, 90.0, 100.0, np.nan)["veto"] == Veto.INVALID_INPUT  # ATR not warmed up
    assert one(1, 101.0, 100.0, 1.0)["veto"] == Veto.INVALID_INPUT  # confidence out of range
    assert one(1, np.nan, 100.0, 1.0)["veto"] == Veto.INVALID_INPUT
    assert one(1, 60.0, 100.0, 1.0, position=np.nan)["veto"] == Veto.INVALID_INPUT
    assert one(1, 60.0, 100.0, 1.0, settings=RiskSettings(min_confidence=70))["veto"] == Veto.LOW_CONFIDENCE
    # Target 2 ATR, stop 2 ATR: b = 1 < 1.5.
    assert one(1, 90.0, 100.0, 1.0, settings=RiskSettings(take_profit_atr=2.0))["veto"] == Veto.LOW_RISK_REWARD
    # p = 0.5: no drift, p_win = 2 / (3 + 2) = 0.4 and Kelly = 0.4 - 0.6/1.5 = 0 (no edge); below: negative.
    assert one(1, 50.0, 100.0, 1.0)["veto"] == Veto.NON_POSITIVE_KELLY
    assert one(1, 47.0, 100.0, 1.0)["veto"] == Veto.NON_POSITIVE_KELLY
    assert one(1, 30.0, 100.0, 1.0)["veto"] == Veto.NON_POSITIVE_KELLY
    # Drawdown of exactly 20%, as a portfolio computes it (1 - 0.8 = 0.19999999999999996).
    assert one(1, 60.0, 100.0, 1.0, drawdown=1 - 80_000 / 100_000)["veto"] == Veto.MAX_DRAWDOWN
    assert one(1, 60.0, 100.0, 1.0, drawdown=np.nan)["veto"] == Veto.MAX_DRAWDOWN
    assert one(1, 60.0, 100.0, 1.0, equity=0.0)["veto"] == Veto.MAX_DRAWDOWN
    assert one(1, 60.0, 100.0, 1.0, daily_loss=0.05)["veto"] == Veto.DAILY_LOSS
    # Long 10_000 already = 10% of equity: no room left in this symbol.
    assert one(1, 60.0, 100.0, 1.0, position=10_000.0)["veto"] == Veto.POSITION_LIMIT
    # Gross exposure already 50% of equity.
    assert one(1, 60.0, 100.0, 1.0, exposure=50_000.0)["veto"] == Veto.EXPOSURE_LIMIT
    assert one(1, 60.0, 100.0, 1.0, exposure=np.nan)["veto"] == Veto.EXPOSURE_LIMIT
    for veto in Veto:
        assert VETO_NAMES[veto] == veto.name.lower()


def test_veto_precedence_and_zero_size():
    # Low confidence and max drawdown both apply: the earlier rule names the veto.
    z = one(1, 60.0, 100.0, 1.0, settings=RiskSettings(min_confidence=70), drawdown=0.5)
    assert z["veto"] == Veto.LOW_CONFIDENCE
    assert z["fraction"] == z["notional"] == z["qty"] == 0.0 and not z["downsized"]
    # A vetoed SELL has a size of +0.0, not -0.0.
    assert not np.signbit(one(-1, 30.0, 100.0, 1.0)["notional"])


def test_downsize_at_drawdown():
    # Drawdown 0.15: factor (0.20 - 0.15) / (0.20 - 0.10) = 0.5 -> 0.10 * 0.5 = 0.05 -> 5_000.
    z = one(1, 60.0, 100.0, 1.0, drawdown=0.15)
    assert z["fraction"] == pytest.approx(0.05) and z["notional"] == pytest.approx(5_000.0)
    assert z["downsized"] and z["veto"] == Veto.NONE
    assert not one(1, 60.0, 100.0, 1.0, drawdown=0.10)["downsized"]


def test_position_limit_partial_and_reducing():
    # Long 6_000: |6_000 + order| <= 10_000 -> order cut from 10_000 to 4_000.
    z = one(1, 60.0, 100.0, 1.0, position=6_000.0)
    assert z["notional"] == pytest.approx(4_000.0) and z["downsized"]
    # SELL against a full long: |10_000 - 10_000| = 0, allowed in full.
    z = one(-1, 60.0, 100.0, 1.0, position=10_000.0, exposure=10_000.0)
    assert z["notional"] == pytest.approx(-10_000.0) and not z["downsized"]


def test_exposure_cap_partial_fill():
    # Exposure 46_000 of a 50_000 cap: 4_000 left, the 10_000 BUY is cut to 4_000.
    z = one(1, 60.0, 100.0, 1.0, exposure=46_000.0)
    assert z["notional"] == pytest.approx(4_000.0) and z["fraction"] == pytest.approx(0.04)
    assert z["downsized"] and z["veto"] == Veto.NONE
    # Cutting or flipping an opposite position adds no gross exposure: short 5_000 at a full cap,
    # a 10_000 BUY ends long 5_000 (gross unchanged) and passes in full.
    z = one(1, 60.0, 100.0, 1.0, exposure=50_000.0, position=-5_000.0)
    assert z["notional"] == pytest.approx(10_000.0) and not z["downsized"]
    # Short 2_000 at a full cap: 4_000 of the order only cuts/flips it, the other 6_000 would add.
    z = one(1, 60.0, 100.0, 1.0, exposure=50_000.0, position=-2_000.0)
    assert z["notional"] == pytest.approx(4_000.0) and z["downsized"]


def test_exposure_room_shared_by_expected_value():
    # Four BUYs of 10_000 each (all capped at 0.10), 25_000 of room. EV per unit risked (b = 1.5,
    # EV = 2.5 p_win - 1): p .70 (p_win .9650) -> 1.413, .65 (.9165) -> 1.291, .60 (.8158) -> 1.040,
    # .55 (.6374) -> 0.594. Best first: 10_000, 10_000, 5_000, vetoed.
    action = np.ones(4, np.int8)
    price = np.full(4, 100.0)
    stop, tp = stops(action, price, np.ones(4), S)
    z = size(action, [60.0, 70.0, 55.0, 65.0], price, stop, tp, EQUITY, 0.0, 0.0, 25_000.0, np.zeros(4), S)
    np.testing.assert_allclose(z.notional, [5_000.0, 10_000.0, 0.0, 10_000.0])
    np.testing.assert_array_equal(z.veto, [Veto.NONE, Veto.NONE, Veto.EXPOSURE_LIMIT, Veto.NONE])
    np.testing.assert_array_equal(z.downsized, [True, False, False, False])


def test_bad_inputs_raise():
    with pytest.raises(ValidationError):
        size([2], [60.0], [100.0], [98.0], [103.0], EQUITY, 0.0, 0.0, 0.0, [0.0], S)
    with pytest.raises(ValidationError):
        size([1, 1], [60.0, 60.0, 60.0], 100.0, 98.0, 103.0, EQUITY, 0.0, 0.0, 0.0, 0.0, S)
    assert size(np.zeros(0, np.int8), [], [], [], [], EQUITY, 0.0, 0.0, 0.0, [], S).fraction.shape == (0,)


# --- vectorized == row by row ----------------------------------------------------------------
def sequential(action, conf, price, stop, tp, equity, drawdown, daily_loss, exposure, position, s, sigma=None):
    """Sizes one row per call, best expected value first, each call seeing the gross exposure
    that the orders before it added; returns arrays in the original row order."""
    sigma = np.full(len(action), np.nan) if sigma is None else np.asarray(sigma, np.float64)

    def row(i, exposure):
        return size(action[i:i + 1], conf[i:i + 1], price[i:i + 1], stop[i:i + 1], tp[i:i + 1], equity,
                    drawdown, daily_loss, exposure, position[i:i + 1], s, bar_std=sigma[i:i + 1])

    # A row's expected value does not depend on the account: read it from a call of its own.
    ev = np.array([row(i, 0.0).expected_value[0] for i in range(len(action))])
    out = {}
    for i in np.argsort(np.where(np.isnan(ev), np.inf, -ev), kind="stable"):
        z = row(i, exposure)
        exposure += max(0.0, abs(position[i] + z.notional[0]) - abs(position[i]))
        out[i] = z
    return {name: np.array([getattr(out[i], name)[0] for i in range(len(action))]) for name in out[0]._fields}


def assert_same(z, rows):
    for name in ("fraction", "notional", "qty", "kelly", "risk_reward", "expected_value"):
        np.testing.assert_allclose(getattr(z, name), rows[name], rtol=1e-12, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(z.veto, rows["veto"])
    np.testing.assert_array_equal(z.downsized, rows["downsized"])


def test_mixed_array_equals_row_by_row():
    s = RiskSettings(min_confidence=50.0)
    # row: expected veto / effect (drawdown 0.15 halves every size; 26_000 of exposure room)
    rows = [
        (1, 60.0, 100.0, 1.0, 0.0),       # 0 BUY, 0.10 * 0.5 = 5_000
        (-1, 60.0, 100.0, 1.0, 0.0),      # 1 SELL mirrored, -5_000
        (0, 90.0, 100.0, 1.0, 0.0),       # 2 HOLD
        (1, 90.0, 100.0, np.nan, 0.0),    # 3 NaN ATR -> invalid_input
        (1, 45.0, 100.0, 1.0, 0.0),       # 4 low_confidence (min 50)
        (1, 90.0, 100.0, 1.0, 0.0),       # 5 low_risk_reward (target replaced below)
        (1, 52.0, 100.0, 12.0, 0.0),      # 6 p .52: Kelly .16224, half .08112 (risk cap .08333 larger)
        (1, 55.0, 100.0, 1.0, 10_000.0),  # 7 position_limit
        (1, 60.0, 100.0, 1.0, 8_000.0),   # 8 position room 2_000 (< 5_000)
        (-1, 70.0, 100.0, 1.0, 3_000.0),  # 9 SELL against a long: 3_000 free, the rest adds
        (1, 56.0, 100.0, 1.0, 0.0),       # 10 lowest EV of the sized rows: exposure cut or veto
        (1, 58.0, 100.0, 1.0, 0.0),       # 11
        (1, 57.0, 100.0, 1.0, 0.0),       # 12
    ]
    action = np.array([r[0] for r in rows], np.int8)
    conf, price, atr, position = (np.array([r[k] for r in rows]) for k in (1, 2, 3, 4))
    stop, tp = stops(action, price, atr, s)
    tp[5] = price[5] + 1.0 * atr[5]  # b = 0.5
    args = (action, conf, price, stop, tp, EQUITY, 0.15, 0.01, 24_000.0, position, s)
    z = size(*args)
    assert_same(z, sequential(*args))
    expected = [Veto.NONE, Veto.NONE, Veto.HOLD, Veto.INVALID_INPUT, Veto.LOW_CONFIDENCE, Veto.LOW_RISK_REWARD,
                Veto.EXPOSURE_LIMIT, Veto.POSITION_LIMIT, Veto.NONE, Veto.NONE, Veto.NONE, Veto.NONE, Veto.NONE]
    assert [VETO_NAMES[v] for v in z.veto] == [VETO_NAMES[v] for v in expected]
    # Room 50_000 - 24_000 = 26_000, served by EV = 1.5 p_win - (1 - p_win) (p_win from p, see
    # test_size_kelly_capped_by_position_fraction; every row has sigma = sqrt(pi/8) ATR, so the same order as p):
    #   row 9 (p .70, EV 1.41): SELL 5_000 against a 3_000 long ends short 2_000, adds 0 -> 26_000 left
    #   rows 0, 1 (.60, EV 1.04): 5_000 each -> 16_000; row 8 (.60, cut to 2_000) -> 14_000
    #   row 11 (.58, EV .886): 5_000 -> 9_000; row 12 (.57, EV .797): 5_000 -> 4_000
    #   row 10 (.56, EV .699): wants 5_000, gets the last 4_000 (downsized)
    #   row 6 (.52, EV .243): wants 100_000 * .08112 * 0.5 = 4_056, nothing left -> exposure_limit
    np.testing.assert_allclose(z.notional, [5_000.0, -5_000.0, 0, 0, 0, 0, 0, 0, 2_000.0, -5_000.0, 4_000.0,
                                            5_000.0, 5_000.0], atol=1e-9)
    np.testing.assert_array_equal(np.flatnonzero(z.downsized), [0, 1, 8, 9, 10, 11, 12])  # all halved by drawdown
    # Before the exposure cap, row 6 was Kelly-sized (half of .16224, below the risk cap 0.02/0.24).
    assert z.kelly[6] == pytest.approx(0.162241516329) and z.risk_reward[6] == pytest.approx(1.5)


def test_random_rows_equal_row_by_row():
    rng = np.random.default_rng(5)
    n = 400
    s = RiskSettings(min_confidence=20.0)
    action = rng.integers(-1, 2, n).astype(np.int8)
    conf = rng.uniform(0, 100, n)
    price = rng.uniform(1, 1000, n)
    atr = price * rng.uniform(0.001, 0.1, n)
    atr[rng.random(n) < 0.05] = np.nan
    position = np.where(rng.random(n) < 0.3, rng.uniform(-12_000, 12_000, n), 0.0)
    stop, tp = stops(action, price, atr, s)
    tp = np.where(rng.random(n) < 0.1, price + action * atr, tp)  # some low risk-reward
    # Half the rows with a bar_std of their own (some unusable: NaN, 0), half from ATR.
    sigma = np.where(rng.random(n) < 0.5, atr * rng.uniform(0.2, 2.0, n), np.nan)
    sigma[rng.random(n) < 0.05] = 0.0
    for exposure in (0.0, 30_000.0, 49_999.0):
        args = (action, conf, price, stop, tp, EQUITY, 0.13, 0.0, exposure, position, s)
        z = size(*args, bar_std=sigma)
        assert_same(z, sequential(*args, sigma=sigma))
        assert (z.fraction >= 0).all()
        after = np.abs(position + z.notional)
        assert np.all((after <= s.max_position_fraction * EQUITY * (1 + 1e-12)) | (after <= np.abs(position)))
        added = np.maximum(np.abs(position + z.notional) - np.abs(position), 0).sum()
        assert exposure + added <= max(exposure, s.max_exposure_fraction * EQUITY) * (1 + 1e-12)
        # A stop-out of any order loses at most max_risk_fraction of equity.
        loss = np.abs(z.notional) * np.abs(price - stop) / price
        assert (np.nan_to_num(loss) <= s.max_risk_fraction * EQUITY * (1 + 1e-12)).all()
