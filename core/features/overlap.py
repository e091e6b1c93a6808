"""Overlap studies and trend: moving averages, bands of the trend, parabolic SAR, MACD, linear regression."""

from __future__ import annotations

from core.features import _prim
from core.features.kernel import Kernel

__all__ = ["SMA", "EMA", "defaults"]


class SMA(Kernel):
    """Simple moving average of the close over ``timeperiod`` bars (TA-Lib SMA)."""

    fn, talib, talib_inputs, family = "sma", "SMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def init(self, xp, n):
        return _prim.sma_init(xp, n, self.params["timeperiod"])

    def step(self, xp, s, b):
        return (_prim.sma(xp, s, b.close, b.t, self.params["timeperiod"]),)


class EMA(Kernel):
    """Exponential moving average, k = 2 / (timeperiod + 1), seeded by the SMA (TA-Lib EMA)."""

    fn, talib, talib_inputs, family = "ema", "EMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def init(self, xp, n):
        return _prim.ema_init(xp, n)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        return (_prim.ema(xp, s, b.close, b.t, p, 2.0 / (p + 1)),)


def defaults() -> list[Kernel]:
    """The overlap features every engine computes by default."""
    return [SMA(10), SMA(20), SMA(50), EMA(12), EMA(26), EMA(50)]
