"""The stats family (core/features/stats.py) against independent NumPy references.

Every feature TA-Lib does not compute is checked on every recorded bar file, whole series, against
a straightforward reference computed over all windows at once (sliding_window_view, two-pass
centred moments), not the running sums the kernels keep. Tolerances, per feature:

* min, max, percentile rank: exact. Same returns (the same division of the same two closes), and
  an order statistic or a count adds no rounding.
* log returns: 4 ulp (1e-15 relative, at least 1e-15 absolute): the same ln(close_t / close_{t-h})
  on the same ratio; NumPy's vectorised log may differ from the scalar path by an ulp or two.
* mean: 1e-12 of the window's mean absolute return (the mean itself may cancel to ~0, so its own
  size is no scale). The kernel's compensated running sum is exact to ~1e-16 of that scale.
* std: 1e-10 relative. Central moments formed from raw power sums lose log10(1 + (mean/std)^2)
  digits, a fraction of one for 20-bar returns; the rest is the running sums' ~1e-16.
* z-score, skew, kurt, autocorrelation (dimensionless): 1e-9 * max(1, |reference|), the TA-Lib
  harness tolerance. Skewness near 0 is a difference of comparable terms, hence absolute there.

The same tolerances hold on synthetic series with volatility regimes from 1e-7 to 0.3 a bar and
crashes/spikes of -90% .. +3000% (the dynamic range that defeats plain running power sums). Edge
cases (flat prices, zero closes, constant returns) check the exact constant-window handling. BETA
and CORREL (TA-Lib) are checked bit for bit on synthetic series built to reach every branch of the
bundled TA-Lib's rebuild logic, and for the missing-reference policy. Engine rows that start at
different bars equal the incremental object exactly, and the GPU code path (rare branches computed
for every row) equals the host path.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import talib
import talib.abstract
from numpy.lib.stride_tricks import sliding_window_view

from core.features import stats
from core.features._run import run_series
from core.features.barfile import BarSeries, load_bars
from core.features.engine import FeatureEngine
from core.features.incremental import Indicator
from tests.conftest import shared_file

BAR_FILES = ("btc_perp_1m_2022-01.csv", "goog_daily_2004-2013.csv", "eurusd_1h_2017-2018.csv",
             "kraken_xbtusdt_1m_rest.json", "binance_adabtc_1m_klines.csv")
N = 20  # the moments' window


# ------------------------------------------------------------------------------ references


def returns(close: np.ndarray) -> np.ndarray:
    """r_t = close_t / close_{t-1} - 1 (0 after a close of 0); r_0 = NaN."""
    prev = close[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(prev == 0, 0.0, close[1:] / prev - 1.0)
    return np.r_[np.nan, r]


def _windows(r: np.ndarray, n: int) -> np.ndarray:
    """Row t - n of the result is (r_{t-n+1}, ..., r_t), for t >= n (none for a short series)."""
    if len(r) - 1 < n:
        return np.empty((0, n))
    return sliding_window_view(r[1:], n)


def _pad(v: np.ndarray, total: int) -> np.ndarray:
    return np.r_[np.full(total - len(v), np.nan), v]


def reference(close: np.ndarray) -> dict[str, np.ndarray]:
    """Every non-TA-Lib stats feature of one close series, computed window by window."""
    m = len(close)
    r = returns(close)
    w = _windows(r, N)
    const = np.ptp(w, axis=1) == 0
    mean = w.mean(axis=1)
    d = w - mean[:, None]
    m2, m3, m4 = (d ** 2).mean(axis=1), (d ** 3).mean(axis=1), (d ** 4).mean(axis=1)
    std = np.sqrt((d ** 2).sum(axis=1) / (N - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(const, np.nan, (w[:, -1] - mean) / std)
        skew = np.sqrt(N * (N - 1.0)) / (N - 2.0) * m3 / m2 ** 1.5
        kurt = ((N * N - 1.0) * m4 / m2 ** 2 - 3.0 * (N - 1.0) ** 2) / ((N - 2.0) * (N - 3.0))
    out = {
        f"ret_mean_{N}": mean, f"ret_std_{N}": np.where(const, 0.0, std), f"ret_zscore_{N}": z,
        f"ret_min_{N}": w.min(axis=1), f"ret_max_{N}": w.max(axis=1),
        f"ret_pctrank_{N}": (w <= w[:, -1:]).mean(axis=1),
        f"ret_skew_{N}": np.where(const, np.nan, skew), f"ret_kurt_{N}": np.where(const, np.nan, kurt),
    }
    out = {k: _pad(v, m) for k, v in out.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        for h in (1, 5, 15, 60):
            lr = np.log(close[h:] / close[:-h]) if m > h else np.empty(0)
            out[f"logret_{h}"] = _pad(np.where(np.isfinite(lr), lr, np.nan), m)  # ln 0 is no value
    # lag-1 autocorrelation: (r_{t-19..t}) against (r_{t-20..t-1}), for t >= 21
    wa = _windows(r, N + 1)
    x, y = wa[:, 1:], wa[:, :-1]
    dx, dy = x - x.mean(axis=1)[:, None], y - y.mean(axis=1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (dx * dy).sum(axis=1) / np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    flat = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    out[f"autocorr_{N}_1"] = _pad(np.where(flat, np.nan, np.clip(rho, -1, 1)), m)
    return out


def _scale(close: np.ndarray) -> np.ndarray:
    """Mean absolute return of each window: the scale the mean is measured against."""
    return _pad(np.abs(_windows(returns(close), N)).mean(axis=1), len(close))


# ------------------------------------------------------------------------------- our values

PLAIN = [k for k in stats.defaults() if not k.talib]
_CACHE: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}


def _ours(series: list[BarSeries], kernels=None) -> list[dict[str, np.ndarray]]:
    engine = FeatureEngine(PLAIN if kernels is None else kernels)
    return [dict(zip(engine.names, v.T)) for v in run_series(engine, series)]


def _computed() -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Our values on every bar file: one engine, one row per file."""
    if not _CACHE:
        series = [load_bars(shared_file(f"bars/{f}"))[0] for f in BAR_FILES]
        for f, s, vals in zip(BAR_FILES, series, _ours(series)):
            _CACHE[f] = (s.columns["close"], vals)
    return _CACHE


