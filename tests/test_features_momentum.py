"""The momentum family: edge cases against TA-Lib, other parameters, and engine == Indicator.

Every default momentum feature is compared with TA-Lib on every bar file by
tests/test_features_talib.py; here they meet the inputs those files lack (flat prices, zero volume,
ranges and price changes too small for TA-Lib's zero tests, old prices of 0, quotes far below 1)
and parameters other than the defaults, and the engine's rows, started at different bars and
advanced in subsets, must equal one `Indicator` per series.
"""

from __future__ import annotations

import numpy as np
import pytest
import talib

from core.errors import ConfigError
from core.features import momentum
from core.features._run import run_series
from core.features.barfile import BarSeries, load_bars
from core.features.engine import FeatureEngine
from core.features.incremental import Indicator
from tests.conftest import shared_file

_OHLCV = ("open", "high", "low", "close", "volume")


def _series(open_, high, low, close, volume) -> BarSeries:
    cols = {f: np.array(v, dtype=np.float64) for f, v in zip(_OHLCV, (open_, high, low, close, volume))}
    cols["ts_ns"] = np.arange(len(cols["close"]), dtype=np.int64)
    return BarSeries(name="synthetic", columns=cols)


def _walk(n: int, seed: int, level: float = 100.0, volume: float | None = None) -> BarSeries:
    """A random walk with a real high-low range around open and close."""
    rng = np.random.default_rng(seed)
    close = level * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, n))
    vol = rng.uniform(1, 100, n) if volume is None else np.full(n, volume)
    return _series(open_, high, low, close, vol)


def _run(kernels, series):
    """{output name: values} per series, from one engine running all series at once."""
    engine = FeatureEngine(kernels)
    return [dict(zip(engine.names, v.T)) for v in run_series(engine, series)]


def _talib(kernel, cols):
    args = [np.ascontiguousarray(cols[f], dtype=np.float64) for f in kernel.talib_inputs]
    ref = getattr(talib, kernel.talib)(*args, **kernel.talib_kwargs())
    return dict(zip(kernel.outputs, ref if isinstance(ref, tuple) else (ref,)))


def _assert_talib(kernels, series):
    """Every output of every kernel equals TA-Lib on every series: NaN exactly where TA-Lib's
    warm-up is NaN, within 1e-9 relative elsewhere."""
    for s, ours in zip(series, _run(kernels, series)):
        for k in kernels:
            for name, want in _talib(k, s.columns).items():
                got = ours[name]
                assert np.array_equal(np.isnan(got), np.isnan(want)), (
                    f"{name} on {s.name}: NaN mismatch at bars {np.flatnonzero(np.isnan(got) != np.isnan(want))[:10]}")
                ok = ~np.isnan(want)
                np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9, err_msg=f"{name} on {s.name}")


# ---------------------------------------------------------------------------------- edge cases

# What TA-Lib gives on flat prices (constant open = high = low = close, any volume).
FLAT_VALUES = {
    "rsi_14": 0.0, "stoch_5_3_0_3_0.slowk": 0.0, "stoch_5_3_0_3_0.slowd": 0.0, "stochf_5_3_0.fastk": 0.0,
    "stochf_5_3_0.fastd": 0.0, "stochrsi_14_5_3_0.fastk": 0.0, "stochrsi_14_5_3_0.fastd": 0.0,
    "roc_10": 0.0, "rocp_10": 0.0, "rocr_10": 1.0, "rocr100_10": 100.0, "mom_10": 0.0, "willr_14": 0.0,
    "cci_14": 0.0, "cmo_14": 0.0, "apo_12_26_0": 0.0, "ppo_12_26_0": 0.0, "trix_30": 0.0,
    "ultosc_7_14_28": 0.0, "bop": 0.0, "mfi_14": 0.0,
}
# The SMAs' running sums leave a rounding residue, in TA-Lib too: a few 1e-16 of the price (APO),
# a few 1e-14 percent (PPO). Bound, as a multiple of the price for APO and in percent for PPO:
ROUNDED_ON_FLAT = {"apo_12_26_0": lambda px: 1e-14 * px, "ppo_12_26_0": lambda px: 1e-12}


