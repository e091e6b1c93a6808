"""The feature engine's contract, for every default feature: the incremental object equals the
vectorized engine, rows at different warm-up points do not interfere, snapshots resume exactly,
and degenerate input (flat prices, zero volume, gaps, NaN bars) gives defined values, never a crash."""

import re

import numpy as np
import pytest

from core.errors import ConfigError, SchemaError
from core.features._run import run_series
from core.features._xp import array_module
from core.features.barfile import BarSeries, load_bars
from core.features.catalogue import default_kernels
from core.features.engine import FeatureEngine
from core.features.featureset import FeatureSet
from core.features.incremental import Indicator
from tests.conftest import shared_file

KERNELS = default_kernels()
N_BARS = 400
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*(_[0-9][0-9.e+-]*)*(\.[a-z_]+)?(@htf[0-9])?$")


@pytest.fixture(scope="module")
def eurusd() -> BarSeries:
    s = load_bars(shared_file("bars/eurusd_1h_2017-2018.csv"))[0]
    cols = {k: v[:N_BARS] for k, v in s.columns.items()}
    cols["ref_close"] = cols["open"]
    _sides(cols)
    return BarSeries(name=s.name, columns=cols)


@pytest.fixture(scope="module")
def goog() -> BarSeries:
    s = load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0]
    cols = {k: v[:N_BARS] for k, v in s.columns.items()}
    cols["ref_close"] = cols["close"][::-1].copy()
    _sides(cols)
    return BarSeries(name=s.name, columns=cols)


def _sides(cols: dict) -> None:
    # These files have no aggressor split; give one, so trade-side features are exercised.
    share = 0.5 + 0.4 * np.sin(np.arange(cols["volume"].shape[0]))
    cols["buy_volume"] = cols["volume"] * share
    cols["sell_volume"] = cols["volume"] - cols["buy_volume"]


def test_at_least_100_distinct_well_formed_features():
    names = FeatureSet().names
    assert len(set(names)) == len(names) >= 100
    bad = [n for n in names if not _NAME.match(n)]
    assert not bad, bad
    for k in KERNELS:
        assert k.family and k.__doc__, k
        if k.talib:
            assert k.name.split("_")[0] == k.talib.lower().split("_")[0], k.name


def test_device_switch_errors_are_clear():
    with pytest.raises(ConfigError, match="one of"):
        array_module("tpu")
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is None:
        with pytest.raises(ConfigError, match="CuPy"):
            array_module("gpu")


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_incremental_equals_vectorized_with_staggered_rows(kernel, eurusd, goog):
    ind = Indicator(kernel)
    c = eurusd.columns
    fields = [f for f in c if f != "ts_ns"]
    inc = []
    for i in range(N_BARS):
        ind.update(**{f: float(c[f][i]) for f in fields}, ts_ns=int(c["ts_ns"][i]))
        inc.append(np.atleast_1d(ind.value))
    inc = np.array(inc)
    # row 0: the same series from its start; row 1: another series; row 2: the same series
    # joining 57 bars later, so every step mixes rows at different warm-up points.
    engine = FeatureEngine([kernel], n=3)
    out = [[], [], []]
    g = goog.columns
    for i in range(N_BARS):
        live = [0, 1] + ([2] if i >= 57 else [])
        src = [(c, i), (g, i)] + ([(c, i - 57)] if i >= 57 else [])
        bars = {f: np.array([s[f][j] for s, j in src]) for f in c}
        vals = engine.step(bars, np.array(live)).values
        for r, v in zip(live, vals):
            out[r].append(v)
    np.testing.assert_array_equal(np.array(out[0]), inc)
    np.testing.assert_array_equal(np.array(out[2]), inc[: N_BARS - 57])
    alone = run_series(FeatureEngine([kernel]), [goog])[0]
    np.testing.assert_array_equal(np.array(out[1]), alone)
    assert ind.initialized == bool(np.isfinite(inc[-1]).all())
    assert kernel.name in repr(ind) or type(kernel).__name__ in repr(ind)
    ind.reset()
    assert not ind.initialized


