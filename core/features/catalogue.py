"""The default feature set: every family's defaults, in a fixed order.

The order is part of the feature vector's layout (`core.features.engine.names_digest`); a change
to it changes the digest, and a worker refuses a snapshot taken with another layout.
"""

from __future__ import annotations

from core.features import momentum, overlap, stats, trend, volatility, volume
from core.features.kernel import Kernel

__all__ = ["FAMILIES", "default_kernels", "kernel_by_name"]

FAMILIES = (overlap, trend, momentum, volatility, volume, stats)


def default_kernels() -> list[Kernel]:
    """Fresh instances of every default feature kernel."""
    return [k for family in FAMILIES for k in family.defaults()]


def kernel_by_name(name: str) -> Kernel:
    """The default kernel producing the feature ``name`` (an output name or a kernel name).

    Raises:
        KeyError: no default kernel has that name.
    """
    for k in default_kernels():
        if name == k.name or name in k.outputs:
            return k
    raise KeyError(f"no feature named {name!r}")