def test_flat_prices_give_talibs_defined_values():
    n = 150
    prices = (101.25, 0.1, 3e4)
    series = [_series(*[np.full(n, px)] * 4, np.full(n, vol)) for px, vol in zip(prices, (5.0, 0.0, 1e6))]
    kernels = momentum.defaults()
    names = [o for k in kernels for o in k.outputs]
    assert sorted(names) == sorted(FLAT_VALUES)
    for px, ours in zip(prices, _run(kernels, series)):
        for k in kernels:
            for name in k.outputs:
                got = ours[name]
                assert np.isnan(got[:k.lookback]).all(), name
                if name in ROUNDED_ON_FLAT:
                    bound = ROUNDED_ON_FLAT[name](px)
                    np.testing.assert_allclose(got[k.lookback:], FLAT_VALUES[name], rtol=0, atol=bound, err_msg=name)
                else:
                    assert (got[k.lookback:] == FLAT_VALUES[name]).all(), (name, got[k.lookback:][:5])
    _assert_talib(kernels, series)


def test_zero_volume_gives_no_money_flow():
    series = [_walk(300, seed=1, volume=0.0), _walk(300, seed=2, volume=0.0)]
    kernels = momentum.defaults()
    ours = _run(kernels, series)[0]
    for k in kernels:
        for name in k.outputs:
            assert np.isfinite(ours[name][k.lookback:]).all(), name
    assert (ours["mfi_14"][14:] == 0.0).all()
    _assert_talib(kernels, series)


def _stop_and_go(moving: BarSeries, flat: int) -> BarSeries:
    cols = moving.columns
    last = cols["close"][-1]
    return _series(*(np.r_[cols[f], np.full(flat, last), cols[f] * last / cols["close"][0]]
                     for f in ("open", "high", "low", "close")),
                   np.r_[cols["volume"], np.full(flat, 7.0), cols["volume"]])


def test_movement_then_flat_then_movement():
    """A market that stops for longer than every window and starts again: RSI/CMO decay, MFI and
    ULTOSC empty their windows and must reset their sums to exactly 0 (after a spike bar the
    add-then-subtract sums keep a residue), stochastics and CCI meet flat windows."""
    rng = np.random.default_rng(0)
    close = 100 + np.round(rng.normal(0, 1, 60).cumsum(), 3)
    high = close + np.round(rng.uniform(0, 1, 60), 3)
    low = close - np.round(rng.uniform(0, 1, 60), 3)
    high[40], close[40] = 1e4, 9e3  # a spike the running sums cannot give back exactly
    spiked = _series(close, high, low, close, rng.uniform(1, 100, 60))
    series = [_stop_and_go(_walk(200, seed=3), 120), _stop_and_go(spiked, 40)]
    _assert_talib(momentum.defaults(), series)


def test_ranges_and_changes_below_talibs_zero_tests():
    """Ranges of one ulp, typical prices that move by a few ulp, and quotes far below 1: TA-Lib's
    scaled and exact zero tests decide, not a fixed band."""
    n = 200
    base = 1e6
    rng = np.random.default_rng(4)
    ulps = rng.integers(0, 3, n)
    low = np.full(n, base)
    high = low + ulps * np.spacing(base)  # ranges of 0 to 2 ulp
    close = np.where(rng.random(n) < 0.5, low, high)
    tiny = _walk(n, seed=5, level=1e-11)
    series = [_series(close, high, low, close, np.full(n, 3.0)), tiny,
              _series(*(tiny.columns[f] * 1e-290 for f in ("open", "high", "low", "close")), tiny.columns["volume"])]
    _assert_talib(momentum.defaults(), series)


def test_old_prices_of_zero_and_averages_near_zero():
    """ROC's family divides by the old close only when it is not exactly 0; PPO's slow average is
    tested against TA-Lib's fixed band 1e-14; TRIX's previous average exactly."""
    n = 160
    close = np.zeros(n)
    close[20:40] = 1.0
    close[60:] = np.linspace(-1, 1, n - 60) * 1e-13
    close[100:110] = 0.0
    high, low = close + 0.5, close - 0.5
    series = [_series(close, high, low, close, np.ones(n))]
    _assert_talib(momentum.defaults() + [momentum.PPO(12, 26, 1), momentum.TRIX(5)], series)


def test_bop_when_high_equals_low():
    ours = _run([momentum.BOP()], [_series([1.0, 2.0, 5.0], [1.5, 2.0, 6.0], [1.5, 2.0, 4.0], [1.0, 2.0, 5.5],
                                           [1.0, 1.0, 1.0])])[0]["bop"]
    np.testing.assert_array_equal(ours, [0.0, 0.0, 0.25])


