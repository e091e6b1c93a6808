"""Every feature TA-Lib also computes equals TA-Lib on every recorded bar file.

Tolerance: |ours - TA-Lib| <= 1e-9 * max(1, |TA-Lib|) wherever TA-Lib gives a value, and NaN exactly
where TA-Lib's warm-up gives NaN. Our values come from the vectorized engine running all bar files
at once (one row per file), so per-row warm-up phases are exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
import talib

from core.features._run import run_series
from core.features.barfile import load_bars
from core.features.catalogue import FAMILIES, default_kernels
from core.features.engine import FeatureEngine
from tests.conftest import shared_file

BAR_FILES = ("btc_perp_1m_2022-01.csv", "goog_daily_2004-2013.csv", "eurusd_1h_2017-2018.csv",
             "kraken_xbtusdt_1m_rest.json", "binance_adabtc_1m_klines.csv")
KERNELS = [k for k in default_kernels() if k.talib]
_CACHE: dict[str, dict] = {}


def _with_reference(series):
    # Features against a reference symbol (BETA, CORREL) need a second series aligned bar by bar;
    # the bar's own open is a real, correlated one.
    series.columns.setdefault("ref_close", series.columns["open"])
    return series


def _computed(family: str) -> dict:
    """Our values of one family's features on every bar file (one engine per family, so a
    family's failure stays its own)."""
    if family not in _CACHE:
        series = [_with_reference(load_bars(shared_file(f"bars/{f}"))[0]) for f in BAR_FILES]
        module = next(m for m in FAMILIES if m.__name__.rsplit(".", 1)[1] == family)
        engine = FeatureEngine(module.defaults())
        values = run_series(engine, series)
        _CACHE[family] = {f: (s, dict(zip(engine.names, v.T))) for f, s, v in zip(BAR_FILES, series, values)}
    return _CACHE[family]


def test_talib_named_features_exist():
    assert len(KERNELS) >= 50, f"only {len(KERNELS)} TA-Lib features"
    for k in KERNELS:
        assert k.name.startswith(k.talib.lower()), k.name


@pytest.mark.parametrize("bar_file", BAR_FILES)
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_equals_talib(bar_file, kernel):
    series, ours = _computed(kernel.family)[bar_file]
    cols = series.columns
    args = [np.ascontiguousarray(cols[f], dtype=np.float64) for f in kernel.talib_inputs]
    ref = getattr(talib, kernel.talib)(*args, **kernel.talib_kwargs())
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(refs) == len(kernel.outputs)
    for name, want in zip(kernel.outputs, refs):
        got = ours[name]
        nan_want = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan_want), (
            f"{name}: NaN mismatch at bars {np.flatnonzero(np.isnan(got) != nan_want)[:10]}")
        err = np.abs(got[~nan_want] - want[~nan_want])
        tol = 1e-9 * np.maximum(1.0, np.abs(want[~nan_want]))
        bad = np.flatnonzero(err > tol)
        assert bad.size == 0, (f"{name}: {bad.size} values off, first at bar {np.flatnonzero(~nan_want)[bad[0]]}: "
                               f"ours {got[~nan_want][bad[0]]!r} TA-Lib {want[~nan_want][bad[0]]!r}")
