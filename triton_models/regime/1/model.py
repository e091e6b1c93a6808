"""Triton Python backend: regime version 1, a 3-state Gaussian HMM forward filter.

Trained by ``tickmesh models train regime --version 1 --synthetic 40000 --seed 1``. The forward
pass is `_runtime.hmm.forward`; this file only wires it to Triton.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.hmm import HmmParams, forward  # noqa: E402
from _runtime.triton import BatchedModel, load_weights  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"FEATURES": (32, 29)}
    outputs = ("PROBS", "LABEL")

    def load(self, version_dir: Path, xp) -> None:
        weights = load_weights(version_dir, "regime")
        self.expect_features(weights["feature_names"], where=version_dir / "weights.npz")
        self.params = HmmParams(weights, xp)

    def compute(self, batch, xp):
        return forward(xp, self.params, batch["FEATURES"])
