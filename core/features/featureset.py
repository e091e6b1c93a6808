"""The layout of a feature vector: the kernels' outputs, then higher-timeframe columns.

Multi-timeframe features join selected features of the next higher timeframes onto each bar
without look-ahead: the bar ``[S, S + tf)`` gets the values of the latest higher-timeframe bar
that *ended at or before S* (so a 1m bar never sees the 5m bar it is part of). Higher timeframes
follow `LADDER`; ``<feature>@htf1`` is the next one (1m → 5m), ``@htf2`` the one after (1m → 1h).
Where the higher timeframe is not computed (1h → 1d in the live mesh), the columns are NaN.
"""

from __future__ import annotations

from bisect import bisect_right
from types import ModuleType
from typing import Sequence

import numpy as np

from core.errors import ConfigError
from core.features.catalogue import default_kernels
from core.features.engine import FeatureEngine, names_digest
from core.features.kernel import Kernel

__all__ = ["LADDER", "MTF_FEATURES", "MTF_LEVELS", "FeatureSet", "higher_tf", "asof_index"]

_S = 1_000_000_000
LADDER: dict[str, int] = {"1s": _S, "5s": 5 * _S, "1m": 60 * _S, "5m": 300 * _S, "1h": 3600 * _S,
                          "1d": 86400 * _S, "1w": 7 * 86400 * _S}
MTF_FEATURES = ("rsi_14", "adx_14", "natr_14", "macd_12_26_9.macdhist", "willr_14", "logret_1")
MTF_LEVELS = 2


def higher_tf(tf: str, level: int) -> str | None:
    """The timeframe ``level`` steps above ``tf`` on the ladder, or None."""
    names = list(LADDER)
    if tf not in LADDER or names.index(tf) + level >= len(names):
        return None
    return names[names.index(tf) + level]


def asof_index(ends_ns: Sequence[int], start_ns: int) -> int:
    """Index of the last entry of the sorted ``ends_ns`` that is <= ``start_ns``, or -1."""
    return bisect_right(ends_ns, start_ns) - 1


class FeatureSet:
    """Kernels plus multi-timeframe columns: what one feature vector holds, in order.

    Args:
        kernels: the base features (default: `core.features.catalogue.default_kernels`).
        mtf: base output names joined from higher timeframes.
        levels: how many higher timeframes to join.

    Raises:
        ConfigError: an ``mtf`` name is not a base output.
    """

    def __init__(self, kernels: Sequence[Kernel] | None = None, mtf: Sequence[str] = MTF_FEATURES,
                 levels: int = MTF_LEVELS) -> None:
        self.kernels = list(default_kernels() if kernels is None else kernels)
        self.base_names = tuple(o for k in self.kernels for o in k.outputs)
        unknown = [m for m in mtf if m not in self.base_names]
        if unknown:
            raise ConfigError(f"multi-timeframe features {unknown} are not computed by the kernels")
        self.mtf = tuple(mtf)
        self.levels = levels
        self.mtf_index = np.array([self.base_names.index(m) for m in self.mtf], dtype=np.int64)
        self.names = self.base_names + tuple(f"{m}@htf{j}" for j in range(1, levels + 1) for m in self.mtf)
        self.digest = names_digest(self.names)

    def __repr__(self) -> str:
        return f"FeatureSet(features={len(self.names)}, mtf={list(self.mtf)}, levels={self.levels})"

    def engine(self, xp: ModuleType = np, n: int = 0) -> FeatureEngine:
        """A new engine computing the base features (the multi-timeframe columns are joined later)."""
        return FeatureEngine(self.kernels, xp=xp, n=n)
