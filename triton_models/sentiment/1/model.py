"""Triton Python backend: sentiment version 1, the financial lexicon.

Weights (the compiled ``lexicon.tsv`` beside this file) come from
``tickmesh models train sentiment --version 1``. The scoring rules are `_runtime.text.Lexicon`.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.text import Lexicon, TextError, decode_texts  # noqa: E402
from _runtime.triton import BatchedModel, InputError  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"TEXT": None}
    outputs = ("PROBS", "LABEL")

    def load(self, version_dir: Path, xp) -> None:
        path = version_dir / "weights.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no weights at {path}; write them with "
                                    f"`tickmesh models train sentiment --version 1`")
        with np.load(path, allow_pickle=False) as z:
            self.lexicon = Lexicon.from_weights({k: z[k] for k in z.files})

    def validate(self, name: str, array: np.ndarray) -> None:
        try:
            decode_texts(array)
        except TextError as exc:
            raise InputError(f"input {name!r}: {exc}") from None

    def compute(self, batch, xp):
        probs = self.lexicon.probs(decode_texts(batch["TEXT"]), xp)
        return {"PROBS": probs, "LABEL": probs.argmax(axis=1).astype(xp.int32).reshape(-1, 1)}
