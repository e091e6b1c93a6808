"""The overlap family: edge cases against TA-Lib, other parameters, and engine == Indicator.

Every default overlap feature is compared with TA-Lib on every bar file by
tests/test_features_talib.py; here they meet what those files lack: flat prices, prints 100x
away from the window (TA-Lib's outlier rebuild of the LINEARREG sums), series long enough for
several of TA-Lib's scheduled rebuilds (WMA every 8n, LINEARREG every 32n bars), quotes far from 1,
and parameters other than the defaults (period 1 copies, swapped MACD periods, odd TRIMA, EMA lines
in MACDEXT). The engine's rows, started at different bars and advanced in subsets, must equal one
`Indicator` per series, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import talib
import talib.abstract

from core.errors import ConfigError
from core.features import overlap
from core.features._run import run_series
from core.features.barfile import BarSeries, load_bars
from core.features.engine import FeatureEngine
from core.features.incremental import Indicator
from tests.conftest import shared_file

_OHLCV = ("open", "high", "low", "close", "volume")
# The rebuilds of WMA's and LINEARREG's running sums follow the TA-Lib C library the `ta-lib` wheel
# bundles (0.8.x); the tests that compare them bit for bit need that version.
_TALIB_08 = pytest.mark.skipif(not talib.__ta_version__.startswith(b"0.8"),
                               reason=f"bit-exact rebuilds pinned to TA-Lib C 0.8, not {talib.__ta_version__!r}")


def _series(open_, high, low, close, volume=None, name: str = "synthetic") -> BarSeries:
    close = np.asarray(close, dtype=np.float64)
    volume = np.ones(len(close)) if volume is None else volume
    cols = {f: np.array(v, dtype=np.float64) for f, v in zip(_OHLCV, (open_, high, low, close, volume))}
    cols["ts_ns"] = np.arange(len(close), dtype=np.int64)
    return BarSeries(name=name, columns=cols)


def _walk(n: int, seed: int, level: float = 100.0) -> BarSeries:
    """A random walk with a real high-low range around open and close."""
    rng = np.random.default_rng(seed)
    close = level * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, n))
    return _series(open_, high, low, close, rng.uniform(1, 100, n), name=f"walk{seed}")


def _closes(close, name: str) -> BarSeries:
    close = np.asarray(close, dtype=np.float64)
    return _series(close, close, close, close, name=name)


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

# Outputs that are 0 on flat prices; every other default output is the price itself.
ZERO_ON_FLAT = {"linearreg_slope_14", "linearreg_angle_14"} | {
    f"{k}.{o}" for k in ("macd_12_26_9", "macdext_12_0_26_0_9_0", "macdfix_9") for o in ("macd", "macdsignal", "macdhist")}


def test_flat_prices_give_the_price_and_zero_slopes():
    n = 200
    series = [_closes(np.full(n, px), name=f"flat {px}") for px in (101.25, 0.1, 3e4, 7e-9)]
    kernels = overlap.defaults()
    names = {o for k in kernels for o in k.outputs}
    assert ZERO_ON_FLAT <= names
    for s, ours in zip(series, _run(kernels, series)):
        px = s.columns["close"][0]
        for k in kernels:
            for name in k.outputs:
                got = ours[name]
                assert np.isnan(got[:k.lookback]).all(), name
                want = 0.0 if name in ZERO_ON_FLAT else px
                # Running sums (in TA-Lib too) may leave a residue of an ulp or so of the price.
                np.testing.assert_allclose(got[k.lookback:], want, rtol=1e-12, atol=1e-12 * px, err_msg=name)
    _assert_talib(kernels, series)


def test_flat_then_moving_then_flat():
    """KAMA's efficiency ratio meets a zero sum of changes (TA-Lib's zero test picks 1), and every
    running sum comes back to a flat window after a move."""
    walk = _walk(150, seed=1).columns["close"]
    close = np.r_[np.full(60, walk[0]), walk, np.full(90, walk[-1])]
    _assert_talib(overlap.defaults(), [_closes(close, "flat-move-flat")])


@_TALIB_08
def test_prints_far_from_the_window_trigger_talibs_outlier_rebuild():
    """A print 1e4x the price (and cascades of them) leaves the LINEARREG window: TA-Lib rebuilds
    the window sums on that bar, and the slope and its angle follow it exactly."""
    rng = np.random.default_rng(2)
    base = 100 + np.cumsum(rng.normal(0, 1, 1500)).clip(-50, None)
    spikes = [base.copy() for _ in range(4)]
    spikes[0][[300, 900]] = [1e6, 5e5]
    spikes[1][[300, 301, 305]] = [1e6, 1e4, 2e3]  # a cascade: each print could trigger when it leaves
    spikes[2][200::37] = 1e5
    spikes[3][400:403] = [1e-3, 1e7, 1e-3]
    series = [_closes(c, f"spikes{i}") for i, c in enumerate(spikes)]
    kernels = [k for k in overlap.defaults() if k.fn.startswith(("linearreg", "tsf", "wma", "trima", "kama"))]
    _assert_talib(kernels, series)
    slope = overlap.LINEARREG_SLOPE(14)
    for s, ours in zip(series, _run([slope], series)):
        want = talib.LINEARREG_SLOPE(s.columns["close"], 14)
        np.testing.assert_array_equal(ours[slope.name], want, err_msg=s.name)


@_TALIB_08
def test_talibs_scheduled_rebuilds_over_a_long_series():
    """Past several of TA-Lib's rebuilds (WMA every 8n bars, LINEARREG every 32n) the running sums
    equal TA-Lib's bit for bit, on a walk far from 1 where the residue they clear is large."""
    s = _walk(6000, seed=3, level=4.2e4)
    kernels = [overlap.WMA(20), overlap.WMA(3), overlap.LINEARREG_SLOPE(14), overlap.LINEARREG_INTERCEPT(5)]
    ours = _run(kernels, [s])[0]
    for k in kernels:
        np.testing.assert_array_equal(ours[k.name], _talib(k, s.columns)[k.name], err_msg=k.name)


