"""Triton Python backend: sentiment version 2, TF-IDF + multinomial logistic regression.

Weights come from ``tickmesh models train sentiment --version 2 --data LABELLED``; they are
never committed (the labelled data at hand is non-commercial), so a checkout has none until
trained. The forward pass is `_runtime.text.TfidfLinear` (scikit-learn's transform +
predict_proba on plain arrays).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.text import TextError, TfidfLinear, decode_texts  # noqa: E402
from _runtime.triton import BatchedModel, InputError, load_weights  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"TEXT": None}
    outputs = ("PROBS", "LABEL")

    def load(self, version_dir: Path, xp) -> None:
        self.model = TfidfLinear(load_weights(version_dir, "sentiment", "--version 2 --data LABELLED"), xp)

    def validate(self, name: str, array: np.ndarray) -> None:
        try:
            decode_texts(array)
        except TextError as exc:
            raise InputError(f"input {name!r}: {exc}") from None

    def compute(self, batch, xp):
        probs = self.model.probs(decode_texts(batch["TEXT"]))
        return {"PROBS": probs, "LABEL": probs.argmax(axis=1).astype(xp.int32).reshape(-1, 1)}
