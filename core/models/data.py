"""Training data for the models: feature windows and forward returns from bar series.

Every model reads the same input: the last `WINDOW_BARS` feature vectors of one symbol, restricted
to `MODEL_FEATURES` (scale-free features computable from OHLCV alone, so bar files without trade
sides or VWAP give them too). The live inference worker builds exactly this window from the
vectors on ``feat.*``; training builds it from bar files with the same feature kernels.

Example:
    >>> ds = synthetic_dataset(3_000, seed=7)
    >>> x, y, end = ds.supervised()
    >>> x.shape[1:], y.shape[1]
    ((32, 29), 3)
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import msgspec
import numpy as np

from core.errors import DataFileError, ModelError
from core.features.barfile import BarSeries, load_bars
from core.features.catalogue import kernel_by_name
from core.features.featureset import FeatureSet
from core.features._run import run_series

__all__ = [
    "MODEL_FEATURES",
    "WINDOW_BARS",
    "HORIZONS_BARS",
    "Dataset",
    "check_windows",
    "robust_scale",
    "feature_matrix",
    "forward_log_returns",
    "sliding_windows",
    "walk_forward",
    "synthetic_bars",
    "synthetic_dataset",
    "load_datasets",
]

# Scale-free features that need only OHLCV: the models' input columns, in this order.
MODEL_FEATURES: tuple[str, ...] = (
    "logret_1", "logret_5", "logret_15", "logret_60",
    "ret_std_20", "ret_zscore_20", "ret_skew_20", "ret_kurt_20", "ret_pctrank_20", "autocorr_20_1",
    "rsi_14", "willr_14", "cci_14", "cmo_14", "stoch_5_3_0_3_0.slowk", "ultosc_7_14_28", "mfi_14",
    "adx_14", "plus_di_14", "minus_di_14", "aroonosc_14",
    "natr_14", "rv_20", "parkinson_20", "garman_klass_20",
    "bop", "rocp_10", "ppo_12_26_0", "trix_30",
)
# Bars of history in one model input.
WINDOW_BARS = 32
# Forecast horizons, in bars of the input's timeframe.
HORIZONS_BARS: tuple[int, ...] = (1, 5, 15)


class Dataset(msgspec.Struct, kw_only=True):
    """One bar series with its model features.

    Attributes:
        name: where it came from.
        ts_ns: bar start times, int64 ns.
        close: close prices.
        features: (n_bars, len(MODEL_FEATURES)) float64, NaN while a feature warms up.
    """

    name: str
    ts_ns: np.ndarray
    close: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return int(self.close.shape[0])

    def supervised(self, window: int = WINDOW_BARS,
                   horizons: Sequence[int] = HORIZONS_BARS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every complete window with its forward log returns.

        Returns:
            ``(x, y, end)``: x (m, window, n_features), y (m, len(horizons)) log returns from the
            close of the window's last bar, end (m,) the index of that last bar. Windows with a
            non-finite feature or target are left out.
        """
        end, x = sliding_windows(self.features, window)
        y = forward_log_returns(self.close, horizons)[end]
        ok = np.isfinite(y).all(axis=1)
        return x[ok], y[ok], end[ok]

    def slice(self, start: int, stop: int) -> "Dataset":
        """Bars ``start:stop`` (views, no copy)."""
        return Dataset(name=f"{self.name}[{start}:{stop}]", ts_ns=self.ts_ns[start:stop],
                       close=self.close[start:stop], features=self.features[start:stop])


def check_windows(windows: np.ndarray, what: str = "windows") -> np.ndarray:
    """``windows`` as float64 ``(batch, WINDOW_BARS, len(MODEL_FEATURES))``, all finite.

    Args:
        windows: model inputs, raw (unstandardized) features.
        what: what they are, for the error messages ("training windows").

    Raises:
        ModelError: another shape, a non-numeric dtype, or a non-finite value (the message names
            its index and feature).
    """
    x = np.asarray(windows)
    if x.ndim != 3 or x.shape[1:] != (WINDOW_BARS, len(MODEL_FEATURES)):
        raise ModelError(f"{what} have shape {list(x.shape)}, expected [batch, {WINDOW_BARS}, {len(MODEL_FEATURES)}]")
    if not np.issubdtype(x.dtype, np.number):
        raise ModelError(f"{what} have dtype {x.dtype}, expected float64")
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise ModelError(f"{what} hold {int(bad.sum())} non-finite values; first at {where.tolist()} "
                         f"({MODEL_FEATURES[where[-1]]})")
    return x.astype(np.float64, copy=False)


