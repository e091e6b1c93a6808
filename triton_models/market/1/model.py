"""Triton Python backend: ``market``, anomaly + forecast + regime in one request (BLS).

The three sub-requests go out together (``async_exec``), each to the sub-model's highest loaded
version; a sub-model's error fails the request with that model's message.
"""

import asyncio
import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _runtime.triton import InputError  # noqa: E402

# Sub-model -> (its output, our output).
PARTS = {
    "anomaly": (("SCORE", "ANOMALY_SCORE"), ("FLAG", "ANOMALY_FLAG")),
    "forecast": (("MEAN", "FORECAST_MEAN"), ("STD", "FORECAST_STD"), ("P_UP", "FORECAST_P_UP")),
    "regime": (("PROBS", "REGIME_PROBS"), ("LABEL", "REGIME_LABEL")),
}


def _renamed(t, name: str):
    """A sub-model's output tensor under this model's name, through DLPack: no copy, in host or GPU
    memory (a KIND_GPU sub-model's), and no NumPy view made by the stub (see _runtime.triton)."""
    return pb_utils.Tensor.from_dlpack(name, t.to_dlpack())


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])

    async def _one(self, request):
        features = pb_utils.get_input_tensor_by_name(request, "FEATURES")
        if features is None:
            raise InputError("missing input 'FEATURES'")
        subs = [pb_utils.InferenceRequest(model_name=name, requested_output_names=[o for o, _ in outs],
                                          inputs=[features])
                for name, outs in PARTS.items()]
        responses = await asyncio.gather(*(r.async_exec() for r in subs))
        tensors = []
        for (name, outs), resp in zip(PARTS.items(), responses):
            if resp.has_error():
                raise InputError(f"{name}: {resp.error().message()}")
            for ours, theirs in outs:
                t = pb_utils.get_output_tensor_by_name(resp, ours)
                tensors.append(_renamed(t, theirs))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    async def execute(self, requests):
        out = []
        for result in await asyncio.gather(*(self._one(r) for r in requests), return_exceptions=True):
            if isinstance(result, Exception):
                out.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(result))))
            else:
                out.append(result)
        return out
