"""The trend family: Ichimoku against a NumPy reference, edge cases, and engine == Indicator.

The TA-Lib features of this family (SAR, the ADX family, AROON, AROONOSC) are compared with TA-Lib
on every bar file by tests/test_features_talib.py; here they meet the inputs those files lack
(flat prices, ranges too small for TA-Lib's zero test, ties).
"""

from __future__ import annotations

import numpy as np
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view
from talib import abstract

from core.errors import ConfigError
from core.features import trend
from core.features._run import run_series
from core.features.barfile import BarSeries, load_bars
from core.features.engine import FeatureEngine
from core.features.incremental import Indicator
from tests.conftest import shared_file

BAR_FILES = ("goog_daily_2004-2013.csv", "eurusd_1h_2017-2018.csv", "kraken_xbtusdt_1m_rest.json")


def _series(high, low, close) -> BarSeries:
    n = len(close)
    close = np.asarray(close, dtype=np.float64)
    return BarSeries(name="synthetic", columns={
        "ts_ns": np.arange(n, dtype=np.int64), "open": close.copy(), "high": np.asarray(high, dtype=np.float64),
        "low": np.asarray(low, dtype=np.float64), "close": close, "volume": np.ones(n)})


def _run(kernels, series):
    """{output name: values} per series, from one engine running all series at once."""
    engine = FeatureEngine(kernels)
    return [dict(zip(engine.names, v.T)) for v in run_series(engine, series)]


def _assert_talib(kernel, cols, ours):
    args = [np.ascontiguousarray(cols[f], dtype=np.float64) for f in kernel.talib_inputs]
    ref = getattr(talib, kernel.talib)(*args, **kernel.talib_kwargs())
    for name, want in zip(kernel.outputs, ref if isinstance(ref, tuple) else (ref,)):
        got = ours[name]
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9, err_msg=name)


# ------------------------------------------------------------------------------ Ichimoku


def _rolling_mid(high, low, width):
    out = np.full(len(high), np.nan)
    if len(high) >= width:
        out[width - 1:] = (sliding_window_view(high, width).max(axis=1)
                           + sliding_window_view(low, width).min(axis=1)) / 2
    return out


def _lag(x, k):
    out = np.full(len(x), np.nan)
    out[k:] = x[:-k]
    return out


def _ichimoku_reference(high, low, close, tenkan=9, kijun=26, senkou=52):
    """Straight from the definition, over the whole series: the cloud is the one plotted at
    the bar (computed kijun bars earlier), chikou the close against the close kijun bars ago."""
    tk = _rolling_mid(high, low, tenkan)
    kj = _rolling_mid(high, low, kijun)
    return {"tenkan": tk, "kijun": kj, "senkou_a": _lag((tk + kj) / 2, kijun),
            "senkou_b": _lag(_rolling_mid(high, low, senkou), kijun), "chikou": close - _lag(close, kijun)}


def test_ichimoku_equals_reference_on_bar_files():
    series = [load_bars(shared_file(f"bars/{f}"))[0] for f in BAR_FILES]
    kernel = trend.Ichimoku(9, 26, 52)
    assert kernel.outputs == tuple(f"ichimoku_9_26_52.{o}" for o in
                                   ("tenkan", "kijun", "senkou_a", "senkou_b", "chikou"))
    for s, ours in zip(series, _run([kernel], series)):
        c = s.columns
        want = _ichimoku_reference(c["high"], c["low"], c["close"])
        for out in kernel.output_names:
            np.testing.assert_array_equal(ours[f"ichimoku_9_26_52.{out}"], want[out], err_msg=f"{s.name} {out}")
        # Warm-up per output: the first defined bar of each line.
        first = {o: int(np.flatnonzero(~np.isnan(ours[f"ichimoku_9_26_52.{o}"]))[0]) for o in kernel.output_names}
        assert first == {"tenkan": 8, "kijun": 25, "senkou_a": 51, "senkou_b": 77, "chikou": 26}


def test_ichimoku_has_no_look_ahead():
    """Changing bar j changes no output before bar j."""
    s = load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0]
    c = {k: v[:400].copy() for k, v in s.columns.items()}
    base = _run([trend.Ichimoku()], [BarSeries(name="a", columns=c)])[0]
    j = 300
    c2 = {k: v.copy() for k, v in c.items()}
    c2["high"][j] *= 1.5
    c2["low"][j] *= 0.5
    c2["close"][j] *= 1.2
    moved = _run([trend.Ichimoku()], [BarSeries(name="b", columns=c2)])[0]
    for name in base:
        np.testing.assert_array_equal(moved[name][:j], base[name][:j], err_msg=name)
        assert not np.array_equal(moved[name][j:], base[name][j:]), name  # and the change does show