def test_quotes_far_below_and_above_one():
    series = [_walk(400, seed=4, level=1e-5), _walk(400, seed=5, level=2e6)]
    _assert_talib(overlap.defaults(), series)


def test_short_series_stay_nan():
    """A series shorter than a warm-up gives NaN there and nothing else."""
    series = [_walk(n, seed=6 + n) for n in (1, 2, 13, 30)]
    _assert_talib(overlap.defaults(), series)


# ------------------------------------------------------------------------------- other parameters

OTHER_PARAMETERS = [
    overlap.SMA(1), overlap.SMA(2), overlap.EMA(1), overlap.EMA(3), overlap.WMA(1), overlap.WMA(2),
    overlap.DEMA(1), overlap.DEMA(5), overlap.TEMA(1), overlap.TEMA(4), overlap.TRIMA(1), overlap.TRIMA(2),
    overlap.TRIMA(5), overlap.TRIMA(31), overlap.KAMA(1), overlap.KAMA(2), overlap.KAMA(10), overlap.T3(1, 0.7),
    overlap.T3(3, 0.0), overlap.T3(8, 1.0), overlap.MIDPOINT(2), overlap.MIDPRICE(2), overlap.MIDPRICE(30),
    overlap.MACD(5, 35, 5), overlap.MACD(26, 12, 9), overlap.MACD(12, 26, 1), overlap.MACD(2, 2, 2),
    overlap.MACDFIX(1), overlap.MACDFIX(20), overlap.MACDEXT(12, 1, 26, 1, 9, 1), overlap.MACDEXT(12, 0, 26, 1, 9, 1),
    overlap.MACDEXT(26, 1, 12, 0, 5, 0), overlap.MACDEXT(3, 0, 7, 0, 1, 0), overlap.MACDEXT(2, 1, 3, 1, 1, 1),
    overlap.LINEARREG(2), overlap.LINEARREG_SLOPE(3), overlap.LINEARREG_ANGLE(30), overlap.LINEARREG_INTERCEPT(2),
    overlap.TSF(50),
]


def test_other_parameters_equal_talib():
    series = [load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0], _walk(700, seed=7), _walk(25, seed=8)]
    _assert_talib(OTHER_PARAMETERS, series)


