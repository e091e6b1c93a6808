"""Forward pass of the anomaly model: isolation forest + autoencoder on one standardized vector.

Written against an array module ``xp`` (NumPy or CuPy) and importing nothing but NumPy and math,
so it runs inside tritonserver (NumPy 1.26) and in the app (NumPy 2). The weights come from
``core.models.anomaly`` (``weights.npz``); the reference forward pass (scikit-learn
``IsolationForest.score_samples`` and the torch autoencoder) lives there.

Steps, for a batch of windows ``(batch, 32, 29)``:

1. vector: the last bar's features followed by their change from the bar before (58 values);
2. standardize with the stored median and scale, clip to [-10, 10];
3. isolation forest: walk every tree at once (all trees are flat arrays; leaves point to
   themselves), sum each leaf's path length, ``anomaly = 2 ** (-sum / norm)`` exactly as
   scikit-learn does (its ``score_samples`` is the negative of this); the trees compare float32
   inputs with float64 thresholds, as scikit-learn's trees do;
4. autoencoder: tanh MLP, reconstruction error = mean squared error over the vector;
5. each part through its stored training quantiles (empirical CDF, linear between quantiles) to
   [0, 1]; ``SCORE`` = their mean, ``FLAG`` = ``SCORE > threshold``.
"""

from __future__ import annotations

__all__ = ["AnomalyParams", "anomaly_vector", "iforest_anomaly", "mlp_forward", "forward"]


class AnomalyParams:
    """The arrays of one anomaly version, on the array module ``xp``.

    Args:
        weights: the arrays of ``weights.npz`` (see ``core.models.anomaly.export_weights``).
        xp: NumPy or CuPy.
    """

    def __init__(self, weights, xp) -> None:
        def get(name):
            if name not in weights:
                raise ValueError(f"anomaly weights lack {name!r}")
            return xp.asarray(weights[name])

        self.center = get("center")
        self.scale = get("scale")
        self.tree_root = get("tree_root").astype(xp.int64)
        self.tree_left = get("tree_left").astype(xp.int64)
        self.tree_right = get("tree_right").astype(xp.int64)
        self.tree_feature = get("tree_feature").astype(xp.int64)
        self.tree_threshold = get("tree_threshold")
        self.tree_path = get("tree_path")
        self.tree_max_depth = int(weights["tree_max_depth"])
        self.iforest_norm = float(weights["iforest_norm"])
        n_layers = int(weights["ae_layers"])
        self.ae = [(get(f"ae_w{i}"), get(f"ae_b{i}")) for i in range(n_layers)]
        self.cdf_levels = get("cdf_levels")
        self.iforest_quantiles = get("iforest_quantiles")
        self.recon_quantiles = get("recon_quantiles")
        self.threshold = float(weights["threshold"])
        self.clip = float(weights["clip"])


def anomaly_vector(xp, windows):
    """``(batch, 32, F) -> (batch, 2F)``: last bar's features, then their change from the bar before."""
    last = windows[:, -1, :]
    return xp.concatenate([last, last - windows[:, -2, :]], axis=1)


def iforest_anomaly(xp, params: AnomalyParams, z):
    """Isolation-forest anomaly score in (0, 1] (scikit-learn's ``-score_samples``) of rows ``z``."""
    # scikit-learn's trees read their input as float32; comparing the rounded value in float64
    # against the float64 threshold is exactly the comparison its Cython code makes.
    z32 = z.astype(xp.float32).astype(xp.float64)
    node = xp.broadcast_to(params.tree_root[None, :], (z.shape[0], params.tree_root.shape[0]))
    for _ in range(params.tree_max_depth):
        value = xp.take_along_axis(z32, params.tree_feature[node], axis=1)
        node = xp.where(value <= params.tree_threshold[node], params.tree_left[node], params.tree_right[node])
    depth = params.tree_path[node].sum(axis=1)
    return xp.power(2.0, -depth / params.iforest_norm)


def mlp_forward(xp, layers, z):
    """A tanh MLP with a linear last layer; ``layers`` = [(W (out, in), b (out,)), ...] as in torch."""
    h = z
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = xp.tanh(h)
    return h


def forward(xp, params: AnomalyParams, windows):
    """The model's outputs for a batch of windows ``(batch, 32, F)`` float64.

    Returns:
        ``SCORE``, ``IFOREST``, ``RECON`` float64 ``(batch, 1)`` in [0, 1] and ``FLAG`` bool ``(batch, 1)``.
    """
    v = anomaly_vector(xp, windows)
    z = xp.clip((v - params.center) / params.scale, -params.clip, params.clip)
    raw_if = iforest_anomaly(xp, params, z)
    recon = ((mlp_forward(xp, params.ae, z) - z) ** 2).mean(axis=1)
    p_if = xp.interp(raw_if, params.iforest_quantiles, params.cdf_levels)
    p_ae = xp.interp(recon, params.recon_quantiles, params.cdf_levels)
    score = 0.5 * (p_if + p_ae)
    return {
        "SCORE": score[:, None],
        "FLAG": (score > params.threshold)[:, None],
        "IFOREST": p_if[:, None],
        "RECON": p_ae[:, None],
    }