def _series(close: np.ndarray, ref: np.ndarray | None = None) -> BarSeries:
    n = len(close)
    cols = {"ts_ns": np.arange(n, dtype=np.int64) * 60_000_000_000, "open": close, "high": close,
            "low": close, "close": close, "volume": np.ones(n)}
    if ref is not None:
        cols["ref_close"] = ref
    return BarSeries(name="synthetic", columns=cols)


def _check(name: str, got: np.ndarray, want: np.ndarray, close: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(want)), (
        f"{name}: NaN mismatch at bars {np.flatnonzero(np.isnan(got) != np.isnan(want))[:10]}")
    ok = ~np.isnan(want)
    g, w = got[ok], want[ok]
    if name.startswith(("ret_min", "ret_max", "ret_pctrank")):
        tol = np.zeros_like(w)
    elif name.startswith("logret"):
        tol = 1e-15 * np.maximum(1.0, np.abs(w))
    elif name.startswith("ret_mean"):
        tol = 1e-12 * _scale(close)[ok]
    elif name.startswith("ret_std"):
        tol = 1e-10 * w
    else:
        tol = 1e-9 * np.maximum(1.0, np.abs(w))
    bad = np.flatnonzero(np.abs(g - w) > tol)
    assert bad.size == 0, (f"{name}: {bad.size} values off, first at bar {np.flatnonzero(ok)[bad[0]]}: "
                           f"ours {g[bad[0]]!r}, reference {w[bad[0]]!r}")


# ------------------------------------------------------------------------------------ tests