# ------------------------------------------------------------------------------- other parameters

OTHER_PARAMETERS = [
    momentum.RSI(2), momentum.STOCH(14, 3, 1, 4, 1), momentum.STOCH(1, 1, 0, 1, 0), momentum.STOCHF(9, 1, 0),
    momentum.STOCHF(14, 4, 1), momentum.STOCHRSI(9, 3, 4, 1), momentum.STOCHRSI(2, 1, 1, 0), momentum.ROC(1),
    momentum.ROCP(3), momentum.ROCR(25), momentum.ROCR100(1), momentum.MOM(1), momentum.WILLR(2),
    momentum.CCI(2), momentum.CCI(30), momentum.CMO(2), momentum.APO(12, 26, 1), momentum.APO(30, 5, 0),
    momentum.PPO(5, 35, 1), momentum.PPO(26, 12, 0), momentum.TRIX(1), momentum.TRIX(9),
    momentum.ULTOSC(28, 14, 7), momentum.ULTOSC(1, 2, 3), momentum.ULTOSC(5, 5, 9), momentum.MFI(2),
    momentum.MFI(30),
]


def test_other_parameters_equal_talib():
    series = [load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0], _walk(400, seed=6), _walk(25, seed=7)]
    _assert_talib(OTHER_PARAMETERS, series)


def test_names_follow_talib_parameter_order():
    assert momentum.STOCH().outputs == ("stoch_5_3_0_3_0.slowk", "stoch_5_3_0_3_0.slowd")
    assert momentum.STOCHRSI().outputs == ("stochrsi_14_5_3_0.fastk", "stochrsi_14_5_3_0.fastd")
    assert momentum.ULTOSC().name == "ultosc_7_14_28"
    assert momentum.PPO(12, 26, 0).name == "ppo_12_26_0"
    assert momentum.BOP().name == "bop"
    for k in momentum.defaults():
        assert k.family == "momentum" and k.talib and k.name.startswith(k.talib.lower())


@pytest.mark.parametrize("make", [
    lambda: momentum.STOCH(slowk_matype=2), lambda: momentum.PPO(matype=8), lambda: momentum.RSI(1),
    lambda: momentum.CCI(0), lambda: momentum.ROC(0), lambda: momentum.APO(1, 26), lambda: momentum.MFI(14.0),
    lambda: momentum.ULTOSC(7, 14, 0),
])
def test_bad_parameters_are_refused(make):
    with pytest.raises(ConfigError):
        make()


# ------------------------------------------------------------------------ engine == Indicator


def test_engine_rows_with_staggered_starts_equal_indicators():
    """Six series that start at different steps and sit out some steps, advanced in shuffled
    subsets (one bar refused), equal each series fed alone to an `Indicator` per kernel, bit for
    bit."""
    kernels = momentum.defaults() + [momentum.APO(12, 26, 1), momentum.STOCH(5, 3, 1, 3, 1)]
    starts = [0, 3, 17, 40, 41, 90]
    lengths = [260, 120, 200, 150, 60, 130]
    series = [_walk(m, seed=10 + i, level=10.0 ** (i - 2)) for i, m in enumerate(lengths)]
    series[2].columns["close"][77] = np.nan  # refused by both paths
    engine = FeatureEngine(kernels, n=len(series))
    got = [np.full((m, len(engine.names)), np.nan) for m in lengths]
    cursor = [0] * len(series)  # next bar of each series
    rng = np.random.default_rng(0)
    step = 0
    while any(c < m for c, m in zip(cursor, lengths)):
        rows = [r for r in range(len(series)) if starts[r] <= step and cursor[r] < lengths[r] and rng.random() < 0.8]
        step += 1
        if not rows:
            continue
        rng.shuffle(rows)
        bars = {f: np.array([series[r].columns[f][cursor[r]] for r in rows]) for f in _OHLCV}
        vals = np.asarray(engine.step(bars, rows).values)
        for j, r in enumerate(rows):
            got[r][cursor[r]] = vals[j]
            cursor[r] += 1
    for r, s in enumerate(series):
        for k in kernels:
            ind = Indicator(k)
            want = np.array([np.atleast_1d(ind.update(**{f: s.columns[f][i] for f in _OHLCV}))
                             for i in range(lengths[r])])
            cols = [engine.names.index(o) for o in k.outputs]
            np.testing.assert_array_equal(got[r][:, cols], want, err_msg=f"{k.name} row {r}")
