"""Training data for the models: windows, targets, splits, chunked features, synthetic bars."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import DataFileError
from core.features.barfile import load_bars
from core.features.featureset import FeatureSet
from core.features.offline import compute
from core.models.data import (HORIZONS_BARS, MODEL_FEATURES, WINDOW_BARS, feature_matrix, forward_log_returns,
                              load_datasets, sliding_windows, synthetic_bars, walk_forward)
from tests.conftest import shared_file


def test_sliding_windows_are_the_all_finite_runs():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((60, 4))
    f[[5, 30, 31], 2] = np.nan
    end, x = sliding_windows(f, 8)
    want = [e for e in range(7, 60) if np.isfinite(f[e - 7:e + 1]).all()]
    assert end.tolist() == want
    for e, w in zip(end, x):
        np.testing.assert_array_equal(w, f[e - 7:e + 1])


def test_forward_log_returns():
    close = np.array([100.0, 110.0, 99.0, 120.0])
    y = forward_log_returns(close, (1, 2))
    np.testing.assert_allclose(y[:, 0], [np.log(1.1), np.log(0.9), np.log(120 / 99), np.nan])
    np.testing.assert_allclose(y[:, 1], [np.log(0.99), np.log(120 / 110), np.nan, np.nan])


def test_walk_forward_tests_only_on_the_future():
    splits = list(walk_forward(100, folds=4, min_train=0.6))
    assert len(splits) == 4
    covered = []
    for train, test in splits:
        assert train.start == 0 and train.stop == test.start  # everything before, nothing after
        covered.extend(range(test.start, test.stop))
    assert covered == list(range(60, 100))


def test_chunked_feature_matrix_equals_the_streaming_run():
    series = load_bars(shared_file("bars/goog_daily_2004-2013.csv"))[0]
    chunked = feature_matrix(series, chunk_bars=500, warmup_bars=1000)
    fs = FeatureSet()
    whole = compute([series], fs)[0][:, [fs.names.index(n) for n in MODEL_FEATURES]]
    np.testing.assert_array_equal(np.isnan(chunked), np.isnan(whole))
    ok = np.isfinite(whole)
    np.testing.assert_allclose(chunked[ok], whole[ok], rtol=1e-9, atol=1e-9)
    assert ok.all(axis=1).sum() > 2000  # past warm-up every model feature is defined on real bars


def test_synthetic_bars_are_seeded_and_consistent():
    a, b = synthetic_bars(2000, seed=5), synthetic_bars(2000, seed=5)
    for k in a.columns:
        np.testing.assert_array_equal(a.columns[k], b.columns[k])
    c = a.columns
    assert (c["high"] >= np.maximum(c["open"], c["close"])).all()
    assert (c["low"] <= np.minimum(c["open"], c["close"])).all()
    assert (c["volume"] > 0).all()
    assert not np.array_equal(c["close"], synthetic_bars(2000, seed=6).columns["close"])


def test_supervised_samples_from_real_bars():
    ds = load_datasets([shared_file("bars/eurusd_1h_2017-2018.csv")])[0]
    x, y, end = ds.supervised()
    assert x.shape[1:] == (WINDOW_BARS, len(MODEL_FEATURES)) and y.shape[1] == len(HORIZONS_BARS)
    assert np.isfinite(x).all() and np.isfinite(y).all()
    i = len(end) // 2
    np.testing.assert_allclose(y[i, 0], np.log(ds.close[end[i] + 1] / ds.close[end[i]]))
    np.testing.assert_array_equal(x[i, -1], ds.features[end[i]])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFileError, match="nosuch"):
        load_datasets([str(tmp_path / "nosuch.csv")])