def test_ichimoku_flat_prices():
    n = 120
    ours = _run([trend.Ichimoku()], [_series(np.full(n, 7.5), np.full(n, 7.5), np.full(n, 7.5))])[0]
    for out, first in (("tenkan", 8), ("kijun", 25), ("senkou_a", 51), ("senkou_b", 77)):
        v = ours[f"ichimoku_9_26_52.{out}"]
        assert np.isnan(v[:first]).all() and (v[first:] == 7.5).all(), out
    chikou = ours["ichimoku_9_26_52.chikou"]
    assert np.isnan(chikou[:26]).all() and (chikou[26:] == 0.0).all()


def test_ichimoku_rejects_nonstandard_spans():
    with pytest.raises(ConfigError):
        trend.Ichimoku(9, 26, 60)
    with pytest.raises(ConfigError):
        trend.Ichimoku(30, 26, 52)


# ---------------------------------------------------------------------------- edge cases


TALIB_KERNELS = [k for k in trend.defaults() if k.talib]


def test_flat_prices_follow_talib():
    """Zero true range everywhere: DI, DX, ADX, ADXR are 0 (TA-Lib's choice), DM 0, Aroon 100/100."""
    n = 80
    p = np.full(n, 42.0)
    cols = {"high": p, "low": p, "close": p}
    ours = _run(trend.defaults(), [_series(p, p, p)])[0]
    for k in TALIB_KERNELS:
        _assert_talib(k, cols, ours)
    for name in ("adx_14", "adxr_14", "dx_14", "plus_di_14", "minus_di_14", "plus_dm_14", "minus_dm_14",
                 "aroonosc_14"):
        v = ours[name]
        assert (v[~np.isnan(v)] == 0.0).all(), name
    assert (ours["aroon_14.aroonup"][14:] == 100.0).all() and (ours["aroon_14.aroondown"][14:] == 100.0).all()
    assert (ours["sar_0.02_0.2"][1:] == 42.0).all()


def test_flat_stretches_and_close_only_bars_follow_talib():
    """Flat, then moving, then flat again (DX carries its last value); and bars with high == low
    == close (close-only updates), where TR comes from close-to-close moves."""
    rng = np.random.default_rng(11)
    c = np.concatenate([np.full(40, 5.0), 5 + np.cumsum(rng.normal(0, 0.1, 60)), np.full(50, 6.0)])
    h = c + 0.05 * (np.arange(len(c)) % 3 == 0)
    lo = c - 0.05 * (np.arange(len(c)) % 4 == 0)
    walk = np.round(100 + np.cumsum(rng.normal(0, 1, 150)), 0)  # many ties and repeats
    cases = [(h, lo, c), (walk, walk, walk)]
    for (hi, low, cl), ours in zip(cases, _run(trend.defaults(), [_series(*x) for x in cases])):
        for k in TALIB_KERNELS:
            _assert_talib(k, {"high": hi, "low": low, "close": cl}, ours)


def test_tiny_ranges_follow_talibs_zero_tests():
    """The bundled TA-Lib treats a smoothed true range as zero only when it is exactly 0, and a
    +DI + -DI sum as zero below 1e-14: ranges of 1e-16 still give DI values, and DX is defined
    only once the DI sum passes 1e-14."""
    rng = np.random.default_rng(5)
    n = 120
    c = 1.0 + np.cumsum(rng.normal(0, 1e-16, n))
    h = c + np.abs(rng.normal(0, 1e-16, n))
    lo = c - np.abs(rng.normal(0, 1e-16, n))
    x = 1e-16 * (1 + rng.random(n))
    cases = [(h, lo, c), (x + 1e-16 * rng.random(n), x - 1e-16 * rng.random(n), x),
             (1.0 + 1e-16 * np.arange(40), np.zeros(40), np.full(40, 0.5))]
    for (hi, low, cl), ours in zip(cases, _run(trend.defaults(), [_series(*x) for x in cases])):
        for k in TALIB_KERNELS:
            _assert_talib(k, {"high": hi, "low": low, "close": cl}, ours)
    assert np.nanmax(_run([trend.PLUS_DI(14)], [_series(*cases[0])])[0]["plus_di_14"]) > 0


