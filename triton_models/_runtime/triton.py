"""Triton Python-backend glue shared by every tickmesh model.

Imported only inside tritonserver (it needs ``triton_python_backend_utils``). A model.py puts the
repository root on ``sys.path`` and builds its ``TritonPythonModel`` from `BatchedModel`: every
request of a dynamic batch is checked on its own (a bad one gets an error response naming the
input, row and feature; the others still run), the good ones are concatenated, computed in one
call, and split back.

The array module is NumPy, or CuPy when the instance runs as KIND_GPU and CuPy is installed; the
model code is the same for both. A GPU instance takes every numeric tensor through DLPack: one in
GPU memory without a copy, one in host memory as a NumPy view (copied to the device once per
batch), and hands its outputs back through DLPack. It never reads a tensor through the NumPy
array that the stub builds (``as_numpy``), which is wrong when the stub runs under a NumPy other
than the one it was built for (nvidia-pytriton 0.7.0's stub under NumPy 2, as on a CUDA image).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

__all__ = ["BatchedModel", "InputError", "load_weights"]


class InputError(ValueError):
    """One request's input is unusable; the message goes back to the client."""


def load_weights(version_dir: Path, model_name: str, train_options: str = "") -> dict[str, np.ndarray]:
    """The arrays of a version's ``weights.npz`` (loaded without pickles).

    Args:
        version_dir: the version's directory.
        model_name: the model, named in the hint of the error.
        train_options: options of that hint after the model name (``--version 2 --data FILE``).

    Raises:
        FileNotFoundError: the version has no weights; the message says how to train them.
    """
    path = version_dir / "weights.npz"
    if not path.is_file():
        command = " ".join(filter(None, ("tickmesh models train", model_name, train_options)))
        raise FileNotFoundError(f"no weights at {path}; train them with `{command}`")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _array_module(args: Mapping[str, str]):
    if args.get("model_instance_kind") == "GPU":
        try:
            import cupy

            cupy.cuda.Device(int(args.get("model_instance_device_id", 0))).use()
            return cupy
        except ImportError:
            pass
    return np


class BatchedModel:
    """Base of a model.py's ``TritonPythonModel``.

    Subclasses set ``inputs`` (name -> trailing shape, ``None`` for a string input) and
    ``outputs`` (names), implement ``load(version_dir, xp)`` and ``compute(batch, xp) ->
    {output: array}`` (arrays with the batch on axis 0), and may set ``feature_names`` (or call
    `expect_features` from ``load``) so that non-finite features are reported by name, and
    override ``validate(name, array)`` for checks the generic ones cannot make (string inputs).
    ``load`` can read its weights with `load_weights`.
    """

    inputs: Mapping[str, tuple[int, ...] | None] = {}
    outputs: Sequence[str] = ()
    feature_names: Sequence[str] = ()

    def initialize(self, args: Mapping[str, str]) -> None:
        self.xp = _array_module(args)
        self.config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.load(version_dir, self.xp)

    def load(self, version_dir: Path, xp) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def compute(self, batch: Mapping[str, object], xp) -> Mapping[str, object]:  # pragma: no cover
        raise NotImplementedError

    def expect_features(self, names: Sequence[str], window_bars: int | None = None, where: object = "") -> None:
        """Checks the weights' features (and window length) against the ``FEATURES`` input.

        Remembers the names, so that non-finite inputs are reported by feature name.

        Raises:
            ValueError: the weights expect another input than the model serves (the message
                starts with ``where``, the weights' location).
        """
        names = [str(n) for n in names]
        window, n_features = self.inputs["FEATURES"]
        if len(names) != n_features or window_bars not in (None, window):
            expected = f"{len(names)} features" if window_bars is None else f"[{window_bars}, {len(names)}] inputs"
            raise ValueError(f"{where}: weights expect {expected}, the model serves [{window}, {n_features}]")
        self.feature_names = names

    def validate(self, name: str, array: np.ndarray) -> None:
        """Checks one request's input after the generic checks; raise `InputError` to refuse it.

        Runs per request, before batching, so a bad request fails alone (an error raised from
        ``compute`` fails the whole dynamic batch). A string input arrives as a 1-D object array.
        """

    def _tensor(self, t, shape):
        """A request tensor as an array: NumPy on a CPU instance; on a GPU instance a CuPy array
        over the tensor's GPU memory or a NumPy view of its host memory, both through DLPack.
        Strings (``shape`` None) are always NumPy: DLPack has no string type."""
        if self.xp is np or shape is None:
            return t.as_numpy()
        if t.is_cpu():
            return np.from_dlpack(t)
        return self.xp.from_dlpack(t.to_dlpack())

    def _read(self, request) -> dict[str, np.ndarray]:
        out = {}
        for name, shape in self.inputs.items():
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise InputError(f"missing input {name!r}")
            a = self._tensor(t, shape)
            if shape is None:
                out[name] = a.reshape(-1)
                self.validate(name, out[name])
                continue
            if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != tuple(shape):
                raise InputError(f"input {name!r} has shape {list(a.shape)}, expected [batch, {', '.join(map(str, shape))}]")
            xp = np if isinstance(a, np.ndarray) else self.xp
            bad = ~xp.isfinite(a)
            if bool(bad.any()):
                where = [int(i) for i in xp.argwhere(bad)[0].tolist()]
                col = where[-1]
                what = self.feature_names[col] if col < len(self.feature_names) else f"column {col}"
                raise InputError(f"input {name!r} has {int(bad.sum())} non-finite values; first at "
                                 f"index {where} ({what})")
            self.validate(name, a)
            out[name] = a
        return out

    def execute(self, requests):
        responses: list = [None] * len(requests)
        good, parts = [], []
        for i, r in enumerate(requests):
            try:
                parts.append(self._read(r))
                good.append(i)
            except InputError as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        if not good:
            return responses
        xp = self.xp
        sizes = [next(iter(p.values())).shape[0] for p in parts]
        batch = {}
        for name in self.inputs:
            arrays = [p[name] for p in parts]
            if xp is np or arrays[0].dtype == object:  # strings stay on the host
                batch[name] = np.concatenate(arrays)
            else:  # one host-to-device copy per CPU tensor; GPU tensors are already there
                batch[name] = xp.concatenate([xp.asarray(a) for a in arrays])
        try:
            result = self.compute(batch, xp)
        except InputError as exc:
            for i in good:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
            return responses
        start = 0
        for i, n in zip(good, sizes):
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[_output(name, result[name][start:start + n]) for name in self.outputs])
            start += n
        return responses


def _output(name: str, a) -> "pb_utils.Tensor":
    """A response tensor: NumPy as is; a CuPy array handed over through DLPack (no copy to the host)."""
    if isinstance(a, np.ndarray):
        return pb_utils.Tensor(name, np.ascontiguousarray(a))
    import cupy

    return pb_utils.Tensor.from_dlpack(name, cupy.ascontiguousarray(a))
