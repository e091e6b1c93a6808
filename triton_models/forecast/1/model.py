"""Triton Python backend: forecast version 1, an LSTM.

Trained by ``tickmesh models train forecast --arch lstm --version 1 --synthetic 40000 --seed 1``.
The forward pass is `_runtime.nn.forecast_forward`, which runs whichever network the version's
weights.npz holds (its ``arch`` array), so this file only wires it to Triton.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.nn import forecast_forward, prepare_forecast  # noqa: E402
from _runtime.triton import BatchedModel, InputError  # noqa: E402,F401  (InputError: the shared contract)


class TritonPythonModel(BatchedModel):
    inputs = {"FEATURES": (32, 29)}
    outputs = ("MEAN", "STD", "P_UP")

    def load(self, version_dir: Path, xp) -> None:
        path = version_dir / "weights.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no weights at {path}; train them with `tickmesh models train forecast`")
        with np.load(path, allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files}
        self.params = prepare_forecast(weights, xp)
        window, n_features = self.inputs["FEATURES"]
        if (self.params.window_bars, len(self.params.feature_names)) != (window, n_features):
            raise ValueError(f"{path}: weights expect [{self.params.window_bars}, {len(self.params.feature_names)}] "
                             f"inputs, the model serves [{window}, {n_features}]")
        # Non-finite inputs are reported by feature name.
        self.feature_names = self.params.feature_names

    def compute(self, batch, xp):
        return forecast_forward(self.params, batch["FEATURES"], xp)
