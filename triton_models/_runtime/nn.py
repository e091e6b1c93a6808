"""Forward passes of the forecast networks (LSTM, Transformer encoder) with an array module ``xp``.

Runs inside tritonserver (NumPy 1.26, or CuPy on a GPU instance) and in the app (NumPy 2); it uses
only functions NumPy and CuPy both have and imports nothing but numpy and math. Every operation
mirrors the PyTorch module `core.models.forecast.ForecastNet` it was exported from (same weight
names as its ``state_dict``), so the outputs equal the float64 torch forward pass to rounding.

Weights (``weights.npz``, written by `core.models.forecast.export_weights`):
    ``arch`` ("lstm" | "transformer"), ``n_heads``, ``layer_norm_eps``, ``logvar_bounds`` (2,),
    ``feature_names`` (29,), ``horizons_bars`` (3,), ``window_bars``; the buffers ``x_center``,
    ``x_scale`` (per feature: standardisation from the training set) and ``y_scale`` (per
    horizon: training std of the target); then the module's parameters under their torch names.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = [
    "ForecastParams",
    "prepare_forecast",
    "forecast_forward",
    "erf",
    "erfc",
    "normal_cdf",
    "gelu",
    "layer_norm",
    "lstm_last",
]

# Standardised inputs are clipped here so one wild feature cannot saturate the network.
CLIP_Z = 10.0

# fdlibm s_erf.c (Copyright (C) 1993 by Sun Microsystems, Inc.; "Permission to use, copy, modify,
# and distribute this software is freely granted, provided that this notice is preserved."):
# rational approximations good to < 1 ulp, so erf/GELU/P_UP match libm (torch) to ~1e-16.
_ERX = 8.45062911510467529297e-01
_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
       -5.77027029648944159157e-03, -2.37630166566501626084e-05)
_QQ = (1.0, 3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
       1.32494738004321644526e-04, -3.96022827877536812320e-06)
_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
       3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
       -2.16637559486879084300e-03)
_QA = (1.0, 1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
       1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
       -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
       -8.12874355063065934246e+01, -9.81432934416914548592e+00)
_SA = (1.0, 1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
       6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
       6.57024977031928170135e+00, -6.04244152148580987438e-02)
_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
       -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
       -4.83519191608651397019e+02)
_SB = (1.0, 3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
       3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
       -2.24409524465858183362e+01)


def _poly(z, coeffs):
    """Horner evaluation of ``sum(c[i] * z**i)``."""
    out = coeffs[-1] + 0.0 * z
    for c in reversed(coeffs[:-1]):
        out = out * z + c
    return out


def _erf_parts(x, xp):
    """The pieces of fdlibm's erf/erfc, every region computed on the whole array (no branches).

    Returns:
        ``(small, erf_small, mid, mid_pq, tail)``: the |x| < 0.84375 mask and erf there; the
        0.84375 <= |x| < 1.25 mask and erf(|x|) - erx there; erfc(|x|) for |x| >= 1.25.
    """
    ax = xp.abs(x)
    small = ax < 0.84375
    mid = (ax >= 0.84375) & (ax < 1.25)
    z = x * x
    erf_small = x + x * (_poly(z, _PP) / _poly(z, _QQ))
    s = ax - 1.0
    mid_pq = _poly(s, _PA) / _poly(s, _QA)
    # Far region: erfc(x) = exp(-x^2 - 0.5625 + R/S) / x with 1/x^2 as the variable; the inner
    # |x| values are replaced by 2 (harmless, masked out) so no division by zero happens.
    big = xp.where(ax < 1.25, 2.0, xp.minimum(ax, 28.0))
    u = 1.0 / (big * big)
    near = big < 1.0 / 0.35
    ratio = xp.where(near, _poly(u, _RA) / _poly(u, _SA), _poly(u, _RB) / _poly(u, _SB))
    # Splitting x^2 through a single-precision copy keeps exp's argument exact (fdlibm Note1).
    hi = big.astype(xp.float32).astype(xp.float64)
    tail = xp.exp(-hi * hi - 0.5625) * xp.exp((hi - big) * (hi + big) + ratio) / big
    tail = xp.where(ax >= 28.0, 0.0, tail)
    return small, erf_small, mid, mid_pq, tail


def erf(x, xp=np):
    """The error function, elementwise, to about 1 ulp (fdlibm's algorithm)."""
    x = xp.asarray(x, dtype=xp.float64)
    small, erf_small, mid, mid_pq, tail = _erf_parts(x, xp)
    sign = xp.where(x < 0, -1.0, 1.0)
    return xp.where(small, erf_small, sign * xp.where(mid, _ERX + mid_pq, 1.0 - tail))


def erfc(x, xp=np):
    """The complementary error function ``1 - erf(x)``, elementwise, without cancellation."""
    x = xp.asarray(x, dtype=xp.float64)
    small, erf_small, mid, mid_pq, tail = _erf_parts(x, xp)
    # fdlibm: below 1/4 the direct 1 - erf is exact enough; between 1/4 and 0.84375 it regroups.
    r = erf_small - x
    erfc_small = xp.where(x < 0.25, 1.0 - erf_small, 0.5 - ((x - 0.5) + r))
    erfc_mid = xp.where(x >= 0, (1.0 - _ERX) - mid_pq, 1.0 + (_ERX + mid_pq))
    erfc_far = xp.where(x >= 0, tail, 2.0 - tail)
    return xp.where(small, erfc_small, xp.where(mid, erfc_mid, erfc_far))


def normal_cdf(z, xp=np):
    """P(Z <= z) for a standard normal Z, accurate in both tails (as torch.special.ndtr)."""
    return 0.5 * erfc(-z * (1.0 / math.sqrt(2.0)), xp)


def gelu(x, xp=np):
    """Exact (erf) GELU, as torch's default ``approximate='none'``."""
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0)), xp))


