"""The ``regime`` model: a 3-state Gaussian hidden Markov model of volatility regimes.

Observations, two per bar, from the model features: the 1-bar log return (``logret_1``) and the
log of the normalized average true range (``log(max(natr_14, VOL_FLOOR))``: the floor keeps flat
prices finite). They are standardized with the training mean and standard deviation and clipped
to [-10, 10], then to the range the training bars covered: a Gaussian emission ranks a point far
outside the data by variance alone, so an extremely quiet bar (flat prices) would otherwise go to
the widest state, "turbulent", instead of "calm". Each state emits a 2-D Gaussian with full
covariance; states are ordered by the mean of the volatility observation: calm, normal, turbulent.

Training is Baum-Welch (scaled forward-backward) in NumPy, written here: the training series are
cut into pieces of ``chunk_bars`` bars that run side by side as rows of one array (the time loop
then runs ``chunk_bars`` times per iteration instead of once per bar; the few transitions lost at
the cuts do not matter for chains that switch every hundred bars or so), initialized from seeded
k-means++ clusters, with several restarts; the restart with the highest likelihood wins.

Serving (``triton_models/_runtime/hmm.py``): the forward filter over the 32 bars of a window,
starting from the chain's stationary distribution (a window starts at an arbitrary time, not at
the start of a series), gives the filtered state probabilities at the window's last bar.
The reference here is an independent log-space filter (``scipy.special.logsumexp`` and
``scipy.stats.multivariate_normal``).

Evaluation (`evaluate`): walk-forward out-of-sample log-likelihood per bar, of both observations
and of the return alone, against a one-state Gaussian, a Gaussian VAR(1), a 2-state HMM (all
fitted on the same past) and, for the return, the naive N(0, ret_std_20 of the bar before).

Example:
    >>> from core.models.data import synthetic_dataset
    >>> model = fit([synthetic_dataset(3_000, seed=1).features], seed=0, restarts=1, n_iter=5)
    >>> reference_forward(model, np.zeros((1, 32, 29)) + 1.0)["PROBS"].shape
    (1, 3)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Sequence

import msgspec
import numpy as np

from core.errors import ModelError
from core.models._evaluate import evaluation_main
from core.models._repo import save_version, version_dir
from core.models.data import MODEL_FEATURES, WINDOW_BARS, Dataset, check_windows, load_datasets, sliding_windows, \
    synthetic_dataset, walk_forward

__all__ = [
    "NAME",
    "STATE_NAMES",
    "OBS_FEATURES",
    "GaussianHmm",
    "bar_observations",
    "fit_hmm",
    "fit",
    "stationary_distribution",
    "sequence_loglik",
    "reference_forward",
    "export_weights",
    "evaluate",
    "add_arguments",
    "train",
    "main",
]

NAME = "regime"
STATE_NAMES: tuple[str, ...] = ("calm", "normal", "turbulent")
# The two observations per bar: a return and a volatility level (logged).
OBS_FEATURES: tuple[str, str] = ("logret_1", "natr_14")
# natr_14 is in percent of the close; below this (flat prices) the log would run to -inf.
VOL_FLOOR = 1e-6
CLIP = 10.0
# Added to every covariance in the M-step (standardized units): keeps a state from collapsing
# onto a few identical bars.
MIN_COVAR = 1e-3

Progress = Callable[..., None]


class GaussianHmm(msgspec.Struct, kw_only=True):
    """A fitted Gaussian HMM with its observation standardization.

    Attributes:
        center, scale: (2,) mean and standard deviation of the raw training observations.
        low, high: (2,) clip bounds of the standardized observations (the training range, within
            [-10, 10]).
        start_prob: (K,) distribution the filter starts from (the stationary distribution).
        trans: (K, K) transition matrix, rows sum to one.
        means: (K, 2) emission means (standardized units).
        covs: (K, 2, 2) emission covariances (standardized units).
        loglik_per_bar: training log-likelihood per bar (standardized observations).
        n_iter: Baum-Welch iterations of the winning restart.
    """

    center: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    start_prob: np.ndarray
    trans: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    loglik_per_bar: float = float("nan")
    n_iter: int = 0

    @property
    def n_states(self) -> int:
        return int(self.trans.shape[0])

    @classmethod
    def from_weights(cls, weights: dict[str, np.ndarray]) -> "GaussianHmm":
        """The model a version's ``weights.npz`` holds (see `export_weights`).

        Raises:
            ModelError: the arrays are not regime weights.
        """
        need = ("center", "scale", "low", "high", "start_prob", "trans", "means", "covs")
        missing = [k for k in need if k not in weights]
        if missing:
            raise ModelError(f"not regime weights: missing {missing}")
        return cls(**{k: np.asarray(weights[k], dtype=np.float64) for k in need})

    def standardize(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations (..., 2) -> standardized and clipped."""
        return np.clip(np.clip((obs - self.center) / self.scale, -CLIP, CLIP), self.low, self.high)


