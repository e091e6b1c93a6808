"""Forward filter of a Gaussian hidden Markov model over a window of bars (the regime model).

Written against an array module ``xp`` (NumPy or CuPy) and importing nothing but NumPy and math,
so it runs inside tritonserver (NumPy 1.26) and in the app (NumPy 2). The weights come from
``core.models.regime``, whose reference filter is an independent log-space implementation.

Per bar of a window, two observations: the 1-bar log return and the log of the normalized ATR
(``natr_14``, floored so flat prices stay finite), standardized with the stored training mean and
standard deviation and clipped to the training range (within [-10, 10]: far outside the data a
Gaussian ranks states by variance alone and would call flat prices turbulent). Emissions are 2-D
Gaussians with full covariance (closed-form 2x2 inverse). The filter starts from the stored start
distribution (the chain's stationary distribution: a window starts at an arbitrary time) and is
scaled per bar: the emission densities are divided by their largest value before ``exp`` so that
no bar underflows, and the state vector is renormalized to sum to one.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HmmParams", "observations", "emission_logpdf", "forward_filter", "forward"]


class HmmParams:
    """The arrays of one regime version, on the array module ``xp``.

    Args:
        weights: the arrays of ``weights.npz`` (see ``core.models.regime.export_weights``).
        xp: NumPy or CuPy.
    """

    def __init__(self, weights, xp) -> None:
        for name in ("obs_index", "vol_floor", "center", "scale", "low", "high", "start_prob", "trans", "means",
                     "covs"):
            if name not in weights:
                raise ValueError(f"regime weights lack {name!r}")
        self.obs_index = [int(i) for i in weights["obs_index"]]
        self.vol_floor = float(weights["vol_floor"])
        self.center = xp.asarray(weights["center"])
        self.scale = xp.asarray(weights["scale"])
        self.low = xp.asarray(weights["low"])
        self.high = xp.asarray(weights["high"])
        self.start_prob = xp.asarray(weights["start_prob"])
        self.trans = xp.asarray(weights["trans"])
        self.means = xp.asarray(weights["means"])
        covs = np.asarray(weights["covs"], dtype=np.float64)
        # 2x2 inverse and log-determinant in closed form, once, on the host.
        a, b, d = covs[:, 0, 0], covs[:, 0, 1], covs[:, 1, 1]
        det = a * d - b * b
        if not (det > 0).all() or not (a > 0).all():
            raise ValueError("regime weights hold a covariance that is not positive definite")
        self.prec00 = xp.asarray(d / det)
        self.prec01 = xp.asarray(-b / det)
        self.prec11 = xp.asarray(a / det)
        self.log_norm = xp.asarray(-math.log(2.0 * math.pi) - 0.5 * np.log(det))


def observations(xp, params: HmmParams, windows):
    """``(batch, bars, F) -> (batch, bars, 2)`` standardized, clipped observations."""
    ret = windows[:, :, params.obs_index[0]]
    vol = xp.log(xp.maximum(windows[:, :, params.obs_index[1]], params.vol_floor))
    obs = xp.stack([ret, vol], axis=-1)
    return xp.clip((obs - params.center) / params.scale, params.low, params.high)


def emission_logpdf(xp, params: HmmParams, z):
    """``(..., 2) -> (..., K)`` log density of each state's Gaussian."""
    d0 = z[..., 0:1] - params.means[:, 0]
    d1 = z[..., 1:2] - params.means[:, 1]
    quad = params.prec00 * d0 * d0 + 2.0 * params.prec01 * d0 * d1 + params.prec11 * d1 * d1
    return params.log_norm - 0.5 * quad


def forward_filter(xp, params: HmmParams, z):
    """Filtered state probabilities at the last bar of each sequence of ``z`` ``(batch, bars, 2)``.

    Returns:
        ``(probs, loglik)``: probs ``(batch, K)``, loglik ``(batch,)`` the log density of the
        sequence under the model.
    """
    logb = emission_logpdf(xp, params, z)
    shift = logb.max(axis=-1, keepdims=True)
    b = xp.exp(logb - shift)
    alpha = params.start_prob * b[:, 0]
    norm = alpha.sum(axis=-1, keepdims=True)
    loglik = xp.log(norm[:, 0])
    alpha = alpha / norm
    for t in range(1, z.shape[1]):
        alpha = (alpha @ params.trans) * b[:, t]
        norm = alpha.sum(axis=-1, keepdims=True)
        loglik = loglik + xp.log(norm[:, 0])
        alpha = alpha / norm
    return alpha, loglik + shift[..., 0].sum(axis=1)


def forward(xp, params: HmmParams, windows):
    """The model's outputs for a batch of windows ``(batch, bars, F)`` float64.

    Returns:
        ``PROBS`` float64 ``(batch, K)`` (calm, normal, turbulent) and ``LABEL`` int32 ``(batch, 1)``.
    """
    probs, _ = forward_filter(xp, params, observations(xp, params, windows))
    return {"PROBS": probs, "LABEL": probs.argmax(axis=1).astype(xp.int32)[:, None]}
