"""Triton Python backend: forecast version 2, a Transformer encoder.

Trained by ``tickmesh models train forecast --arch transformer --version 2 --synthetic 40000 --seed 1``.
The forward pass is `_runtime.nn.forecast_forward`, which runs whichever network the version's
weights.npz holds (its ``arch`` array), so this file only wires it to Triton.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.nn import forecast_forward, prepare_forecast  # noqa: E402
from _runtime.triton import BatchedModel, load_weights  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"FEATURES": (32, 29)}
    outputs = ("MEAN", "STD", "P_UP")

    def load(self, version_dir: Path, xp) -> None:
        self.params = prepare_forecast(load_weights(version_dir, "forecast"), xp)
        self.expect_features(self.params.feature_names, self.params.window_bars, version_dir / "weights.npz")

    def compute(self, batch, xp):
        return forecast_forward(self.params, batch["FEATURES"], xp)