def layer_norm(x, weight, bias, eps: float, xp=np):
    """LayerNorm over the last axis with the biased variance, as torch.nn.LayerNorm."""
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    return d / xp.sqrt(var + eps) * weight + bias


def _sigmoid(x, xp):
    # The tanh form cannot overflow for large negative x, unlike 1 / (1 + exp(-x)).
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def lstm_last(z, layers, xp=np):
    """Runs a stacked LSTM (torch.nn.LSTM, batch_first, zero initial state) over time.

    Args:
        z: (batch, time, features) inputs.
        layers: per layer ``(w_ih (4H, I), w_hh (4H, H), b_ih (4H,), b_hh (4H,))``, gates in
            torch's order input, forget, cell, output.

    Returns:
        (batch, H) hidden state of the last layer after the last time step.
    """
    seq = z
    h = None
    for w_ih, w_hh, b_ih, b_hh in layers:
        n_hidden = w_hh.shape[1]
        batch, steps = seq.shape[0], seq.shape[1]
        # The input projection of every step at once; only the recurrence is sequential.
        pre = xp.matmul(seq, w_ih.T) + (b_ih + b_hh)
        h = xp.zeros((batch, n_hidden), dtype=xp.float64)
        c = xp.zeros((batch, n_hidden), dtype=xp.float64)
        outs = []
        for t in range(steps):
            g = pre[:, t] + xp.matmul(h, w_hh.T)
            i = _sigmoid(g[:, :n_hidden], xp)
            f = _sigmoid(g[:, n_hidden:2 * n_hidden], xp)
            cell = xp.tanh(g[:, 2 * n_hidden:3 * n_hidden])
            o = _sigmoid(g[:, 3 * n_hidden:], xp)
            c = f * c + i * cell
            h = o * xp.tanh(c)
            outs.append(h)
        seq = xp.stack(outs, axis=1)
    return h


def _self_attention(x, in_w, in_b, out_w, out_b, n_heads: int, xp):
    """torch.nn.MultiheadAttention(x, x, x) without mask or dropout (batch_first)."""
    batch, steps, d_model = x.shape
    d_head = d_model // n_heads
    qkv = xp.matmul(x, in_w.T) + in_b                                   # (B, T, 3D)
    qkv = qkv.reshape(batch, steps, 3, n_heads, d_head).transpose(2, 0, 3, 1, 4)  # (3, B, h, T, dh)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = xp.matmul(q, k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(d_head))
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = xp.exp(scores)
    attn = e / e.sum(axis=-1, keepdims=True)
    ctx = xp.matmul(attn, v).transpose(0, 2, 1, 3).reshape(batch, steps, d_model)
    return xp.matmul(ctx, out_w.T) + out_b