def robust_scale(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and IQR-based scale of ``rows`` (n, columns), for standardizing.

    The IQR is divided by 1.349 (a normal's IQR in standard deviations); a column with no spread
    (mostly constant) falls back to its standard deviation, then to 1, so the division is always
    defined.
    """
    center = np.median(rows, axis=0)
    q25, q75 = np.percentile(rows, [25.0, 75.0], axis=0)
    scale = (q75 - q25) / 1.349
    std = rows.std(axis=0)
    scale = np.where(scale > 1e-12, scale, np.where(std > 1e-12, std, 1.0))
    return center, scale


def _model_featureset(names: Sequence[str]) -> tuple[FeatureSet, np.ndarray]:
    kernels, seen = [], set()
    for n in names:
        k = kernel_by_name(n)
        if k.name not in seen:
            seen.add(k.name)
            kernels.append(k)
    fs = FeatureSet(kernels, mtf=(), levels=0)
    return fs, np.array([fs.names.index(n) for n in names], dtype=np.int64)


def feature_matrix(series: BarSeries, names: Sequence[str] = MODEL_FEATURES, *, chunk_bars: int = 4096,
                   warmup_bars: int = 1024,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The features ``names`` of every bar of ``series``, with the live kernels.

    A long series is cut into chunks that run side by side as rows of one engine (one step
    advances them all), each chunk starting ``warmup_bars`` early so its recurrences have
    converged when its own bars begin. The first chunk equals the streaming run exactly; later
    chunks differ from it by rounding only (at most 2e-10 relative on btc_perp_1m_2022-01.csv: the
    longest smoothing is 30 bars, and the rolling sums' rebuild schedules start elsewhere).

    Returns:
        (len(series), len(names)) float64.
    """
    fs, cols = _model_featureset(names)
    n = len(series)
    starts = list(range(0, n, chunk_bars)) or [0]
    parts = []
    for s in starts:
        lo = max(0, s - warmup_bars)
        cols_slice = {k: v[lo:min(n, s + chunk_bars)] for k, v in series.columns.items()}
        parts.append(BarSeries(name=series.name, columns=cols_slice, tf=series.tf))
    values = run_series(fs.engine(), parts, progress)
    out = np.empty((n, len(names)))
    for s, part in zip(starts, values):
        skip = s - max(0, s - warmup_bars)
        out[s:s + part.shape[0] - skip] = part[skip:, cols]
    return out


def forward_log_returns(close: np.ndarray, horizons: Sequence[int] = HORIZONS_BARS) -> np.ndarray:
    """``log(close[i + h] / close[i])`` for each horizon h; NaN where i + h runs past the end."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full((close.shape[0], len(horizons)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.log(close)
    for j, h in enumerate(horizons):
        if h < close.shape[0]:
            out[:-h, j] = logc[h:] - logc[:-h]
    return out


def sliding_windows(features: np.ndarray, window: int = WINDOW_BARS) -> tuple[np.ndarray, np.ndarray]:
    """Every run of ``window`` consecutive rows whose values are all finite.

    Returns:
        ``(end, x)``: end (m,) index of each window's last row, x (m, window, n_features) a copy.
    """
    n = features.shape[0]
    if n < window:
        return np.empty(0, dtype=np.int64), np.empty((0, window, features.shape[1]))
    bad = ~np.isfinite(features).all(axis=1)
    # A window is usable when no bad row falls in it: count bad rows with a running sum.
    bad_before = np.concatenate([[0], np.cumsum(bad)])
    end = np.arange(window - 1, n)
    ok = bad_before[end + 1] - bad_before[end + 1 - window] == 0
    end = end[ok]
    view = np.lib.stride_tricks.sliding_window_view(features, window, axis=0)  # (n-w+1, F, w)
    x = np.ascontiguousarray(view[end - window + 1].transpose(0, 2, 1))
    return end, x


def walk_forward(n: int, folds: int = 5, min_train: float = 0.5) -> Iterator[tuple[slice, slice]]:
    """Expanding-window splits: train on everything before a fold, test on the fold.

    Args:
        n: number of samples, in time order.
        folds: number of test folds covering the last ``1 - min_train`` of the samples.
        min_train: share of samples in the first training set.

    Yields:
        ``(train, test)`` slices; every test sample lies after every training sample.
    """
    first = int(n * min_train)
    edges = np.linspace(first, n, folds + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            yield slice(0, a), slice(a, b)


def synthetic_bars(n_bars: int, seed: int, tf_s: int = 60) -> BarSeries:
    """Seeded 1-minute bars from a three-regime switching process: data the project may ship.

    Regimes (calm, trending, turbulent) switch by a Markov chain; returns have regime drift and
    volatility plus a GARCH-like volatility memory; each bar is built from 12 sub-steps so high,
    low and close are consistent; volume grows with the absolute move.
    """
    rng = np.random.default_rng(seed)
    drift = np.array([0.0, 2e-4, -1e-4])
    vol = np.array([4e-4, 8e-4, 2.5e-3])
    stay = np.array([0.995, 0.99, 0.98])
    regime = np.empty(n_bars, dtype=np.int64)
    r = 0
    for i in range(n_bars):
        if rng.random() > stay[r]:
            r = int(rng.choice([k for k in range(3) if k != r]))
        regime[i] = r
    sub = 12
    shocks = rng.standard_normal((n_bars, sub))
    sigma = np.empty(n_bars)
    s2 = vol[0] ** 2
    for i in range(n_bars):
        target = vol[regime[i]] ** 2
        s2 = 0.9 * s2 + 0.1 * target
        sigma[i] = np.sqrt(s2)
    steps = drift[regime, None] / sub + sigma[:, None] / np.sqrt(sub) * shocks
    path = 30_000.0 * np.exp(np.cumsum(steps.ravel())).reshape(n_bars, sub)
    close = path[:, -1]
    open_ = np.concatenate([[30_000.0], close[:-1]])
    high = np.maximum(path.max(axis=1), open_)
    low = np.minimum(path.min(axis=1), open_)
    move = np.abs(np.log(close / open_))
    volume = rng.lognormal(mean=2.0, sigma=0.5, size=n_bars) * (1.0 + move / vol[0])
    ts = (1_600_000_000 + np.arange(n_bars, dtype=np.int64) * tf_s) * 1_000_000_000
    cols = {"ts_ns": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return BarSeries(name=f"synthetic(seed={seed})", columns=cols, venue="sim", symbol="SIM-USD", tf="1m")


def synthetic_dataset(n_bars: int, seed: int) -> Dataset:
    """`synthetic_bars` with its model features."""
    s = synthetic_bars(n_bars, seed)
    return Dataset(name=s.name, ts_ns=s.columns["ts_ns"], close=s.columns["close"], features=feature_matrix(s))


def load_datasets(paths: Sequence[str], progress: Callable[[int, int], None] | None = None) -> list[Dataset]:
    """Every bar series in ``paths`` with its model features.

    Raises:
        DataFileError: a file is missing or unreadable (the message names it).
    """
    out = []
    for path in paths:
        for s in load_bars(path):
            if len(s) < WINDOW_BARS + max(HORIZONS_BARS):
                raise DataFileError(f"{s.name}: {len(s)} bars, too few for a {WINDOW_BARS}-bar window")
            out.append(Dataset(name=s.name, ts_ns=s.columns["ts_ns"], close=s.columns["close"],
                               features=feature_matrix(s, progress=progress)))
    return out