def test_names_order_and_warmups():
    ks = stats.defaults()
    assert [k.name for k in ks] == [
        "ret_mean_20", "ret_std_20", "ret_zscore_20", "ret_min_20", "ret_max_20", "ret_pctrank_20",
        "ret_skew_20", "ret_kurt_20", "logret_1", "logret_5", "logret_15", "logret_60", "autocorr_20_1",
        "beta_5", "correl_30"]
    assert {k.family for k in ks} == {"stats"}
    lookbacks = {k.name: k.lookback for k in ks}
    assert lookbacks["autocorr_20_1"] == 21 and lookbacks["logret_60"] == 60
    assert lookbacks["ret_kurt_20"] == 20
    for k in ks:
        doc = type(k).__doc__
        assert all(f"{part}:" in doc for part in ("Formula", "Edge cases", "Reference")), k.name
        if k.talib:
            assert k.lookback == talib.abstract.Function(k.talib, **k.talib_kwargs()).lookback, k.name


@pytest.mark.parametrize("bar_file", BAR_FILES)
@pytest.mark.parametrize("name", [o for k in PLAIN for o in k.outputs])
def test_equals_numpy_reference(bar_file, name):
    close, ours = _computed()[bar_file]
    _check(name, ours[name], reference(close)[name], close)


def test_flat_prices():
    close = np.full(120, 42.5)
    ours = _ours([_series(close, close * 3)], stats.defaults())[0]
    last = {k: v[-1] for k, v in ours.items()}
    assert last["ret_mean_20"] == 0 and last["ret_std_20"] == 0
    assert last["ret_min_20"] == last["ret_max_20"] == 0 and last["ret_pctrank_20"] == 1
    for name in ("logret_1", "logret_5", "logret_15", "logret_60"):
        assert last[name] == 0
    for name in ("ret_zscore_20", "ret_skew_20", "ret_kurt_20", "autocorr_20_1"):
        assert np.isnan(ours[name][20:]).all(), name
    # TA-Lib's zero tests: a flat reference has no variance, so beta and correlation are 0.
    assert last["beta_5"] == 0 and last["correl_30"] == 0


def test_huge_move_then_flat_is_exact_and_accurate():
    """A 40x jump leaves 4th-power sums ~1e22 times those of the quiet returns after it; the
    compensated sums and their rebuild keep those windows accurate, and the flat stretch has
    exactly zero spread."""
    rng = np.random.default_rng(3)
    close = 100 * np.cumprod(1 + 1e-4 * rng.standard_normal(400))
    close[150] *= 40.0  # up 3900%, then down 97.5%
    close[260:330] = close[260]
    close[331] = 0.0  # a zero close: the return after it counts as 0
    ours = _ours([_series(close)])[0]
    ref = reference(close)
    for name in ref:
        _check(name, ours[name], ref[name], close)
    flat = slice(280, 330)  # windows of returns 261..329, all exactly 0
    assert (ours["ret_std_20"][flat] == 0).all() and (ours["ret_mean_20"][flat] == 0).all()
    assert np.isnan(ours["ret_skew_20"][flat]).all() and np.isfinite(ours["ret_skew_20"][330:]).all()


