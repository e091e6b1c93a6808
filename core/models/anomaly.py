"""The ``anomaly`` model: isolation forest + autoencoder on the last bar of a window.

What the model sees: from a window ``(32, 29)`` the vector of the last bar's 29 features followed
by their change from the bar before (58 values: a sudden one-bar change of a smoothed feature
stands out even where its level is ordinary; on the injected real bars of `evaluate` this ranked
anomalies better than the last bar alone or its z-score against the window). The vector is
standardized with the training median and scale (IQR / 1.349, falling back to the standard
deviation, then 1, for a constant column) and clipped to [-10, 10].

Two detectors on that vector, both seeded:

- a scikit-learn ``IsolationForest`` (100 trees of 256 samples), exported as flat node arrays
  (children, feature, threshold, and per node ``depth + c(n_node_samples) - 1``, the path length
  scikit-learn adds at a leaf) and scored in NumPy exactly as ``score_samples`` does;
- a torch autoencoder (tanh MLP 58-32-8-32-58, float64), scored by its mean squared
  reconstruction error.

Each raw score is mapped to [0, 1] by its empirical CDF on the training windows (1001 stored
quantiles, linear in between); ``SCORE`` is the mean of the two (the mean, not the max: a window
both detectors find unusual ranks above one only one of them does, and the mean ranked the
injected anomalies better), ``FLAG`` is
``SCORE > threshold`` with the threshold at the 0.99 quantile of the training ``SCORE`` (about
1% of ordinary windows flagged).

The served forward pass is ``triton_models/_runtime/anomaly.py``; `reference_forward` here uses
scikit-learn's ``score_samples`` and the torch module themselves.

Evaluation (`evaluate`): anomalies injected into a copy of real bars (price spikes that revert,
volume bursts, price gaps that persist), features recomputed with
`core.models.data.feature_matrix`, walk-forward (fit on the clean past, score the injected
future), against the baseline ``|ret_zscore_20| > its 0.99 training quantile``.
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

import msgspec
import numpy as np

from core.errors import ModelError
from core.features.barfile import BarSeries, load_bars
from core.models._evaluate import evaluation_main
from core.models._repo import save_version, version_dir
from core.models.data import MODEL_FEATURES, WINDOW_BARS, check_windows, feature_matrix, robust_scale, \
    sliding_windows, synthetic_bars, walk_forward

__all__ = [
    "NAME",
    "INJECTION_KINDS",
    "AnomalyModel",
    "anomaly_vectors",
    "fit",
    "reference_forward",
    "export_weights",
    "inject_anomalies",
    "evaluate",
    "add_arguments",
    "train",
    "main",
]

NAME = "anomaly"
CLIP = 10.0
# Quantile levels of the stored empirical CDFs.
N_LEVELS = 1001
# FLAG: SCORE above this quantile of the training SCOREs.
FLAG_QUANTILE = 0.99
INJECTION_KINDS: tuple[str, ...] = ("spike", "volume", "gap")
# Windows ending this many bars after an injection still carry it (a spike's reversal, the
# 20-bar statistics); they are left out of the evaluation rather than counted either way.
AFTERMATH_BARS = 5

Progress = Callable[..., None]


def anomaly_vectors(windows: np.ndarray) -> np.ndarray:
    """``(m, 32, 29) -> (m, 58)``: the last bar's features, then their change from the bar before."""
    windows = check_windows(windows)
    last = windows[:, -1, :]
    return np.concatenate([last, last - windows[:, -2, :]], axis=1)


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): mean path length of an unsuccessful search in a binary search tree of n keys (Liu et al. 2008)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _strictly_increasing(q: np.ndarray) -> np.ndarray:
    """Ties in stored quantiles nudged up by one ulp each, so interpolation is well defined everywhere."""
    q = q.copy()
    for i in range(1, q.shape[0]):
        if q[i] <= q[i - 1]:
            q[i] = np.nextafter(q[i - 1], np.inf)
    return q