def bar_observations(features: np.ndarray) -> np.ndarray:
    """Raw observations of every bar: ``(..., 29) -> (..., 2)`` = logret_1, log(natr_14) floored."""
    features = np.asarray(features, dtype=np.float64)
    i_ret, i_vol = (MODEL_FEATURES.index(n) for n in OBS_FEATURES)
    vol = np.log(np.maximum(features[..., i_vol], VOL_FLOOR))  # NaN (warm-up) stays NaN
    return np.stack([features[..., i_ret], vol], axis=-1)


def _standardizer(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center = obs.mean(axis=0)
    scale = obs.std(axis=0)
    # A constant observation (flat synthetic input) would divide by zero.
    return center, np.where(scale > 1e-12, scale, 1.0)


# --- Baum-Welch --------------------------------------------------------------------------------

def _gauss_logpdf(x: np.ndarray, means: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """(..., 2) -> (..., K) Gaussian log densities, 2x2 closed form."""
    a, b, d = covs[:, 0, 0], covs[:, 0, 1], covs[:, 1, 1]
    det = a * d - b * b
    d0 = x[..., None, 0] - means[:, 0]
    d1 = x[..., None, 1] - means[:, 1]
    quad = (d * d0 * d0 - 2.0 * b * d0 * d1 + a * d1 * d1) / det
    return -math.log(2.0 * math.pi) - 0.5 * np.log(det) - 0.5 * quad


def _chunks(sequences: Sequence[np.ndarray], chunk_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences -> (M, L, 2) pieces and (M, L) mask of real bars (padding at the end of pieces)."""
    length = max(2, min(chunk_bars, max(len(s) for s in sequences)))
    pieces, masks = [], []
    for s in sequences:
        m = -(-len(s) // length)
        pad = np.zeros((m * length, 2))
        pad[:len(s)] = s
        mask = np.zeros(m * length, dtype=bool)
        mask[:len(s)] = True
        pieces.append(pad.reshape(m, length, 2))
        masks.append(mask.reshape(m, length))
    return np.concatenate(pieces), np.concatenate(masks)


def _e_step(x, mask, start, trans, means, covs):
    """Scaled forward-backward over all pieces at once: (loglik, gamma, xi_sum)."""
    m, length, k = x.shape[0], x.shape[1], trans.shape[0]
    logb = np.where(mask[..., None], _gauss_logpdf(x, means, covs), 0.0)
    shift = logb.max(axis=-1)
    b = np.exp(logb - shift[..., None])
    alpha = np.empty((m, length, k))
    c = np.empty((m, length))
    a = start * b[:, 0]
    c[:, 0] = a.sum(axis=1)
    alpha[:, 0] = a / c[:, 0, None]
    for t in range(1, length):
        a = (alpha[:, t - 1] @ trans) * b[:, t]
        c[:, t] = a.sum(axis=1)
        alpha[:, t] = a / c[:, t, None]
    beta = np.empty((m, length, k))
    beta[:, -1] = 1.0
    for t in range(length - 2, -1, -1):
        beta[:, t] = ((b[:, t + 1] * beta[:, t + 1]) @ trans.T) / c[:, t + 1, None]
    loglik = float(np.log(c).sum() + shift[mask].sum())
    gamma = alpha * beta
    nxt = b[:, 1:] * beta[:, 1:] / c[:, 1:, None] * mask[:, 1:, None]
    xi_sum = np.einsum("mti,mtj->ij", alpha[:, :-1], nxt) * trans
    return loglik, gamma, xi_sum


def _m_step(x, mask, gamma, xi_sum):
    w = gamma * mask[..., None]
    start = gamma[:, 0].sum(axis=0)
    start = start / start.sum()
    trans = xi_sum / np.maximum(xi_sum.sum(axis=1, keepdims=True), 1e-300)
    nk = np.maximum(w.sum(axis=(0, 1)), 1e-10)
    means = np.einsum("mlk,mld->kd", w, x) / nk[:, None]
    diff = x[:, :, None, :] - means
    covs = np.einsum("mlk,mlkd,mlke->kde", w, diff, diff) / nk[:, None, None] + MIN_COVAR * np.eye(2)
    # Rows of a state nobody visits stay a valid distribution.
    empty = trans.sum(axis=1) < 0.5
    trans[empty] = 1.0 / trans.shape[0]
    return start, trans, means, covs


def _kmeans_init(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10):
    """k-means++ seeding and a few Lloyd steps on a subsample -> (means, covs)."""
    pts = x[rng.choice(len(x), size=min(len(x), 5000), replace=False)]
    centers = [pts[rng.integers(len(pts))]]
    for _ in range(1, k):
        d2 = np.min([((pts - c) ** 2).sum(axis=1) for c in centers], axis=0)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centers.append(pts[rng.choice(len(pts), p=p)])
    centers = np.array(centers)
    for _ in range(iters):
        label = ((pts[:, None, :] - centers) ** 2).sum(axis=2).argmin(axis=1)
        centers = np.array([pts[label == j].mean(axis=0) if (label == j).any() else centers[j] for j in range(k)])
    label = ((pts[:, None, :] - centers) ** 2).sum(axis=2).argmin(axis=1)
    covs = np.array([np.cov(pts[label == j].T) if (label == j).sum() > 2 else np.eye(2) for j in range(k)])
    return centers, covs + MIN_COVAR * np.eye(2)


def stationary_distribution(trans: np.ndarray) -> np.ndarray:
    """The distribution ``p`` with ``p @ trans == p``, ``sum(p) == 1``."""
    k = trans.shape[0]
    system = trans.T - np.eye(k)
    system[-1] = 1.0
    rhs = np.zeros(k)
    rhs[-1] = 1.0
    p = np.linalg.solve(system, rhs)
    p = np.clip(p, 0.0, None)
    return p / p.sum()


def fit_hmm(sequences: Sequence[np.ndarray], n_states: int, seed: int, *, restarts: int = 4, n_iter: int = 100,
            tol: float = 1e-6, chunk_bars: int = 512, progress: Progress | None = None,
            label: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Baum-Welch on standardized observation sequences, best of ``restarts`` seeded starts.

    Args:
        sequences: (n_i, 2) finite standardized observations, each in time order.
        n_states: K.
        seed: restart ``r`` draws its k-means++ start from ``default_rng((seed, r))``.
        restarts, n_iter: starts, and iterations per start at most.
        tol: stop a start when the log-likelihood per bar improves by less.
        chunk_bars: length of the pieces the sequences are cut into (see the module docstring).
        progress: called ``progress(done, total, note)`` once per iteration.
        label: prefix of the progress note.

    Returns:
        ``(start, trans, means, covs, loglik_per_bar, iterations)`` of the best start, states
        sorted by the mean of the volatility observation (ascending).
    """
    sequences = [np.asarray(s, dtype=np.float64) for s in sequences if len(s) > 0]
    n_bars = sum(len(s) for s in sequences)
    if n_bars < 10 * n_states:
        raise ModelError(f"{n_bars} bars of finite observations; too few to fit {n_states} states")
    if n_states == 1:
        allx = np.concatenate(sequences)
        mean = allx.mean(axis=0)
        cov = np.cov(allx.T, bias=True) + MIN_COVAR * np.eye(2)
        ll = float(_gauss_logpdf(allx, mean[None], cov[None]).sum()) / n_bars
        return np.ones(1), np.ones((1, 1)), mean[None], cov[None], ll, 0
    x, mask = _chunks(sequences, chunk_bars)
    allx = x[mask]
    total = restarts * n_iter
    best = None
    for r in range(restarts):
        rng = np.random.default_rng((seed, r))
        means, covs = _kmeans_init(allx, n_states, rng)
        trans = np.full((n_states, n_states), 0.05 / (n_states - 1)) + np.eye(n_states) * (0.95 - 0.05 / (n_states - 1))
        start = np.full(n_states, 1.0 / n_states)
        prev = -np.inf
        it = 0
        for it in range(1, n_iter + 1):
            loglik, gamma, xi_sum = _e_step(x, mask, start, trans, means, covs)
            per_bar = loglik / n_bars
            if progress is not None:
                progress(r * n_iter + it, total, f"{label}restart {r + 1}/{restarts} iter {it} ll/bar {per_bar:.5f}")
            if per_bar - prev < tol:
                break
            prev = per_bar
            start, trans, means, covs = _m_step(x, mask, gamma, xi_sum)
        if best is None or per_bar > best[4]:
            best = (start, trans, means, covs, per_bar, it)
    if progress is not None:
        progress(total, total, f"{label}ll/bar {best[4]:.5f}")
    start, trans, means, covs, per_bar, it = best
    order = np.argsort(means[:, 1], kind="stable")
    return start[order], trans[np.ix_(order, order)], means[order], covs[order], float(per_bar), int(it)


def _sequences(features_list: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Raw observations of each series, split at non-finite bars into finite runs."""
    out = []
    for f in features_list:
        obs = bar_observations(f)
        ok = np.isfinite(obs).all(axis=1)
        # Runs of consecutive finite bars: the warm-up (and any gap) separates sequences.
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= 2:
                out.append(obs[a:b])
    return out


def fit(features_list: Sequence[np.ndarray], seed: int, *, n_states: int = 3, restarts: int = 4,
        n_iter: int = 100, chunk_bars: int = 512, progress: Progress | None = None) -> GaussianHmm:
    """Fits the regime HMM on feature series (each (n_bars, 29) in `MODEL_FEATURES` order).

    Raises:
        ModelError: too few finite bars.
    """
    raw = _sequences(features_list)
    if not raw:
        raise ModelError("no run of finite regime observations in the training data")
    center, scale = _standardizer(np.concatenate(raw))
    seqs = [np.clip((s - center) / scale, -CLIP, CLIP) for s in raw]
    low = np.min([s.min(axis=0) for s in seqs], axis=0)
    high = np.max([s.max(axis=0) for s in seqs], axis=0)
    start, trans, means, covs, ll, it = fit_hmm(seqs, n_states, seed, restarts=restarts, n_iter=n_iter,
                                                chunk_bars=chunk_bars, progress=progress)
    return GaussianHmm(center=center, scale=scale, low=low, high=high, start_prob=stationary_distribution(trans),
                       trans=trans, means=means, covs=covs, loglik_per_bar=ll, n_iter=it)


def sequence_loglik(model: GaussianHmm, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictive log densities of each bar given the bars before it, and the filtered probabilities.

    Args:
        z: (n, 2) standardized observations of one sequence; the filter starts from
            ``model.start_prob``.

    Returns:
        ``(joint (n,), ret (n,), probs (n, K))``: log p(o_t | o_<t) of both observations, log
        p(r_t | o_<t) of the return alone (each state's Gaussian marginal, weighted by the
        predicted state probabilities), and the filtered state probabilities.
    """
    logb = _gauss_logpdf(z, model.means, model.covs)
    shift = logb.max(axis=1)
    b = np.exp(logb - shift[:, None])
    var_ret = model.covs[:, 0, 0]
    dens_ret = np.exp(-0.5 * (z[:, 0:1] - model.means[:, 0]) ** 2 / var_ret) / np.sqrt(2.0 * math.pi * var_ret)
    probs = np.empty_like(b)
    joint = np.empty(z.shape[0])
    ret = np.empty(z.shape[0])
    a = model.start_prob
    for t in range(z.shape[0]):
        pred = a @ model.trans if t else a
        ret[t] = math.log(max(float(pred @ dens_ret[t]), 1e-300))
        a = pred * b[t]
        c = a.sum()
        joint[t] = math.log(c) + shift[t]
        a = a / c
        probs[t] = a
    return joint, ret, probs


# --- reference forward and export --------------------------------------------------------------

def reference_forward(model: GaussianHmm, windows: np.ndarray) -> dict[str, np.ndarray]:
    """The regime outputs of windows ``(batch, bars, 29)``: an independent log-space filter.

    Returns:
        ``PROBS`` (batch, K) float64 (calm, normal, turbulent) and ``LABEL`` (batch, 1) int32.
    """
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    z = model.standardize(bar_observations(check_windows(windows)))
    logb = np.stack([multivariate_normal(model.means[k], model.covs[k]).logpdf(z.reshape(-1, 2)).reshape(z.shape[:2])
                     for k in range(model.n_states)], axis=-1)
    with np.errstate(divide="ignore"):
        log_trans = np.log(model.trans)
        log_alpha = np.log(model.start_prob) + logb[:, 0]
    for t in range(1, z.shape[1]):
        log_alpha = logsumexp(log_alpha[:, :, None] + log_trans[None], axis=1) + logb[:, t]
    probs = np.exp(log_alpha - logsumexp(log_alpha, axis=1, keepdims=True))
    return {"PROBS": probs, "LABEL": probs.argmax(axis=1).astype(np.int32)[:, None]}


def export_weights(model: GaussianHmm) -> dict[str, np.ndarray]:
    """The arrays ``triton_models/_runtime/hmm.py`` reads (no pickles)."""
    return {
        "feature_names": np.array(MODEL_FEATURES),
        "obs_names": np.array(OBS_FEATURES),
        "obs_index": np.array([MODEL_FEATURES.index(n) for n in OBS_FEATURES], dtype=np.int64),
        "state_names": np.array(STATE_NAMES[:model.n_states] if model.n_states == 3 else
                                [f"state{k}" for k in range(model.n_states)]),
        "vol_floor": np.float64(VOL_FLOOR),
        "center": model.center,
        "scale": model.scale,
        "low": model.low,
        "high": model.high,
        "start_prob": model.start_prob,
        "trans": model.trans,
        "means": model.means,
        "covs": model.covs,
    }


# --- evaluation --------------------------------------------------------------------------------

def evaluate(datasets: Sequence[Dataset], seed: int = 0, folds: int = 4, *, restarts: int = 2, n_iter: int = 60,
             progress: Progress | None = None) -> dict:
    """Walk-forward out-of-sample log-likelihood per bar of the 3-state HMM against baselines.

    Per dataset, the finite bars are split by `walk_forward` (expanding window); each fold fits
    the standardization and every model on the past only and scores the fold's bars with the
    predictive density given the bars before (the HMM filters start at the fold's first bar from
    their stationary distribution). All models see the same standardized observations, so their
    log-likelihoods compare directly. Scored: both observations ``p(o_t | o_<t)`` (models: one
    Gaussian ``gauss1``, Gaussian VAR(1) ``var1``, ``hmm2``, ``hmm3``) and the return alone
    ``p(r_t | o_<t)`` (the same, plus ``rollvol`` = N(0, ret_std_20 of the bar before)). The
    served form (32-bar windows) is checked too: for each label of the fold's windows, its share
    and the realized standard deviation of the *next* bar's log return (does "turbulent" foresee
    larger moves?).

    Returns:
        ``{dataset name: {...}}`` with ``loglik_per_bar`` and ``ret_loglik_per_bar`` (over all
        test bars), the gains of ``hmm3``, per-fold figures and the label table.
    """
    out = {}
    for ds in datasets:
        obs = bar_observations(ds.features)
        ok = np.flatnonzero(np.isfinite(obs).all(axis=1))
        if len(ok) < 200:
            raise ModelError(f"{ds.name}: {len(ok)} finite bars, too few to evaluate")
        ends, windows = sliding_windows(ds.features, WINDOW_BARS)
        next_ret = np.full(len(ds), np.nan)
        next_ret[:-1] = np.diff(np.log(ds.close))
        fold_rows, labels, nxt = [], [], []
        for tr, te in walk_forward(len(ok), folds):
            models = {key: fit([ds.features[:ok[tr.stop - 1] + 1]], seed, n_states=k, restarts=restarts,
                               n_iter=n_iter, progress=progress)
                      for k, key in ((3, "hmm3"), (2, "hmm2"), (1, "gauss1"))}
            joint, ret = _fold_logliks(ds.features, obs, ok, tr, te, models)
            n = te.stop - te.start
            fold_rows.append({"test_bars": n, "loglik": joint, "ret_loglik": ret,
                              "loglik_per_bar": {k: v / n for k, v in joint.items()},
                              "ret_loglik_per_bar": {k: v / n for k, v in ret.items()}})
            sel = (ends >= ok[te.start]) & (ends <= ok[te.stop - 1])
            if sel.any():
                labels.append(reference_forward(models["hmm3"], windows[sel])["LABEL"][:, 0])
                nxt.append(next_ret[ends[sel]])
        n_test = sum(f["test_bars"] for f in fold_rows)
        per_bar = {k: sum(f["loglik"][k] for f in fold_rows) / n_test for k in fold_rows[0]["loglik"]}
        ret_per_bar = {k: sum(f["ret_loglik"][k] for f in fold_rows) / n_test for k in fold_rows[0]["ret_loglik"]}
        label = np.concatenate(labels) if labels else np.empty(0, dtype=np.int32)
        after = np.concatenate(nxt) if nxt else np.empty(0)
        table = {}
        for k, name in enumerate(STATE_NAMES):
            sel = (label == k) & np.isfinite(after)
            table[name] = {"share": float((label == k).mean()) if len(label) else 0.0,
                           "next_ret_std": float(after[sel].std()) if sel.sum() > 1 else float("nan")}
        out[ds.name] = {
            "test_bars": n_test,
            "folds": fold_rows,
            "loglik_per_bar": per_bar,
            "ret_loglik_per_bar": ret_per_bar,
            "gain_hmm3_vs_gauss1": per_bar["hmm3"] - per_bar["gauss1"],
            "gain_hmm3_vs_hmm2": per_bar["hmm3"] - per_bar["hmm2"],
            "gain_hmm3_vs_var1": per_bar["hmm3"] - per_bar["var1"],
            "ret_gain_hmm3_vs_gauss1": ret_per_bar["hmm3"] - ret_per_bar["gauss1"],
            "ret_gain_hmm3_vs_var1": ret_per_bar["hmm3"] - ret_per_bar["var1"],
            "ret_gain_hmm3_vs_rollvol": ret_per_bar["hmm3"] - ret_per_bar["rollvol"],
            "labels": table,
        }
    return out


def _fold_logliks(features: np.ndarray, obs: np.ndarray, ok: np.ndarray, tr: slice, te: slice,
                  models: dict[str, GaussianHmm]) -> tuple[dict[str, float], dict[str, float]]:
    """Summed out-of-sample log densities of one fold: ``(both observations, return alone)`` by model."""
    joint, ret = {}, {}
    for key, m in models.items():
        j, r, _ = sequence_loglik(m, m.standardize(obs[ok[te]]))
        joint[key], ret[key] = float(j.sum()), float(r.sum())
    # Volatility persistence without regimes: a Gaussian VAR(1) on the same standardization; the
    # fold's first bar conditions on the last training bar.
    g = models["gauss1"]
    z = g.standardize(obs[ok[:te.stop]])
    j, r = _var1_loglik(z[:tr.stop], z[te.start - 1:])
    joint["var1"], ret["var1"] = float(j.sum()), float(r.sum())
    # The naive volatility forecast of the return: N(0, ret_std_20 of the bar before), in the
    # standardized units (z = (r - center) / scale).
    sd = np.maximum(features[ok[te] - 1, MODEL_FEATURES.index("ret_std_20")], 1e-12) / g.scale[0]
    zr = g.standardize(obs[ok[te]])[:, 0] + g.center[0] / g.scale[0]
    ret["rollvol"] = float((-0.5 * (zr / sd) ** 2 - np.log(sd) - 0.5 * math.log(2.0 * math.pi)).sum())
    return joint, ret


def _var1_loglik(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian VAR(1) fitted by least squares on ``train``; log densities of ``test[1:]`` given the bar before.

    Returns:
        ``(joint, ret)``: of both observations, and of the return alone (its marginal).
    """
    design = np.column_stack([np.ones(len(train) - 1), train[:-1]])
    coef, *_ = np.linalg.lstsq(design, train[1:], rcond=None)
    resid = train[1:] - design @ coef
    cov = np.cov(resid.T, bias=True) + MIN_COVAR * np.eye(2)
    err = test[1:] - np.column_stack([np.ones(len(test) - 1), test[:-1]]) @ coef
    joint = _gauss_logpdf(err, np.zeros((1, 2)), cov[None])[:, 0]
    ret = -0.5 * err[:, 0] ** 2 / cov[0, 0] - 0.5 * math.log(2.0 * math.pi * cov[0, 0])
    return joint, ret


def _print_table(result: dict) -> None:
    print("walk-forward out-of-sample log-likelihood per bar, standardized observations (higher is better)")
    for title, key in (("both observations: log p(o_t | o_<t)", "loglik_per_bar"),
                       ("return alone: log p(logret_1_t | o_<t)", "ret_loglik_per_bar")):
        print(f"\n{title}")
        print(f"{'dataset':<28} {'bars':>6} {'gauss1':>8} {'var1':>8} {'rollvol':>8} {'hmm2':>8} {'hmm3':>8} "
              f"{'hmm3-g1':>8} {'hmm3-best':>9}")
        for name, r in result.items():
            ll = r[key]
            best = max(v for k, v in ll.items() if k in ("gauss1", "var1", "rollvol"))
            rollvol = f"{ll['rollvol']:>8.4f}" if "rollvol" in ll else f"{'-':>8}"
            print(f"{name[:28]:<28} {r['test_bars']:>6} {ll['gauss1']:>8.4f} {ll['var1']:>8.4f} {rollvol} "
                  f"{ll['hmm2']:>8.4f} {ll['hmm3']:>8.4f} {ll['hmm3'] - ll['gauss1']:>8.4f} {ll['hmm3'] - best:>9.4f}")
    print("\nserved form (32-bar windows of the test folds): share of each label, std of the next bar's log return")
    for name, r in result.items():
        cells = "  ".join(f"{k}: {v['share']:.2f}, {v['next_ret_std']:.2e}" for k, v in r["labels"].items())
        print(f"{name:<28} {cells}")


# --- CLI ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tickmesh models train regime``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="FILE", help="bar files to train on")
    src.add_argument("--synthetic", type=int, metavar="N_BARS", help="train on synthetic_bars(N_BARS, seed)")
    parser.add_argument("--restarts", type=int, default=4, help="Baum-Welch starts (default: 4)")
    parser.add_argument("--iterations", type=int, default=100,
                        help="Baum-Welch iterations per start at most (default: 100)")
    parser.add_argument("--chunk-bars", type=int, default=512,
                        help="length of the pieces trained side by side (default: 512)")


def _training_data(args: argparse.Namespace) -> tuple[list[np.ndarray], list[str]]:
    if args.synthetic is not None:
        if args.synthetic < 500:
            raise ModelError(f"--synthetic {args.synthetic}: need at least 500 bars")
        return [synthetic_dataset(args.synthetic, args.seed).features], \
            [f"synthetic_bars(n_bars={args.synthetic}, seed={args.seed})"]
    return [d.features for d in load_datasets(args.data)], list(args.data)


def train(args: argparse.Namespace, progress: Progress) -> dict:
    """Trains ``regime`` version ``args.version`` into ``args.repo``; returns the metrics."""
    target = version_dir(args.repo, NAME, args.version)
    features, data = _training_data(args)
    model = fit(features, args.seed, restarts=args.restarts, n_iter=args.iterations, chunk_bars=args.chunk_bars,
                progress=progress)
    gauss = fit(features, args.seed, n_states=1)
    metrics = {
        "train_loglik_per_bar": model.loglik_per_bar,
        "train_loglik_per_bar_one_gaussian": gauss.loglik_per_bar,
        "iterations": model.n_iter,
        "stationary": dict(zip(STATE_NAMES, model.start_prob.tolist())),
        "stay_prob": dict(zip(STATE_NAMES, np.diag(model.trans).tolist())),
        # Each state's typical bar in raw units: return std and natr_14 (percent).
        "state_ret_std": dict(zip(STATE_NAMES, (np.sqrt(model.covs[:, 0, 0]) * model.scale[0]).tolist())),
        "state_natr": dict(zip(STATE_NAMES, np.exp(model.means[:, 1] * model.scale[1] + model.center[1]).tolist())),
    }
    save_version(target, export_weights(model), seed=args.seed, data=data, metrics=metrics, extra={
        "architecture": "gaussian-hmm-3",
        "inputs": {"FEATURES": [WINDOW_BARS, len(MODEL_FEATURES)]},
        "outputs": {"PROBS": list(STATE_NAMES), "LABEL": "argmax of PROBS"},
        "observations": ["logret_1", f"log(max(natr_14, {VOL_FLOOR}))"],
        "filter": "forward filter over the window from the stationary distribution",
        "feature_names": list(MODEL_FEATURES),
    })
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.models.regime --evaluate FILE... [--seed S] [--folds K] [--max-bars N]``: prints the table."""

    def run(args: argparse.Namespace) -> None:
        datasets = load_datasets(args.evaluate)
        if args.max_bars:
            datasets = [d.slice(0, args.max_bars) for d in datasets]
        _print_table(evaluate(datasets, args.seed, args.folds))

    return evaluation_main(NAME, argv, run, description=main.__doc__, options=lambda p: p.add_argument(
        "--max-bars", type=int, default=0, help="use only the first N bars of each file"))


if __name__ == "__main__":
    raise SystemExit(main())