def _regimes(seed: int, n: int = 3000) -> np.ndarray:
    """Volatility from 1e-7 to 0.3 a bar in blocks of 100 bars, crashes and spikes (-90% .. +3000%),
    flat stretches: the dynamic range that defeats plain running power sums."""
    rng = np.random.default_rng(seed)
    vol = np.exp(rng.uniform(np.log(1e-7), np.log(0.3), size=n // 100)).repeat(100)[:n]
    r = vol * rng.standard_normal(n)
    spikes = rng.random(n) < 0.003
    r[spikes] = rng.choice([-0.9, -0.5, 2.0, 5.0, 30.0], spikes.sum())
    close = 100 * np.cumprod(1 + r)
    for i in np.flatnonzero(rng.random(n // 50) < 0.2):
        close[i * 50: i * 50 + rng.integers(5, 45)] = close[i * 50]
    return close


def test_extreme_regimes_stay_accurate():
    closes = [_regimes(seed) for seed in range(4)]
    for close, ours in zip(closes, _ours([_series(c) for c in closes])):
        ref = reference(close)
        for name in ref:
            _check(name, ours[name], ref[name], close)


def test_constant_nonzero_returns_count_as_constant():
    close = 2.0 ** np.arange(40)  # every return exactly 1.0
    ours = _ours([_series(close)])[0]
    assert (ours["ret_mean_20"][20:] == 1.0).all() and (ours["ret_std_20"][20:] == 0).all()
    assert np.isnan(ours["ret_zscore_20"][20:]).all() and np.isnan(ours["autocorr_20_1"][21:]).all()


def test_warmup_nan_exactly_before_lookback():
    close = 100 * np.cumprod(1 + 0.01 * np.random.default_rng(0).standard_normal(100))
    ours = _ours([_series(close)])[0]
    for k in PLAIN:
        v = ours[k.name]
        assert np.isnan(v[: k.lookback]).all() and np.isfinite(v[k.lookback:]).all(), k.name


# ---------------------------------------------------------------- BETA and CORREL (TA-Lib)


def stress_series(n: int = 2200, seed: int = 11) -> list[tuple[np.ndarray, np.ndarray]]:
    """(close, ref_close) pairs that reach every branch of the bundled TA-Lib's BETA and CORREL:
    each rebuild test (cancellation on either side, a removed square dwarfing its sum, the
    every-32n-bars recount), zero prices, flat stretches."""
    rng = np.random.default_rng(seed)

    def walk(start, vol):
        return start * np.cumprod(1 + vol * rng.standard_normal(n))

    out = []
    a = walk(100, 0.01)
    a[700:] = 5000 + 1e-5 * rng.standard_normal(n - 700)  # a jump, then near-flat: cancellation
    b = walk(50, 0.01)
    b[1300:] = 9000 + 1e-5 * rng.standard_normal(n - 1300)
    out += [(a, b), (b, a)]
    a, b = walk(100, 1e-4), walk(100, 1e-4)  # lone spikes in quiet returns
    a[400] *= 50
    a[1500] *= 0.02
    b[900] *= 30
    out += [(a, b), (b, a)]
    a, b = walk(100, 0.01), walk(100, 0.01)  # flat stretches, zero prices
    a[100:200] = a[100]
    a[300:302] = 0.0
    b[1000:1100] = 7.1
    b[400] = 0.0
    out.append((a, b))
    out.append((1e6 + np.cumsum(1e-4 * rng.standard_normal(n)), walk(30, 0.002)))
    out.append((walk(100, 0.01), walk(200, 0.02)))
    return out


def _talib(kernel, close: np.ndarray, ref: np.ndarray) -> np.ndarray:
    cols = {"close": close, "ref_close": ref}
    return getattr(talib, kernel.talib)(*(cols[f] for f in kernel.talib_inputs), **kernel.talib_kwargs())


@pytest.mark.parametrize("kernel", [stats.BETA(5), stats.CORREL(30), stats.BETA(2), stats.CORREL(7)],
                         ids=lambda k: k.name)
def test_beta_correl_bit_exact_on_stress_series(kernel):
    """The kernels repeat TA-Lib's arithmetic operation for operation (anchored sums, the rebuild
    tests and their order, sequential sums in the rebuild), so equality is exact, not 1e-9."""
    pairs = stress_series()
    ours = _ours([_series(a, b) for a, b in pairs], [kernel])
    for (a, b), got in zip(pairs, ours):
        np.testing.assert_array_equal(got[kernel.name], _talib(kernel, a, b))


def test_beta_is_the_slope_on_the_reference():
    rng = np.random.default_rng(2)
    ref = 100 * np.cumprod(1 + 0.01 * rng.standard_normal(60))
    r = returns(ref)
    r[0] = 0
    close = 10 * np.cumprod(1 + 2.5 * r)
    got = _ours([_series(close, ref)], [stats.BETA(5)])[0]["beta_5"]
    np.testing.assert_allclose(got[5:], 2.5, rtol=1e-9)


@pytest.mark.parametrize("kernel", [stats.BETA(5), stats.CORREL(30)], ids=lambda k: k.name)
def test_missing_reference_skips_the_bar(kernel):
    """A bar without a reference neither advances BETA/CORREL nor has a value; on the other bars
    they equal TA-Lib on the series of the bars that have a reference, warm-up included."""
    rng = np.random.default_rng(4)
    n = 1500
    close = 100 * np.cumprod(1 + 0.01 * rng.standard_normal(n))
    ref = 80 * np.cumprod(1 + 0.01 * rng.standard_normal(n))
    missing = rng.random(n) < 0.2
    missing[:3] = True  # the first bars have no reference: the warm-up waits for it
    missing[700:760] = True
    ref_in = np.where(missing, np.nan, ref)
    ref_in[100] = np.inf  # not finite: treated as missing too
    missing[100] = True
    got = _ours([_series(close, ref_in)], [kernel])[0][kernel.name]
    assert np.isnan(got[missing]).all()
    keep = ~missing
    np.testing.assert_array_equal(got[keep], _talib(kernel, close[keep], ref[keep]))


# --------------------------------------------------------- incremental == engine, staggered


class _AllRows(types.ModuleType):
    """NumPy under another name: the kernels then take the path they take on a GPU (rare per-row
    branches computed for every row and selected, instead of for the rows that need them)."""

    def __init__(self) -> None:
        super().__init__("numpy_all_rows")

    def __getattr__(self, name):
        return getattr(np, name)


def test_gpu_path_equals_host_path():
    closes = [_regimes(seed, 1200) for seed in (7, 8)]
    refs = [c[::-1].copy() for c in closes]
    refs[0][::9] = np.nan
    series = [_series(c, r) for c, r in zip(closes, refs)]
    kernels = stats.defaults()
    host = run_series(FeatureEngine(kernels), series)
    other = run_series(FeatureEngine(stats.defaults(), xp=_AllRows()), series)
    for a, b in zip(host, other):
        np.testing.assert_array_equal(a, b)


def test_incremental_equals_engine_with_staggered_rows():
    """Rows joining at different bars (and skipping bars) equal one Indicator per series, exactly."""
    rng = np.random.default_rng(9)
    m = 260
    closes = [100 * np.cumprod(1 + 0.01 * rng.standard_normal(m)) for _ in range(3)]
    refs = [50 * np.cumprod(1 + 0.02 * rng.standard_normal(m)) for _ in range(3)]
    refs[1][rng.random(m) < 0.1] = np.nan
    closes[2][80:120] = closes[2][80]
    start = [0, 23, 61]  # bar index at which each row joins
    kernels = stats.defaults()
    engine = FeatureEngine(kernels)
    engine.grow(3)
    got = [[] for _ in range(3)]
    for i in range(m):
        # row j joins at step start[j] and gets its next bar each step; row 1 sits out every 7th
        live = [j for j in range(3) if i >= start[j] and not (j == 1 and i % 7 == 0)]
        idx = {j: len(got[j]) for j in live}
        live = [j for j in live if idx[j] < m]
        if not live:
            continue
        bars = {f: np.array([src[j][idx[j]] for j in live])
                for f, src in (("close", closes), ("ref_close", refs))}
        for f in ("open", "high", "low"):
            bars[f] = bars["close"]
        bars["volume"] = np.ones(len(live))
        vals = engine.step(bars, np.array(live)).values
        for j, v in zip(live, vals):
            got[j].append(v)
    assert min(len(g) for g in got) > 150
    for j in range(3):
        inds = [Indicator(k) for k in kernels]
        want = []
        for i in range(len(got[j])):
            want.append([ind.update(close=closes[j][i], ref_close=refs[j][i]) for ind in inds])
        np.testing.assert_array_equal(np.array(got[j]), np.array(want))