class AnomalyModel(msgspec.Struct, kw_only=True):
    """A fitted anomaly model: standardization, the scikit-learn forest, the torch autoencoder, CDFs.

    Attributes:
        center, scale: (58,) standardization of the vector.
        forest: the fitted ``sklearn.ensemble.IsolationForest``.
        autoencoder: the fitted ``torch.nn.Sequential`` (float64).
        levels: (N_LEVELS,) CDF levels 0..1.
        iforest_quantiles, recon_quantiles: raw-score quantiles at ``levels`` on the training windows.
        threshold: FLAG threshold on SCORE.
        train_loss: the autoencoder's last epoch mean squared error.
    """

    center: np.ndarray
    scale: np.ndarray
    forest: object
    autoencoder: object
    levels: np.ndarray
    iforest_quantiles: np.ndarray
    recon_quantiles: np.ndarray
    threshold: float = 1.0
    train_loss: float = float("nan")

    def standardize(self, windows: np.ndarray) -> np.ndarray:
        return np.clip((anomaly_vectors(windows) - self.center) / self.scale, -CLIP, CLIP)

    def raw_scores(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(iforest, recon)``: scikit-learn's ``-score_samples`` and the autoencoder's mean squared error."""
        import torch

        z = self.standardize(windows)
        raw_if = -self.forest.score_samples(z)
        with torch.no_grad():
            zt = torch.from_numpy(z)
            recon = ((self.autoencoder(zt) - zt) ** 2).mean(dim=1).numpy()
        return raw_if, recon


def _autoencoder(n_in: int, hidden: Sequence[int]):
    import torch

    sizes = [n_in, *hidden, *reversed(hidden[:-1]), n_in]
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=torch.float64))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def _train_autoencoder(z: np.ndarray, seed: int, hidden: Sequence[int], epochs: int, batch_size: int, lr: float,
                       progress: Progress | None):
    """Adam on the mean squared reconstruction error, seeded (init and batch order); -> (module, last epoch mse)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = _autoencoder(z.shape[1], hidden)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    data = torch.from_numpy(z)
    loss_value = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(data.shape[0], generator=gen)
        total = 0.0
        for i in range(0, data.shape[0], batch_size):
            xb = data[order[i:i + batch_size]]
            loss = ((ae(xb) - xb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        loss_value = total / data.shape[0]
        if progress is not None:
            progress(epoch + 1, epochs, f"autoencoder mse {loss_value:.4f}")
    ae.eval()
    return ae, loss_value


def fit(windows: np.ndarray, seed: int, *, n_trees: int = 100, max_samples: int = 256,
        hidden: Sequence[int] = (32, 8), epochs: int = 20, batch_size: int = 256, lr: float = 3e-3,
        progress: Progress | None = None) -> AnomalyModel:
    """Fits the anomaly model on training windows ``(m, 32, 29)`` (finite), seeded.

    Raises:
        ModelError: fewer than 100 windows, or non-finite values.
    """
    import torch
    from sklearn.ensemble import IsolationForest

    v = anomaly_vectors(windows)
    if v.shape[0] < 100:
        raise ModelError(f"{v.shape[0]} training windows; the anomaly model needs at least 100")
    center, scale = robust_scale(v)
    z = np.clip((v - center) / scale, -CLIP, CLIP)

    forest = IsolationForest(n_estimators=n_trees, max_samples=min(max_samples, z.shape[0]), random_state=seed,
                             n_jobs=1).fit(z)

    threads = torch.get_num_threads()
    # One thread: the batches are tiny, and extra threads only fight over shared cores (10x slower here).
    torch.set_num_threads(1)
    try:
        ae, loss_value = _train_autoencoder(z, seed, hidden, epochs, batch_size, lr, progress)
    finally:
        torch.set_num_threads(threads)

    model = AnomalyModel(center=center, scale=scale, forest=forest, autoencoder=ae,
                         levels=np.linspace(0.0, 1.0, N_LEVELS), iforest_quantiles=np.empty(0),
                         recon_quantiles=np.empty(0), train_loss=loss_value)
    raw_if, recon = model.raw_scores(windows)
    model.iforest_quantiles = _strictly_increasing(np.quantile(raw_if, model.levels))
    model.recon_quantiles = _strictly_increasing(np.quantile(recon, model.levels))
    model.threshold = float(np.quantile(reference_forward(model, windows)["SCORE"][:, 0], FLAG_QUANTILE))
    return model


def reference_forward(model: AnomalyModel, windows: np.ndarray) -> dict[str, np.ndarray]:
    """The anomaly outputs of windows ``(batch, 32, 29)`` with scikit-learn and torch themselves.

    Returns:
        ``SCORE``, ``IFOREST``, ``RECON`` float64 ``(batch, 1)`` in [0, 1] and ``FLAG`` bool ``(batch, 1)``.
    """
    raw_if, recon = model.raw_scores(windows)
    p_if = np.interp(raw_if, model.iforest_quantiles, model.levels)
    p_ae = np.interp(recon, model.recon_quantiles, model.levels)
    score = 0.5 * (p_if + p_ae)
    return {"SCORE": score[:, None], "FLAG": (score > model.threshold)[:, None],
            "IFOREST": p_if[:, None], "RECON": p_ae[:, None]}


def export_weights(model: AnomalyModel) -> dict[str, np.ndarray]:
    """The arrays ``triton_models/_runtime/anomaly.py`` reads (no pickles).

    The trees become one node table: node ``i`` of tree ``t`` sits at ``tree_root[t] + i``; a leaf
    points to itself on both sides, so a fixed number of steps (``tree_max_depth``) reaches every
    leaf; ``tree_path`` holds scikit-learn's ``depth + c(n_node_samples) - 1`` (depth counted in
    nodes, root = 1).
    """
    roots, left, right, feature, threshold, path = [], [], [], [], [], []
    offset, max_edges = 0, 0
    for est in model.forest.estimators_:
        t = est.tree_
        n = t.node_count
        depth = np.zeros(n, dtype=np.int64)
        depth[0] = 1
        for i in range(n):  # parents precede their children in scikit-learn's node order
            if t.children_left[i] >= 0:
                depth[t.children_left[i]] = depth[i] + 1
                depth[t.children_right[i]] = depth[i] + 1
        leaf = t.children_left < 0
        own = np.arange(n) + offset
        roots.append(offset)
        left.append(np.where(leaf, own, t.children_left + offset))
        right.append(np.where(leaf, own, t.children_right + offset))
        feature.append(np.where(leaf, 0, t.feature))
        threshold.append(np.where(leaf, 0.0, t.threshold))
        path.append(depth + _average_path_length(t.n_node_samples) - 1.0)
        max_edges = max(max_edges, int(depth.max()) - 1)
        offset += n
    if any((f != np.arange(model.center.shape[0])).any() for f in model.forest.estimators_features_):
        raise ModelError("the forest subsamples features; the exported trees assume all features in order")
    ae_layers = [m for m in model.autoencoder if hasattr(m, "weight")]
    weights = {
        "feature_names": np.array(MODEL_FEATURES),
        "vector": np.array(["last bar features", "last bar minus the bar before"]),
        "clip": np.float64(CLIP),
        "center": model.center,
        "scale": model.scale,
        "tree_root": np.array(roots, dtype=np.int32),
        "tree_left": np.concatenate(left).astype(np.int32),
        "tree_right": np.concatenate(right).astype(np.int32),
        "tree_feature": np.concatenate(feature).astype(np.int32),
        "tree_threshold": np.concatenate(threshold).astype(np.float64),
        "tree_path": np.concatenate(path).astype(np.float64),
        "tree_max_depth": np.int64(max_edges),
        "iforest_norm": np.float64(len(model.forest.estimators_)
                                   * _average_path_length([model.forest.max_samples_])[0]),
        "ae_layers": np.int64(len(ae_layers)),
        "ae_activation": np.array("tanh"),
        "cdf_levels": model.levels,
        "iforest_quantiles": model.iforest_quantiles,
        "recon_quantiles": model.recon_quantiles,
        "threshold": np.float64(model.threshold),
        "combine": np.array("mean"),
    }
    for i, lin in enumerate(ae_layers):
        weights[f"ae_w{i}"] = lin.weight.detach().numpy().astype(np.float64)
        weights[f"ae_b{i}"] = lin.bias.detach().numpy().astype(np.float64)
    return weights


# --- evaluation --------------------------------------------------------------------------------

def inject_anomalies(series: BarSeries, start_bar: int, seed: int, *, every_bars: int = 100,
                     size_sigma: tuple[float, float] = (3.0, 6.0),
                     volume_factor: tuple[float, float] = (4.0, 12.0)) -> tuple[BarSeries, np.ndarray, np.ndarray]:
    """A copy of ``series`` with one anomaly in each block of ``every_bars`` bars from ``start_bar`` on.

    Kinds, in turn (`INJECTION_KINDS`): ``spike``, the close of one bar moved by ``size_sigma``
    local standard deviations of the 1-bar log return (up or down; high/low widened to hold it;
    the next bar opens where it would have, so the move reverts); ``volume``, one bar's volume
    multiplied by ``volume_factor``, prices untouched; ``gap``, every price from the bar's open
    on moved by ``size_sigma`` local deviations (a persistent jump). The local deviation is the
    standard deviation of the 60 log returns before the bar (the series' median when that is 0).

    Returns:
        ``(injected series, bar index of each anomaly, kind index of each)``.
    """
    rng = np.random.default_rng(seed)
    cols = {k: v.copy() for k, v in series.columns.items()}
    n = len(series)
    close = series.columns["close"]
    logret = np.diff(np.log(close), prepend=np.log(close[0]))
    sigma = np.array([logret[max(1, i - 60):i].std() if i > 2 else 0.0 for i in range(n)])
    fallback = float(np.median(sigma[sigma > 0])) if (sigma > 0).any() else 1e-3
    sigma = np.where(sigma > 0, sigma, fallback)
    room = every_bars - AFTERMATH_BARS - 1
    if room < 1:
        raise ModelError(f"every_bars={every_bars} leaves no room after the {AFTERMATH_BARS}-bar aftermath")
    blocks = range(start_bar, n - every_bars + 1, every_bars)
    pos = np.array([b + int(rng.integers(0, room)) for b in blocks], dtype=np.int64)
    kinds = np.arange(len(pos)) % len(INJECTION_KINDS)
    prices = ("open", "high", "low", "close")
    for p, k in zip(pos, kinds):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        size = float(rng.uniform(*size_sigma))
        jump = float(np.exp(sign * size * sigma[p]))
        if INJECTION_KINDS[k] == "spike":
            cols["close"][p] *= jump
            cols["high"][p] = max(cols["high"][p], cols["close"][p])
            cols["low"][p] = min(cols["low"][p], cols["close"][p])
        elif INJECTION_KINDS[k] == "volume":
            cols["volume"][p] *= float(rng.uniform(*volume_factor))
        else:
            for c in prices:
                cols[c][p:] *= jump
    return BarSeries(name=f"{series.name}+injected(seed={seed})", columns=cols, venue=series.venue,
                     symbol=series.symbol, tf=series.tf), pos, kinds


def _ranking_metrics(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if label.all() or not label.any():
        return {"average_precision": float("nan"), "roc_auc": float("nan")}
    return {"average_precision": float(average_precision_score(label, score)),
            "roc_auc": float(roc_auc_score(label, score))}


def _flag_metrics(flag: np.ndarray, label: np.ndarray, kind: np.ndarray) -> dict[str, object]:
    tp = int((flag & label).sum())
    fp = int((flag & ~label).sum())
    out: dict[str, object] = {
        "flagged": int(flag.sum()),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(int(label.sum()), 1),
        "false_positive_rate": fp / max(int((~label).sum()), 1),
    }
    out["recall_by_kind"] = {}
    for k, name in enumerate(INJECTION_KINDS):
        of_kind = label & (kind == k)
        out["recall_by_kind"][name] = float(flag[of_kind].mean()) if of_kind.any() else float("nan")
    return out


def evaluate(datasets: Sequence[BarSeries], seed: int = 0, folds: int = 4, *, every_bars: int = 50,
             fit_options: dict | None = None, progress: Progress | None = None) -> dict:
    """Walk-forward precision/recall on anomalies injected into real bars, vs ``|ret_zscore_20|``.

    Per bar series: features of the clean series and of an injected copy (`inject_anomalies`,
    from the first test bar on). Each `walk_forward` fold (over bars) fits the model on the clean
    windows ending before the fold and scores the injected windows ending in it; a window is
    positive when its last bar is an injected one; windows ending within `AFTERMATH_BARS` after
    an injection are left out. The baseline flags ``|ret_zscore_20|`` of the last bar above its
    0.99 quantile on the same training windows (the same nominal flag rate as the model).

    Args:
        datasets: bar series (`core.features.barfile.load_bars`), with OHLCV.
        seed: seeds the injections and the model.
        folds: walk-forward folds over the second half of each series.

    Returns:
        ``{series name: {"model": {...}, "baseline": {...}, "windows", "positives"}}``, pooled over folds:
        precision, recall (overall and per kind), false-positive rate at the flag threshold, and the
        threshold-free average precision and ROC AUC of the scores.
    """
    options = dict(fit_options or {})
    z_col = MODEL_FEATURES.index("ret_zscore_20")
    out = {}
    for series in datasets:
        n = len(series)
        if n < 4 * every_bars:
            raise ModelError(f"{series.name}: {n} bars, too few to evaluate (need {4 * every_bars})")
        splits = list(walk_forward(n, folds))
        first_test = splits[0][1].start
        injected, pos, kinds = inject_anomalies(series, first_test, seed, every_bars=every_bars)
        clean_end, clean_x = sliding_windows(feature_matrix(series))
        inj_end, inj_x = sliding_windows(feature_matrix(injected))
        kind_at = np.full(n, -1)
        kind_at[pos] = kinds
        aftermath = np.zeros(n, dtype=bool)
        for d in range(1, AFTERMATH_BARS + 1):
            aftermath[np.minimum(pos + d, n - 1)] = True
        aftermath[pos] = False
        scores, zs, labels, kind_rows, flags, zflags = [], [], [], [], [], []
        for tr, te in splits:
            train_x = clean_x[clean_end < tr.stop]
            sel = (inj_end >= te.start) & (inj_end < te.stop) & ~aftermath[inj_end]
            test_x, test_end = inj_x[sel], inj_end[sel]
            model = fit(train_x, seed, progress=progress, **options)
            res = reference_forward(model, test_x)
            z_thr = np.quantile(np.abs(train_x[:, -1, z_col]), FLAG_QUANTILE)
            zabs = np.abs(test_x[:, -1, z_col])
            scores.append(res["SCORE"][:, 0])
            flags.append(res["FLAG"][:, 0])
            zs.append(zabs)
            zflags.append(zabs > z_thr)
            labels.append(kind_at[test_end] >= 0)
            kind_rows.append(kind_at[test_end])
        score, zabs = np.concatenate(scores), np.concatenate(zs)
        label, kind = np.concatenate(labels), np.concatenate(kind_rows)
        out[series.name] = {
            "windows": int(label.shape[0]),
            "positives": int(label.sum()),
            "model": _flag_metrics(np.concatenate(flags), label, kind) | _ranking_metrics(score, label),
            "baseline": _flag_metrics(np.concatenate(zflags), label, kind) | _ranking_metrics(zabs, label),
        }
    return out


def _print_table(result: dict) -> None:
    print("walk-forward detection of injected anomalies "
          "(model: SCORE / FLAG; baseline: |ret_zscore_20| > its 0.99 training quantile)")
    head = (f"{'series':<34} {'who':<8} {'windows':>7} {'pos':>4} {'flagged':>7} {'prec':>6} {'recall':>6} "
            f"{'fpr':>6} {'AP':>6} {'AUC':>6}  recall spike/volume/gap")
    print(head)
    for name, r in result.items():
        for who in ("model", "baseline"):
            m = r[who]
            by_kind = "/".join(f"{m['recall_by_kind'][k]:.2f}" for k in INJECTION_KINDS)
            print(f"{name[:34]:<34} {who:<8} {r['windows']:>7} {r['positives']:>4} {m['flagged']:>7} "
                  f"{m['precision']:>6.3f} {m['recall']:>6.3f} {m['false_positive_rate']:>6.4f} "
                  f"{m['average_precision']:>6.3f} {m['roc_auc']:>6.3f}  {by_kind}")


# --- CLI ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tickmesh models train anomaly``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="FILE", help="bar files to train on")
    src.add_argument("--synthetic", type=int, metavar="N_BARS", help="train on synthetic_bars(N_BARS, seed)")
    parser.add_argument("--trees", type=int, default=100, help="isolation-forest trees (default: 100)")
    parser.add_argument("--epochs", type=int, default=20, help="autoencoder epochs (default: 20)")


def _training_windows(args: argparse.Namespace) -> tuple[np.ndarray, list[str]]:
    if args.synthetic is not None:
        if args.synthetic < 500:
            raise ModelError(f"--synthetic {args.synthetic}: need at least 500 bars")
        series = [synthetic_bars(args.synthetic, args.seed)]
        data = [f"synthetic_bars(n_bars={args.synthetic}, seed={args.seed})"]
    else:
        series = [s for path in args.data for s in load_bars(path)]
        data = list(args.data)
    parts = [sliding_windows(feature_matrix(s))[1] for s in series]
    return np.concatenate(parts), data


def train(args: argparse.Namespace, progress: Progress) -> dict:
    """Trains ``anomaly`` version ``args.version`` into ``args.repo``; returns the metrics."""
    target = version_dir(args.repo, NAME, args.version)
    windows, data = _training_windows(args)
    model = fit(windows, args.seed, n_trees=args.trees, epochs=args.epochs, progress=progress)
    res = reference_forward(model, windows)
    weights = export_weights(model)
    metrics = {
        "train_windows": int(windows.shape[0]),
        "autoencoder_train_mse": model.train_loss,
        "threshold": model.threshold,
        "train_flag_rate": float(res["FLAG"].mean()),
        "tree_nodes": int(weights["tree_left"].shape[0]),
    }
    save_version(target, weights, seed=args.seed, data=data, metrics=metrics, extra={
        "architecture": f"isolation-forest-{args.trees} + autoencoder-tanh-58-32-8-32-58",
        "inputs": {"FEATURES": [WINDOW_BARS, len(MODEL_FEATURES)]},
        "outputs": {"SCORE": "mean of IFOREST and RECON", "FLAG": f"SCORE > its {FLAG_QUANTILE} training quantile",
                    "IFOREST": "isolation-forest score through its training CDF",
                    "RECON": "autoencoder reconstruction error through its training CDF"},
        "vector": "last bar's 29 features and their change from the bar before, median/IQR standardized, clipped to 10",
        "feature_names": list(MODEL_FEATURES),
    })
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.models.anomaly --evaluate FILE... [--seed S] [--folds K] [--max-bars N]``."""

    def run(args: argparse.Namespace) -> None:
        series = [s for path in args.evaluate for s in load_bars(path)]
        if args.max_bars:
            series = [BarSeries(name=f"{s.name}[:{args.max_bars}]", venue=s.venue, symbol=s.symbol, tf=s.tf,
                                columns={k: v[:args.max_bars] for k, v in s.columns.items()}) for s in series]
        _print_table(evaluate(series, args.seed, args.folds))

    return evaluation_main(NAME, argv, run, description=main.__doc__, options=lambda p: p.add_argument(
        "--max-bars", type=int, default=0, help="use only the first N bars of each file"))


if __name__ == "__main__":
    raise SystemExit(main())