def test_aroon_ties_count_the_latest_extreme():
    high = np.ones(30)
    low = np.zeros(30)
    high[[3, 8]] = 10.0  # equal highs: bars since the high counts from bar 8
    low[[2, 6]] = -5.0   # equal lows: from bar 6
    ours = _run([trend.AROON(14), trend.AROONOSC(14)], [_series(high, low, (high + low) / 2)])[0]
    f = 100.0 / 14
    assert ours["aroon_14.aroonup"][14] == f * (14 - 6)
    assert ours["aroon_14.aroondown"][14] == f * (14 - 8)
    assert ours["aroonosc_14"][14] == f * (8 - 6)
    for k in (trend.AROON(14), trend.AROONOSC(14)):
        _assert_talib(k, {"high": high, "low": low}, ours)


def test_sar_acceleration_above_maximum_is_lowered():
    s = load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0]
    c = {k: v[:500] for k, v in s.columns.items()}
    for k in (trend.SAR(0.3, 0.2), trend.SAR(0.0, 0.2), trend.SAR(0.05, 0.5)):
        _assert_talib(k, c, _run([k], [BarSeries(name="g", columns=c)])[0])


def test_small_periods_follow_talib():
    s = load_bars(shared_file("bars/eurusd_1h_2017-2018.csv"))[0]
    c = {k: v[:600] for k, v in s.columns.items()}
    kernels = [K(p) for p in (2, 3, 5) for K in (trend.ADX, trend.ADXR, trend.DX, trend.PLUS_DI, trend.MINUS_DI,
                                                 trend.PLUS_DM, trend.MINUS_DM, trend.AROON, trend.AROONOSC)]
    kernels += [trend.PLUS_DM(1), trend.MINUS_DM(1)]
    ours = _run(kernels, [BarSeries(name="e", columns=c)])[0]
    for k in kernels:
        _assert_talib(k, c, ours)


def test_one_bar_di_is_refused():
    # TA-Lib's period-1 DI drops the factor 100; we do not mirror that quirk.
    with pytest.raises(ConfigError):
        trend.PLUS_DI(1)
    with pytest.raises(ConfigError):
        trend.ADX(1)


def test_defaults_layout():
    names = [o for k in trend.defaults() for o in k.outputs]
    assert names == ["sar_0.02_0.2", "adx_14", "adxr_14", "dx_14", "plus_di_14", "minus_di_14", "plus_dm_14",
                     "minus_dm_14", "aroon_14.aroondown", "aroon_14.aroonup", "aroonosc_14",
                     "ichimoku_9_26_52.tenkan", "ichimoku_9_26_52.kijun", "ichimoku_9_26_52.senkou_a",
                     "ichimoku_9_26_52.senkou_b", "ichimoku_9_26_52.chikou"]
    for k in trend.defaults():
        assert k.family == "trend"
        if k.talib:
            fn = abstract.Function(k.talib)
            fn.parameters = k.talib_kwargs()
            assert k.lookback == fn.lookback, k.name


# --------------------------------------------------------------- engine == Indicator


def test_engine_rows_with_staggered_starts_equal_indicators():
    """Rows that start at different steps, skip bars (only some rows close at a step) and are reset
    give, row by row, exactly what one Indicator per kernel gives on that row's bars."""
    src = load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0].columns
    kernels = trend.defaults()
    engine = FeatureEngine(kernels)
    starts = (0, 7, 40, 95)
    offsets = [0, 300, 900, 1500]  # where in the file each row's bars come from
    n_rows = len(starts)
    engine.grow(n_rows)
    rng = np.random.default_rng(2)
    fed = [0] * n_rows             # bars fed to each row since its (re)start
    got = [[] for _ in range(n_rows)]
    for step in range(320):
        if step == 160:            # row 2 forgets everything and starts over elsewhere in the file
            engine.reset([2])
            fed[2], got[2], offsets[2] = 0, [], 1400
        rows = [r for r in range(n_rows) if step >= starts[r] and (step < 120 or rng.random() < 0.7)]
        if not rows:
            continue
        idx = [offsets[r] + fed[r] for r in rows]
        bars = {f: src[f][idx] for f in ("open", "high", "low", "close", "volume")}
        vals = np.asarray(engine.step(bars, rows).values)
        for j, r in enumerate(rows):
            got[r].append(vals[j])
            fed[r] += 1
    for r in range(n_rows):
        want = []
        inds = [Indicator(k) for k in kernels]
        for i in range(fed[r]):
            bar = {f: float(src[f][offsets[r] + i]) for f in ("open", "high", "low", "close", "volume")}
            row = []
            for ind in inds:
                v = ind.update(**bar)
                row.extend(v if isinstance(v, tuple) else (v,))
            want.append(row)
        np.testing.assert_array_equal(np.array(got[r]), np.array(want), err_msg=f"row {r}")
        assert fed[r] > 78  # every output, Ichimoku's senkou_b included, got past its warm-up