def _encoder_layer(x, p: Mapping[str, object], prefix: str, n_heads: int, eps: float, xp):
    """A pre-norm (norm_first=True) torch.nn.TransformerEncoderLayer with GELU, in eval mode."""
    h = layer_norm(x, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"], eps, xp)
    x = x + _self_attention(h, p[prefix + "self_attn.in_proj_weight"], p[prefix + "self_attn.in_proj_bias"],
                            p[prefix + "self_attn.out_proj.weight"], p[prefix + "self_attn.out_proj.bias"],
                            n_heads, xp)
    h = layer_norm(x, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"], eps, xp)
    h = gelu(xp.matmul(h, p[prefix + "linear1.weight"].T) + p[prefix + "linear1.bias"], xp)
    return x + xp.matmul(h, p[prefix + "linear2.weight"].T) + p[prefix + "linear2.bias"]


class ForecastParams:
    """Loaded forecast weights on the array module's device, plus the settings read from them.

    Attributes:
        arch: "lstm" or "transformer".
        arrays: float arrays by torch name (on the device of ``xp``).
        feature_names: input columns, in order.
        horizons_bars: forecast horizons.
        window_bars: time steps per input.
        n_heads, eps, logvar_bounds: Transformer heads, LayerNorm epsilon, log-variance clamp.
        n_layers: LSTM or encoder layers.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], xp=np) -> None:
        missing = [k for k in ("arch", "feature_names", "horizons_bars", "window_bars", "x_center",
                               "x_scale", "y_scale", "logvar_bounds", "head.weight", "head.bias")
                   if k not in weights]
        if missing:
            raise ValueError(f"forecast weights lack {missing}; retrain with `tickmesh models train forecast`")
        self.arch = str(weights["arch"])
        if self.arch not in ("lstm", "transformer"):
            raise ValueError(f"forecast weights have unknown arch {self.arch!r}")
        self.feature_names = tuple(str(n) for n in np.asarray(weights["feature_names"]).tolist())
        self.horizons_bars = tuple(int(h) for h in np.asarray(weights["horizons_bars"]).tolist())
        self.window_bars = int(weights["window_bars"])
        self.n_heads = int(weights["n_heads"]) if "n_heads" in weights else 0
        self.eps = float(weights["layer_norm_eps"]) if "layer_norm_eps" in weights else 0.0
        lo, hi = (float(v) for v in np.asarray(weights["logvar_bounds"]).tolist())
        self.logvar_bounds = (lo, hi)
        self.arrays = {k: xp.asarray(np.asarray(v, dtype=np.float64)) for k, v in weights.items()
                       if np.asarray(v).dtype.kind == "f" and k != "logvar_bounds"}
        if self.arch == "lstm":
            self.n_layers = sum(1 for k in self.arrays if k.startswith("lstm.weight_ih_l"))
        else:
            self.n_layers = len({k.split(".")[2] for k in self.arrays if k.startswith("encoder.layers.")})
        if self.n_layers < 1:
            raise ValueError(f"forecast weights ({self.arch}) hold no layers")
        n_features = len(self.feature_names)
        if self.arrays["x_center"].shape != (n_features,) or self.arrays["y_scale"].shape != (len(self.horizons_bars),):
            raise ValueError("forecast weights: normalisation shapes do not match the feature/horizon lists")


def prepare_forecast(weights: Mapping[str, np.ndarray], xp=np) -> ForecastParams:
    """Checks the arrays of a ``weights.npz`` and moves them to ``xp``'s device.

    Raises:
        ValueError: a weight is missing or inconsistent (the message names it).
    """
    return ForecastParams(weights, xp)


def forecast_forward(params: ForecastParams, features, xp=np) -> dict[str, object]:
    """Forecasts from raw feature windows.

    Args:
        params: from `prepare_forecast`.
        features: (batch, window_bars, n_features) float64, raw (unstandardised) features.

    Returns:
        ``MEAN`` (batch, n_horizons): expected log return from the last bar's close; ``STD``:
        its predictive standard deviation; ``P_UP``: P(return > 0) under the Gaussian forecast.
    """
    p = params.arrays
    x = xp.asarray(features, dtype=xp.float64)
    z = xp.clip((x - p["x_center"]) / p["x_scale"], -CLIP_Z, CLIP_Z)
    if params.arch == "lstm":
        layers = [(p[f"lstm.weight_ih_l{k}"], p[f"lstm.weight_hh_l{k}"], p[f"lstm.bias_ih_l{k}"],
                   p[f"lstm.bias_hh_l{k}"]) for k in range(params.n_layers)]
        h = lstm_last(z, layers, xp)
    else:
        h = xp.matmul(z, p["embed.weight"].T) + p["embed.bias"] + p["pos"]
        for k in range(params.n_layers):
            h = _encoder_layer(h, p, f"encoder.layers.{k}.", params.n_heads, params.eps, xp)
        # The last bar's token summarises the window (it attends to every bar).
        h = layer_norm(h[:, -1], p["norm.weight"], p["norm.bias"], params.eps, xp)
    out = xp.matmul(h, p["head.weight"].T) + p["head.bias"]
    n_h = len(params.horizons_bars)
    lo, hi = params.logvar_bounds
    logvar = xp.clip(out[:, n_h:], lo, hi)
    mean = out[:, :n_h] * p["y_scale"]
    std = xp.exp(0.5 * logvar) * p["y_scale"]
    return {"MEAN": mean, "STD": std, "P_UP": normal_cdf(mean / std, xp)}
