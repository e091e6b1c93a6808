"""Triton Python backend: anomaly version 1, isolation forest + autoencoder.

Trained by ``tickmesh models train anomaly --version 1 --synthetic 40000 --seed 1``. The forward
pass is `_runtime.anomaly.forward`; this file only wires it to Triton.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.anomaly import AnomalyParams, forward  # noqa: E402
from _runtime.triton import BatchedModel, load_weights  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"FEATURES": (32, 29)}
    outputs = ("SCORE", "FLAG", "IFOREST", "RECON")

    def load(self, version_dir: Path, xp) -> None:
        weights = load_weights(version_dir, "anomaly")
        self.expect_features(weights["feature_names"], where=version_dir / "weights.npz")
        self.params = AnomalyParams(weights, xp)

    def compute(self, batch, xp):
        return forward(xp, self.params, batch["FEATURES"])
