"""The live feature book on the GPU (CuPy): equal to the NumPy book over a real bar stream cut into
chunks, with restarts from snapshots in between, and its snapshots portable between the devices
(a GPU book's snapshot continues on a CPU book and the other way round).

Runs where CuPy sees a CUDA device (``python -m pytest tests/test_features_gpu.py`` on the GPU
machine); skipped elsewhere, with the reason. The bit-exact CPU checks are in
tests/test_feature_worker.py; the GPU differs from NumPy in the last bits of some features, so
values here agree to 1e-9 relative (bench/features_gpu.py measured 1.2e-14 at most), with NaN at
the same places.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from core.features._xp import array_module
from core.features.book import FeatureBook
from core.features.featureset import FeatureSet
from tests.test_feature_worker import by_key, live_bars


@pytest.fixture(scope="module")
def cp():
    try:
        return array_module("gpu")
    except ConfigError as exc:
        pytest.skip(str(exc))


def test_gpu_book_equals_the_cpu_book_across_restarts_on_either_device(cp):
    fs = FeatureSet()
    bars = live_bars(loops=1)
    want_values, want_refused = FeatureBook(fs).on_bars(bars)
    want = by_key(bars, want_values)

    rng = np.random.default_rng(7)
    device = cp
    book = FeatureBook(fs, device)
    got, refused, restarts, i = {}, 0, [], 0
    while i < len(bars):
        chunk = bars[i:i + int(rng.integers(20, 120))]
        values, r = book.on_bars(chunk)
        assert isinstance(values, np.ndarray)  # the book hands host arrays to the publisher
        got.update(by_key(chunk, values))
        refused += r.size
        i += len(chunk)
        if rng.random() < 0.5:  # a restart, alternately on the other device
            data = book.snapshot()
            device = np if device is cp else cp
            book = FeatureBook(fs, device)
            book.restore(data)
            restarts.append("cpu" if device is np else "gpu")
    assert {"cpu", "gpu"} <= set(restarts), restarts
    assert refused == want_refused.size
    assert got.keys() == want.keys()
    g = np.array([got[k] for k in want])
    w = np.array([want[k] for k in want])
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    both = ~np.isnan(w)
    rel = np.abs(g[both] - w[both]) / np.maximum(1.0, np.abs(w[both]))
    assert rel.max() <= 1e-9, f"largest relative difference {rel.max():.2e}"
