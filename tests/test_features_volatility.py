"""The volatility family: Keltner, Donchian and the realized/range estimators against NumPy
references over whole bar files, the TA-Lib features on inputs the bar files lack, edge cases, and
engine == Indicator with rows at different warm-up points.

TRANGE, ATR, NATR, BBANDS, STDDEV and VAR are compared with TA-Lib on every bar file by
tests/test_features_talib.py; here they meet flat windows at a high price level, outliers passing
through the window, sub-tick variances and a zero close.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view
from talib import abstract

from core.errors import ConfigError
from core.features import volatility
from core.features._run import run_series
from core.features.barfile import BarSeries, load_bars
from core.features.engine import FeatureEngine
from core.features.incremental import Indicator
from tests.conftest import shared_file

# The BTC file is cut to its first bars: the references are whole-series, the engine is stepped.
BAR_FILES = {"btc_perp_1m_2022-01.csv": 6000, "goog_daily_2004-2013.csv": None,
             "eurusd_1h_2017-2018.csv": None, "kraken_xbtusdt_1m_rest.json": None,
             "binance_adabtc_1m_klines.csv": None}
OWN = [k for k in volatility.defaults() if not k.talib]
TALIB = [k for k in volatility.defaults() if k.talib]


def _load(name: str, n: int | None) -> BarSeries:
    s = load_bars(shared_file(f"bars/{name}"))[0]
    return BarSeries(name=name, columns={k: v[:n] for k, v in s.columns.items()})


def _series(close, high=None, low=None, open_=None, volume=None) -> BarSeries:
    close = np.asarray(close, dtype=np.float64)
    n = len(close)
    cols = {"ts_ns": np.arange(n, dtype=np.int64) * 60_000_000_000, "close": close,
            "open": close.copy() if open_ is None else np.asarray(open_, dtype=np.float64),
            "high": close.copy() if high is None else np.asarray(high, dtype=np.float64),
            "low": close.copy() if low is None else np.asarray(low, dtype=np.float64),
            "volume": np.ones(n) if volume is None else np.asarray(volume, dtype=np.float64)}
    return BarSeries(name="synthetic", columns=cols)


def _run(kernels, series):
    """{output name: values} per series, from one engine running all series at once."""
    engine = FeatureEngine(kernels)
    return [dict(zip(engine.names, v.T)) for v in run_series(engine, series)]


def _close(got, want, rtol=1e-10, name=""):
    """NaN exactly where the reference is NaN, elsewhere equal to ``rtol`` (exact zeros stay exact)."""
    assert np.array_equal(np.isnan(got), np.isnan(want)), (
        f"{name}: NaN mismatch at {np.flatnonzero(np.isnan(got) != np.isnan(want))[:10]}")
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=0, err_msg=name)


def _windowed(x, width, fn):
    out = np.full(len(x), np.nan)
    if len(x) >= width:
        out[width - 1:] = fn(sliding_window_view(x, width), axis=1)
    return out


@pytest.fixture(scope="module")
def files():
    series = [_load(name, n) for name, n in BAR_FILES.items()]
    return list(zip(series, _run(OWN, series)))


# ------------------------------------------------------------------------- NumPy references


def test_keltner_is_talib_ema_of_typical_price_plus_minus_two_talib_atr(files):
    for s, ours in files:
        c = s.columns
        typical = (c["high"] + c["low"] + c["close"]) / 3.0
        mid = talib.EMA(typical, 20)
        atr = talib.ATR(c["high"], c["low"], c["close"], 20)
        # the first ATR comes one bar after the first EMA
        mid = np.where(np.isnan(atr), np.nan, mid)
        _close(ours["keltner_20_2.middle"], mid, name=s.name)
        _close(ours["keltner_20_2.upper"], mid + 2.0 * atr, name=s.name)
        _close(ours["keltner_20_2.lower"], mid - 2.0 * atr, name=s.name)


def test_donchian_is_the_rolling_extremes(files):
    for s, ours in files:
        c = s.columns
        upper, lower = _windowed(c["high"], 20, np.max), _windowed(c["low"], 20, np.min)
        np.testing.assert_array_equal(ours["donchian_20.upper"], upper)
        np.testing.assert_array_equal(ours["donchian_20.lower"], lower)
        np.testing.assert_array_equal(ours["donchian_20.middle"], (upper + lower) / 2)


def _rv(close, n=20):
    with np.errstate(all="ignore"):
        r = np.log(close[1:] / close[:-1])
    return np.r_[np.nan, np.sqrt(_windowed(r * r, n, np.sum))]


def _parkinson(high, low, n=20):
    with np.errstate(all="ignore"):
        u = np.log(high / low)
    return np.sqrt(_windowed(u * u / (4.0 * math.log(2.0)), n, np.mean))


def _garman_klass(o, h, lo, c, n=20):
    term = 0.5 * np.log(h / lo) ** 2 - (2.0 * math.log(2.0) - 1.0) * np.log(c / o) ** 2
    return np.sqrt(np.maximum(_windowed(term, n, np.mean), 0.0))


def test_realized_and_range_volatility_match_window_sums(files):
    for s, ours in files:
        c = s.columns
        _close(ours["rv_20"], _rv(c["close"]), name=s.name)
        _close(ours["parkinson_20"], _parkinson(c["high"], c["low"]), name=s.name)
        gk = _garman_klass(c["open"], c["high"], c["low"], c["close"])
        _close(ours["garman_klass_20"], gk, name=s.name)


# ------------------------------------------------------------------------------- edge cases


def test_flat_prices_give_exact_zeros_after_a_volatile_start():
    rng = np.random.default_rng(3)
    noisy = 40000.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, 60)))
    close = np.r_[noisy, np.full(80, 40000.1)]
    ours = _run(volatility.defaults(), [_series(close)])[0]
    flat = slice(60 + 21, None)  # every window of the last bars is flat
    for name in ("rv_20", "parkinson_20", "garman_klass_20", "trange", "var_20_1", "stddev_20_1"):
        assert (ours[name][flat] == 0.0).all(), name
    for name in ("donchian_20.upper", "donchian_20.middle", "donchian_20.lower", "bbands_20_2_2_0.upperband",
                 "bbands_20_2_2_0.middleband", "bbands_20_2_2_0.lowerband"):
        np.testing.assert_allclose(ours[name][flat], 40000.1, rtol=1e-15, err_msg=name)
    # ATR decays geometrically towards 0, Keltner's bands close in on the EMA
    assert ours["atr_14"][-1] < ours["atr_14"][70] * 0.1


def test_flat_from_the_first_bar():
    ours = _run(volatility.defaults(), [_series(np.full(60, 100.0))])[0]
    for name, v in ours.items():
        last = v[-1]
        if name.startswith(("keltner", "donchian", "bbands")):
            assert last == 100.0, name
        else:
            assert last == 0.0, name


def test_an_outlier_leaving_the_window_leaves_no_residue():
    # returns of 1e-8 around a 1e6-fold spike: an uncompensated running sum would keep ~1e-14 of the
    # spike's r^2 ~ 190 after it left, against a true sum of ~1e-15
    rng = np.random.default_rng(5)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-8, 120)))
    close[40] *= 1e6
    high, low = close * (1 + 1e-9), close * (1 - 1e-9)
    high[40] *= 1e3
    ours = _run(OWN, [_series(close, high, low)])[0]
    after = slice(40 + 22, None)
    _close(ours["rv_20"][after], _rv(close)[after], rtol=1e-9, name="rv")
    _close(ours["parkinson_20"][after], _parkinson(high, low)[after], rtol=1e-9, name="parkinson")
    gk = _garman_klass(close, high, low, close)
    _close(ours["garman_klass_20"][after], gk[after], rtol=1e-9, name="gk")


def test_a_non_positive_price_is_nan_while_in_the_window_then_forgotten():
    rng = np.random.default_rng(7)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, 1e-2, 100)))
    close[30] = 0.0
    high, low = close * 1.01, close * 0.99
    low[60] = -1.0
    ours = _run(OWN, [_series(close, high, low)])[0]
    rv = ours["rv_20"]
    assert np.isnan(rv[30:31 + 20]).all() and np.isfinite(rv[31 + 20:]).all()
    _close(rv[52:], _rv(close)[52:], name="rv")
    pk = ours["parkinson_20"]
    # bar 30's low is 0 too (log(high / 0) = inf), bar 60's low is negative
    assert np.isnan(pk[30:50]).all() and np.isnan(pk[60:80]).all()
    assert np.isfinite(pk[50:60]).all() and np.isfinite(pk[80:]).all()
    _close(pk[80:], _parkinson(high, low)[80:], name="parkinson")
    assert not np.isinf(np.concatenate(list(ours.values()))).any()


def _assert_talib(kernel, cols, ours, rtol=1e-9):
    args = [np.ascontiguousarray(cols[f], dtype=np.float64) for f in kernel.talib_inputs]
    ref = getattr(talib, kernel.talib)(*args, **kernel.talib_kwargs())
    for name, want in zip(kernel.outputs, ref if isinstance(ref, tuple) else (ref,)):
        got = ours[name]
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        ok = ~np.isnan(want)
        err = np.abs(got[ok] - want[ok])
        assert (err <= rtol * np.maximum(1.0, np.abs(want[ok]))).all(), (name, err.max())


def _hard_closes():
    rng = np.random.default_rng(11)
    return {
        # a flat window at a price level where x^2 sums would cancel to garbage
        "flat_40000": np.r_[40000 + rng.normal(0, 5, 60), np.full(100, 40000.1),
                            40000 + rng.normal(0, 5, 40)],
        # an outlier passing through the window (the removed d^2 dwarfs what is left)
        "outlier": np.r_[40000 + rng.normal(0, 1, 50), 4e6, 40000 + rng.normal(0, 1e-3, 80)],
        # a $100 instrument in 1e-8 ticks: variance ~1e-16, not zeroed
        "sub_tick": 100.0 + np.round(rng.normal(0, 1e-7, 300), 8),
        # values one ulp apart: 0.1 + 0.2 against 0.3
        "ulps": np.r_[np.full(25, 0.3), np.tile([0.3, 0.1 + 0.2], 40)],
        # long enough for TA-Lib's periodic rebuild (every 32 windows)
        "random_walk": 40000 + np.cumsum(rng.normal(0, 5, 3000)),
        "level_shift": np.r_[40000 + rng.normal(0, 1, 100), 1e9 + rng.normal(0, 1, 100),
                             40000 + rng.normal(0, 1, 100)],
    }


@pytest.mark.parametrize("case", list(_hard_closes()))
def test_talib_features_on_hard_inputs(case):
    close = _hard_closes()[case]
    high, low = close * (1 + 1e-4), close * (1 - 1e-4)
    cols = {"high": high, "low": low, "close": close}
    ours = _run(TALIB, [_series(close, high, low)])[0]
    for k in TALIB:
        _assert_talib(k, cols, ours)


def test_natr_of_a_zero_close_is_zero_like_talib():
    rng = np.random.default_rng(2)
    close = 10.0 + rng.normal(0, 1, 60)
    close[[20, 41]] = 0.0
    high, low = np.maximum(close, 0) + 0.5, close - 0.5
    ours = _run([volatility.NATR(14)], [_series(close, high, low)])[0]
    _assert_talib(volatility.NATR(14), {"high": high, "low": low, "close": close}, ours)
    assert ours["natr_14"][41] == 0.0


def test_bbands_refuses_other_ma_types():
    with pytest.raises(ConfigError, match="matype"):
        volatility.BBANDS(20, 2.0, 2.0, 1)


def test_names_and_lookbacks():
    names = [o for k in volatility.defaults() for o in k.outputs]
    assert names == ["trange", "atr_14", "natr_14", "bbands_20_2_2_0.upperband", "bbands_20_2_2_0.middleband",
                     "bbands_20_2_2_0.lowerband", "stddev_20_1", "var_20_1", "keltner_20_2.upper",
                     "keltner_20_2.middle", "keltner_20_2.lower", "donchian_20.upper", "donchian_20.middle",
                     "donchian_20.lower", "rv_20", "parkinson_20", "garman_klass_20"]
    for k in TALIB:
        f = abstract.Function(k.talib)
        f.set_parameters(k.talib_kwargs())
        assert k.lookback == f.lookback, k.name
    assert {k.name: k.lookback for k in OWN} == {"keltner_20_2": 20, "donchian_20": 19, "rv_20": 20,
                                                  "parkinson_20": 19, "garman_klass_20": 19}


# ------------------------------------------------------------------- engine == Indicator


@pytest.mark.parametrize("kernel", volatility.defaults(), ids=lambda k: k.name)
def test_engine_equals_indicator_with_staggered_rows(kernel):
    a = _load("btc_perp_1m_2022-01.csv", 400).columns
    g = _load("kraken_xbtusdt_1m_rest.json", 400).columns
    fields = ("open", "high", "low", "close", "volume")
    ind = Indicator(kernel)
    alone = np.array([np.atleast_1d(ind.update(**{f: float(a[f][i]) for f in fields})) for i in range(400)])
    # row 0: the series from its start; row 1: another series; row 2: the series again, 33 bars late
    engine = FeatureEngine([kernel])
    engine.grow(3)
    out = {0: [], 1: [], 2: []}
    for i in range(400):
        src = [(0, a, i), (1, g, i)] + ([(2, a, i - 33)] if i >= 33 else [])
        bars = {f: np.array([c[f][j] for _, c, j in src]) for f in fields}
        res = engine.step(bars, np.array([r for r, _, _ in src]))
        for (r, _, _), v in zip(src, res.values):
            out[r].append(v)
    np.testing.assert_array_equal(np.array(out[0]), alone)
    np.testing.assert_array_equal(np.array(out[2]), alone[: 400 - 33])
    np.testing.assert_array_equal(np.array(out[1]), run_series(FeatureEngine([kernel]), [_series(
        g["close"], g["high"], g["low"], g["open"], g["volume"])])[0])
