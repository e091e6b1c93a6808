"""Momentum oscillators: RSI, stochastics, rates of change, CCI, MFI and friends."""

from __future__ import annotations

from core.features.kernel import Kernel

__all__ = ["RSI", "defaults"]

NAN = float("nan")


def _is_zero(xp, v):
    """TA-Lib's TA_IS_ZERO for the bundled TA-Lib version."""
    return (-1e-14 < v) & (v < 1e-14)


class RSI(Kernel):
    """Relative strength index with Wilder smoothing (TA-Lib RSI)."""

    fn, talib, talib_inputs, family = "rsi", "RSI", ("close",), "momentum"

    def __init__(self, timeperiod: int = 14) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def init(self, xp, n):
        return {"prev": xp.full(n, NAN), "gain": xp.zeros(n), "loss": xp.zeros(n)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        t = b.t
        diff = b.close - s["prev"]
        s["prev"] = b.close
        up = xp.where(diff < 0, 0.0, diff)
        down = xp.where(diff < 0, -diff, 0.0)
        # Seed (bars 1..p): plain sums, divided by p at bar p. Then Wilder: (prev * (p-1) + x) / p.
        seed_gain = s["gain"] + up
        seed_loss = s["loss"] + down
        wil_gain = (s["gain"] * (p - 1) + up) / p
        wil_loss = (s["loss"] * (p - 1) + down) / p
        gain = xp.where(t < p, seed_gain, xp.where(t == p, seed_gain / p, wil_gain))
        loss = xp.where(t < p, seed_loss, xp.where(t == p, seed_loss / p, wil_loss))
        gain = xp.where(t == 0, 0.0, gain)
        loss = xp.where(t == 0, 0.0, loss)
        s["gain"], s["loss"] = gain, loss
        total = gain + loss
        return (xp.where(_is_zero(xp, total), 0.0, 100.0 * (gain / total)),)


def defaults() -> list[Kernel]:
    """The momentum features every engine computes by default."""
    return [RSI(14)]
