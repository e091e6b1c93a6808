"""The incremental shape: one feature, one series, one bar at a time.

`Indicator` wraps a kernel in a one-row `FeatureEngine`, so its values are those of the vectorized
path by construction (the same ``step`` runs), and the tests check both against TA-Lib.

Example:
    >>> from core.features.momentum import RSI
    >>> rsi = Indicator(RSI(14))
    >>> for px in closes:
    ...     rsi.update(close=px)
    >>> rsi.initialized, rsi.value
"""

from __future__ import annotations

import math

import numpy as np

from core.errors import SchemaError
from core.features.engine import FeatureEngine
from core.features.kernel import Kernel

__all__ = ["Indicator"]

_OHLCV = ("open", "high", "low", "close", "volume")


class Indicator:
    """One feature updated bar by bar.

    Args:
        kernel: the feature (e.g. ``RSI(14)``).

    ``update`` takes the bar's fields as keyword arguments; fields the kernel does not read may be
    left out (``open``/``high``/``low`` default to ``close``, ``volume`` to 0).
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._engine = FeatureEngine([kernel], n=1)
        self._value = np.full(len(kernel.outputs), np.nan)

    def __repr__(self) -> str:
        return f"Indicator({self.kernel!r})"

    @property
    def names(self) -> tuple[str, ...]:
        return self.kernel.outputs

    def update(self, **bar: float) -> float | tuple[float, ...]:
        """Advances by one bar and returns `value`.

        Raises:
            SchemaError: a field the kernel reads is missing.
        """
        missing = [f for f in self.kernel.inputs if f not in bar and f not in _OHLCV]
        if "close" not in bar or missing:
            raise SchemaError(f"{self.kernel!r}.update needs {sorted({'close', *self.kernel.inputs})}")
        close = bar["close"]
        cols = {f: np.array([bar.get(f, close)], dtype=np.float64) for f in ("open", "high", "low", "close")}
        cols["volume"] = np.array([bar.get("volume", 0.0)], dtype=np.float64)
        for f, v in bar.items():
            if f not in cols:
                cols[f] = np.array([v], dtype=np.int64 if f == "ts_ns" else np.float64)
        res = self._engine.step(cols)
        self._value = np.asarray(res.values)[0]
        return self.value

    @property
    def value(self) -> float | tuple[float, ...]:
        """The latest output (a tuple for multi-output features); NaN before `initialized`."""
        if len(self._value) == 1:
            return float(self._value[0])
        return tuple(float(v) for v in self._value)

    @property
    def initialized(self) -> bool:
        """True once every output has a value."""
        return not any(math.isnan(v) for v in self._value)

    def reset(self) -> None:
        """Forgets every bar seen."""
        self._engine.reset([0])
        self._value[:] = np.nan
