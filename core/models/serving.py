"""What the mesh knows of each served model: its input, a rule-based fallback, and one summary.

The fallbacks answer with the model's own output names and shapes when Triton is down or slow
(`core.inference.InferenceClient`), from the same feature window, by rules simple enough to trust:

- anomaly: the size of the last bar's return in standard deviations, ``|ret_zscore_20| / 6``
  clipped to [0, 1]; flagged above 4 standard deviations.
- forecast: no view on direction (mean 0, P(up) 0.5), with the recent volatility as uncertainty:
  ``ret_std_20 * sqrt(h)`` for horizon h bars.
- regime: the last ``ret_std_20`` against its median over the window: below 0.8 calm, above 1.5
  turbulent, else normal.

`summarize` turns any model's outputs into the ``label``, ``confidence`` (0..1) and
``uncertainty`` every `core.schema.Prediction` carries.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from core.models.data import HORIZONS_BARS, MODEL_FEATURES

__all__ = ["WINDOW_MODELS", "REGIME_LABELS", "SENTIMENT_LABELS", "FALLBACKS", "summarize"]

# Models fed the feature window (input FEATURES [batch, WINDOW_BARS, len(MODEL_FEATURES)]).
WINDOW_MODELS: tuple[str, ...] = ("anomaly", "forecast", "regime")
REGIME_LABELS: tuple[str, ...] = ("calm", "normal", "turbulent")
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

_Z = MODEL_FEATURES.index("ret_zscore_20")
_STD = MODEL_FEATURES.index("ret_std_20")
_SQRT_H = np.sqrt(np.asarray(HORIZONS_BARS, dtype=np.float64))


def _anomaly(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    z = np.abs(inputs["FEATURES"][:, -1, _Z])
    score = np.clip(z / 6.0, 0.0, 1.0)[:, None]
    return {"SCORE": score, "FLAG": (z > 4.0)[:, None], "IFOREST": score.copy(), "RECON": score.copy()}


def _forecast(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    std = inputs["FEATURES"][:, -1, _STD][:, None] * _SQRT_H[None, :]
    n = std.shape[0]
    return {"MEAN": np.zeros((n, len(HORIZONS_BARS))), "STD": std, "P_UP": np.full((n, len(HORIZONS_BARS)), 0.5)}


def _regime(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    vol = inputs["FEATURES"][:, :, _STD]
    ratio = vol[:, -1] / np.maximum(np.median(vol, axis=1), 1e-300)
    label = np.where(ratio < 0.8, 0, np.where(ratio > 1.5, 2, 1)).astype(np.int32)
    return {"PROBS": np.eye(len(REGIME_LABELS))[label], "LABEL": label[:, None]}


FALLBACKS: dict[str, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]] = {
    "anomaly": _anomaly, "forecast": _forecast, "regime": _regime,
}


def summarize(model: str, outputs: Mapping[str, np.ndarray]) -> tuple[str, float, float]:
    """``(label, confidence, uncertainty)`` of one prediction (outputs without the batch axis).

    - anomaly: "anomaly"/"normal"; confidence = SCORE; uncertainty = |IFOREST − RECON|, how much
      the two detectors disagree.
    - forecast: "up"/"down"/"flat" at the first horizon; confidence = max(P_UP, 1 − P_UP);
      uncertainty = STD of the first horizon (log return).
    - regime: the state's name; confidence = its probability; uncertainty = entropy of the
      probabilities divided by log(states), 0 (sure) to 1 (no idea).
    - sentiment: the class's name; confidence = its probability; uncertainty likewise the
      normalised entropy.
    """
    o = {k: np.asarray(v).reshape(-1) for k, v in outputs.items()}
    if model == "anomaly":
        score = float(o["SCORE"][0])
        return ("anomaly" if bool(o["FLAG"][0]) else "normal", score, float(abs(o["IFOREST"][0] - o["RECON"][0])))
    if model == "forecast":
        mean, p_up = float(o["MEAN"][0]), float(o["P_UP"][0])
        label = "up" if mean > 0 else "down" if mean < 0 else "flat"
        return label, max(p_up, 1.0 - p_up), float(o["STD"][0])
    if model in ("regime", "sentiment"):
        p = o["PROBS"].astype(np.float64)
        names = REGIME_LABELS if model == "regime" else SENTIMENT_LABELS
        k = int(np.argmax(p))
        nz = p[p > 0]
        entropy = float(-(nz * np.log(nz)).sum() / np.log(len(p)))
        return names[k], float(p[k]), entropy
    raise KeyError(f"no summary for model {model!r}")
