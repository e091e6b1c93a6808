"""Triton Python backend: sentiment version 1, the financial lexicon.

Weights (the compiled ``lexicon.tsv`` beside this file) come from
``tickmesh models train sentiment --version 1``. The scoring rules are `_runtime.text.Lexicon`.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.text import Lexicon, TextError, decode_texts  # noqa: E402
from _runtime.triton import BatchedModel, InputError, load_weights  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"TEXT": None}
    outputs = ("PROBS", "LABEL")

    def load(self, version_dir: Path, xp) -> None:
        self.lexicon = Lexicon.from_weights(load_weights(version_dir, "sentiment", "--version 1"))

    def validate(self, name: str, array: np.ndarray) -> None:
        try:
            decode_texts(array)
        except TextError as exc:
            raise InputError(f"input {name!r}: {exc}") from None

    def compute(self, batch, xp):
        probs = self.lexicon.probs(decode_texts(batch["TEXT"]), xp)
        return {"PROBS": probs, "LABEL": probs.argmax(axis=1).astype(xp.int32).reshape(-1, 1)}