def _flat(n: int, volume: float) -> BarSeries:
    ts = np.arange(n, dtype=np.int64) * 60_000_000_000
    px = np.full(n, 100.0)
    return BarSeries(name="flat", columns={"ts_ns": ts, "open": px, "high": px, "low": px, "close": px,
                                           "volume": np.full(n, volume), "buy_volume": np.full(n, volume / 2),
                                           "sell_volume": np.full(n, volume / 2), "ref_close": px * 2})


@pytest.mark.parametrize("volume", [0.0, 5.0])
def test_flat_prices_and_zero_volume_give_defined_values(volume):
    engine = FeatureEngine(KERNELS)
    vals = run_series(engine, [_flat(300, volume)])[0]
    assert not np.isinf(vals).any()
    # past every warm-up, a feature is NaN on flat input only when its formula divides by a zero
    # range or variance; each of those is documented (docs/FEATURES.md) and listed here.
    undefined = {n for n, v in zip(engine.names, vals[-1]) if np.isnan(v)}
    allowed = re.compile(r"^(ret_zscore|ret_skew|ret_kurt|autocorr)_" + ("|^vp_" if volume == 0 else ""))
    assert not {n for n in undefined if not allowed.search(n)}, sorted(undefined)


def test_refused_bar_changes_nothing_and_gaps_are_just_the_next_bar(eurusd):
    c = eurusd.columns
    clean = run_series(FeatureEngine(KERNELS), [eurusd])[0]
    engine = FeatureEngine(KERNELS, n=1)
    got = []
    for i in range(N_BARS):
        if i == 200:
            bad = {f: c[f][i: i + 1].copy() for f in c}
            bad["close"][:] = np.nan
            res = engine.step(bad)
            assert res.refused.tolist() == [0] and np.isnan(res.values).all()
            bad = {f: c[f][i: i + 1].copy() for f in c}
            bad["volume"][:] = -1.0
            assert engine.step(bad).refused.tolist() == [0]
        got.append(engine.step({f: c[f][i: i + 1] for f in c}).values[0])
    np.testing.assert_array_equal(np.array(got), clean)
    # a 30-day hole in time changes nothing: windows count bars, not time
    shifted = dict(c)
    shifted["ts_ns"] = c["ts_ns"] + np.where(np.arange(N_BARS) >= 100, 30 * 86_400_000_000_000, 0)
    gap = run_series(FeatureEngine([k for k in KERNELS if "vwap_session" not in k.name]),
                     [BarSeries(name="gap", columns=shifted)])[0]
    keep = [i for i, k in enumerate(k for k in KERNELS for _ in k.outputs) if "vwap_session" not in k.name]
    np.testing.assert_array_equal(gap, clean[:, keep])


def test_snapshot_restores_exactly_and_new_rows_do_not_disturb(eurusd, goog):
    full = run_series(FeatureEngine(KERNELS), [eurusd, goog])
    engine = FeatureEngine(KERNELS)
    engine.grow(1)
    c, g = eurusd.columns, goog.columns
    got = []
    for i in range(N_BARS):
        if i == 150:
            data = engine.snapshot()
            engine = FeatureEngine(KERNELS)
            engine.restore(data)
            engine.grow(1)  # the second series joins here
        rows = [0] if i < 150 else [0, 1]
        bars = {f: np.array([c[f][i]] + ([g[f][i - 150]] if i >= 150 else [])) for f in c}
        got.append(engine.step(bars, np.array(rows)).values)
    np.testing.assert_array_equal(np.array([v[0] for v in got]), full[0])
    np.testing.assert_array_equal(np.array([v[1] for v in got[150:]]), full[1][: N_BARS - 150])
    with pytest.raises(SchemaError, match="does not match"):
        FeatureEngine(KERNELS[:3]).restore(data)
    with pytest.raises(SchemaError, match="lack"):
        engine.step({"close": np.ones(2)})


def test_features_doc_is_generated_from_the_current_kernels():
    from pathlib import Path

    from core.features.docs import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "FEATURES.md"
    assert doc.read_text() == render(), "docs/FEATURES.md is stale: python -m core.features.docs > docs/FEATURES.md"