def test_period_one_copies_the_input():
    s = _walk(100, seed=9)
    close = s.columns["close"]
    kernels = [overlap.SMA(1), overlap.EMA(1), overlap.WMA(1), overlap.DEMA(1), overlap.TEMA(1),
               overlap.TRIMA(1), overlap.KAMA(1), overlap.T3(1, 0.5)]
    ours = _run(kernels, [s])[0]
    for k in kernels:
        np.testing.assert_array_equal(ours[k.name], close, err_msg=k.name)
    macd = _run([overlap.MACD(12, 26, 1)], [s])[0]
    np.testing.assert_array_equal(macd["macd_12_26_1.macdsignal"], macd["macd_12_26_1.macd"])
    assert (macd["macd_12_26_1.macdhist"][25:] == 0.0).all()


def test_names_follow_talib_parameter_order():
    assert [o for k in overlap.defaults() for o in k.outputs][6:] == [
        "wma_20", "dema_20", "tema_20", "trima_20", "kama_30", "t3_5_0.7", "midpoint_14", "midprice_14",
        "macd_12_26_9.macd", "macd_12_26_9.macdsignal", "macd_12_26_9.macdhist",
        "macdext_12_0_26_0_9_0.macd", "macdext_12_0_26_0_9_0.macdsignal", "macdext_12_0_26_0_9_0.macdhist",
        "macdfix_9.macd", "macdfix_9.macdsignal", "macdfix_9.macdhist",
        "linearreg_14", "linearreg_slope_14", "linearreg_angle_14", "linearreg_intercept_14", "tsf_14",
        "avgprice", "medprice", "typprice", "wclprice"]
    for k in overlap.defaults():
        assert k.family == "overlap" and k.talib and k.name.startswith(k.talib.lower())
        assert k.lookback == talib.abstract.Function(k.talib, **k.talib_kwargs()).lookback, k.name


@pytest.mark.parametrize("make", [
    lambda: overlap.SMA(0), lambda: overlap.WMA(2.0), lambda: overlap.KAMA(100_001), lambda: overlap.T3(5, 1.5),
    lambda: overlap.MIDPOINT(1), lambda: overlap.MIDPRICE(1), lambda: overlap.MACD(1, 26, 9),
    lambda: overlap.MACD(12, 26, 0), lambda: overlap.MACDFIX(0), lambda: overlap.MACDEXT(12, 2, 26, 0, 9, 0),
    lambda: overlap.MACDEXT(12, 0, 26, 0, 9, 8), lambda: overlap.LINEARREG(1), lambda: overlap.TSF(True),
])
def test_bad_parameters_are_refused(make):
    with pytest.raises(ConfigError):
        make()


# ------------------------------------------------------------------------ engine == Indicator


def test_a_row_that_starts_later_equals_the_row_alone():
    """Two rows, the second starting 57 bars after the first: each equals an engine with that row
    alone, bit for bit."""
    kernels = overlap.defaults()
    a, b = _walk(400, seed=11), _walk(300, seed=12, level=3.0)
    engine = FeatureEngine(kernels, n=2)
    got_b = []
    for i in range(400):
        rows = [0] if i < 100 else [0, 1]
        bars = {f: np.array([a.columns[f][i]] + ([b.columns[f][i - 100]] if i >= 100 else [])) for f in _OHLCV}
        vals = np.asarray(engine.step(bars, rows).values)
        if i >= 100:
            got_b.append(vals[1])
    alone = run_series(FeatureEngine(kernels), [b])[0]
    np.testing.assert_array_equal(np.array(got_b), alone)


def test_engine_rows_with_staggered_starts_equal_indicators():
    """Six series that start at different steps and sit out some steps, advanced in shuffled
    subsets (one bar refused), equal each series fed alone to an `Indicator` per kernel, bit for
    bit."""
    kernels = overlap.defaults() + [overlap.MACDEXT(12, 1, 26, 0, 5, 0), overlap.MACD(26, 12, 1), overlap.TRIMA(7),
                                    overlap.LINEARREG_SLOPE(3)]
    starts = [0, 3, 17, 40, 41, 90]
    lengths = [260, 120, 200, 150, 60, 130]
    series = [_walk(m, seed=20 + i, level=10.0 ** (i - 2)) for i, m in enumerate(lengths)]
    series[2].columns["close"][77] = np.nan  # refused by both paths
    series[3].columns["close"][60] *= 500  # an outlier rebuild of the LINEARREG sums on row 3
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
