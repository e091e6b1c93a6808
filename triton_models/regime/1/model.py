"""Triton Python backend: regime version 1, a 3-state Gaussian HMM forward filter.

Trained by ``tickmesh models train regime --version 1 --synthetic 40000 --seed 1``. The forward
pass is `_runtime.hmm.forward`; this file only wires it to Triton.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.hmm import HmmParams, forward  # noqa: E402
from _runtime.triton import BatchedModel, InputError  # noqa: E402,F401  (InputError: the shared contract)


class TritonPythonModel(BatchedModel):
    inputs = {"FEATURES": (32, 29)}
    outputs = ("PROBS", "LABEL")

    def load(self, version_dir: Path, xp) -> None:
        path = version_dir / "weights.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no weights at {path}; train them with `tickmesh models train regime`")
        with np.load(path, allow_pickle=False) as z:
            weights = {k: z[k] for k in z.files}
        names = [str(n) for n in weights["feature_names"]]
        if len(names) != self.inputs["FEATURES"][1]:
            raise ValueError(f"{path}: weights expect {len(names)} features, "
                             f"the model serves {self.inputs['FEATURES'][1]}")
        self.params = HmmParams(weights, xp)
        # Non-finite inputs are reported by feature name.
        self.feature_names = names

    def compute(self, batch, xp):
        return forward(xp, self.params, batch["FEATURES"])
