"""The array-module switch: NumPy on CPU, CuPy on GPU, one code path for both."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from core.errors import ConfigError

__all__ = ["DEVICES", "array_module", "to_numpy"]

DEVICES = ("cpu", "gpu")


def array_module(device: str) -> ModuleType:
    """Returns the array module for ``device``: ``numpy`` for "cpu", ``cupy`` for "gpu".

    Raises:
        ConfigError: the device is unknown, or "gpu" is asked for where CuPy or a GPU is missing.
    """
    if device == "cpu":
        return np
    if device != "gpu":
        raise ConfigError(f"features device must be one of {DEVICES}, got {device!r}")
    try:
        import cupy
    except ImportError as exc:
        raise ConfigError(f"features device 'gpu' needs CuPy (pip install cupy-cuda12x or cupy-cuda13x, "
                          f"matching the CUDA driver): {exc}") from None
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when no driver/GPU is present
        raise ConfigError(f"features device 'gpu': no usable CUDA device ({exc})") from None
    return cupy


def to_numpy(a) -> np.ndarray:
    """A NumPy copy (CuPy) or the array itself (NumPy)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
