"""Recurrences many kernels share, written once in TA-Lib's arithmetic order.

Each primitive advances per-row state for rows whose *local* bar count ``t`` is >= 0 (a composite
kernel feeds a later stage from the point where the earlier stage's output starts) and leaves the
other rows untouched. ``t`` counts the values this primitive has been fed before this one.
"""

from __future__ import annotations

from numbers import Integral
from types import ModuleType
from typing import Any

from core.errors import ConfigError
from core.features.kernel import Stage

__all__ = ["HighLow", "check_periods", "ordered_sum", "shift", "window_init", "ema_init", "ema", "sma_init",
           "sma"]

NAN = float("nan")


def check_periods(fn: str, least: int, **periods: int) -> None:
    """TA-Lib's range for period parameters: ``least`` to 100000.

    Raises:
        ConfigError: a period is not an integer in range.
    """
    for name, value in periods.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or not least <= value <= 100_000:
            raise ConfigError(f"{fn} {name}={value!r}: must be an integer from {least} to 100000")


def ordered_sum(xp: ModuleType, w):
    """Sum over axis 0 of ``w`` (width, n), the rows added one after the other, first to last: a
    window's values oldest first, as TA-Lib's C loops (and a reference written as a loop) add them.

    NumPy reduces a non-contiguous axis row by row, in order; only a contiguous reduction is
    pairwise, which rounds differently. So ``w`` is made C-contiguous (free for the engine's
    time-major history and its transposed windows), and a single column, which NumPy would treat
    as one contiguous run, is reduced beside a copy of itself. ``cumsum`` keeps the order too but
    costs about 15x more (it runs along the short axis, one column at a time). On a GPU the order
    is the device's (CuPy reduces in a tree; its results agree to rounding).
    """
    w = xp.ascontiguousarray(w)
    if w.shape[1] == 1:
        return xp.concatenate([w, w], axis=1).sum(axis=0)[:1]
    return w.sum(axis=0)


def window_init(xp: ModuleType, n: int, width: int):
    """A history of ``width`` values per row, NaN until filled."""
    return xp.full((n, width), NAN)


def shift(xp: ModuleType, buf, x, live=None):
    """``buf`` with ``x`` appended as the newest column (oldest dropped); rows where ``live`` is
    False keep their history."""
    new = xp.concatenate([buf[:, 1:], x[:, None]], axis=1)
    if live is None:
        return new
    return xp.where(live[:, None], new, buf)


def ema_init(xp: ModuleType, n: int) -> dict[str, Any]:
    return {"sum": xp.zeros(n), "v": xp.full(n, NAN)}


def ema(xp: ModuleType, s: dict[str, Any], x, t, period: int, k: float):
    """TA-Lib's EMA: seeded by the SMA of the first ``period`` values, then
    ``((x - prev) * k) + prev``. Returns the EMA (NaN before ``period`` values).

    State ``s``: ``sum`` (seed accumulator), ``v`` (current value).
    """
    acc = s["sum"] + x
    seeding = (t >= 0) & (t < period)
    s["sum"] = xp.where(seeding, acc, s["sum"])
    upd = ((x - s["v"]) * k) + s["v"]
    v = xp.where(t == period - 1, acc / period, xp.where(t >= period, upd, s["v"]))
    s["v"] = v
    return v


def sma_init(xp: ModuleType, n: int, period: int) -> dict[str, Any]:
    return {"total": xp.zeros(n), "win": window_init(xp, n, period)}


def sma(xp: ModuleType, s: dict[str, Any], x, t, period: int):
    """TA-Lib's SMA: a running ``periodTotal`` that adds the new value, divides, then subtracts the
    value leaving the window. Returns the SMA (NaN before ``period`` values).

    State ``s``: ``total`` and ``win`` (the last ``period`` inputs, oldest first).
    """
    live = t >= 0
    win = shift(xp, s["win"], x, live)
    s["win"] = win
    tmp = s["total"] + x
    full = t >= period - 1
    # TA-Lib subtracts the oldest value of the window right after using the total.
    s["total"] = xp.where(live, xp.where(full, tmp - win[:, 0], tmp), s["total"])
    return xp.where(full & live, tmp / period, NAN)


class HighLow(Stage):
    """(highest high, lowest low) of the last ``timeperiod`` bars, this one included; NaN while the
    window reaches before a row's first bar. One stage for every kernel reading the same window's
    extremes (MIDPRICE and WILLR of one period, the %K of STOCH and STOCHF)."""

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        p = self.params["timeperiod"]
        return {"high": p, "low": p}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        # Along axis 0 of the time-major history (the window's transpose): across rows, several
        # times faster than along each row's short window.
        return b.window("high", p).T.max(axis=0), b.window("low", p).T.min(axis=0)
