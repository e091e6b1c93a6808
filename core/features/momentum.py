"""Momentum oscillators: RSI, stochastics, rates of change, CCI, MFI and friends.

Every kernel here repeats the bundled TA-Lib's arithmetic in its order, zero tests included:

* a fixed band ``|v| < 1e-14`` (TA_IS_ZERO) where TA-Lib keeps one (PPO's slow average);
* a band scaled to the operands, ``|a - b| <= 1e-14 * (|a| + |b|)`` (TA_IS_ZERO_SCALED), for a
  difference of two prices (a flat high/low range, an unchanged typical price, CCI's deviation);
* an exact test where the tested value is a sum of non-negative terms (RSI, CMO, ULTOSC, MFI) or a
  raw price (ROC's old price, TRIX's old average, BOP's range).
"""

from __future__ import annotations


from core.errors import ConfigError
from core.features import _prim
from core.features._prim import HighLow
from core.features._prim import check_periods as _check_periods
from core.features.kernel import Kernel, Stage

__all__ = [
    "RSI", "STOCH", "STOCHF", "STOCHRSI", "ROC", "ROCP", "ROCR", "ROCR100", "MOM", "WILLR", "CCI",
    "CMO", "APO", "PPO", "TRIX", "ULTOSC", "BOP", "MFI", "defaults",
]

NAN = float("nan")
_EPSILON = 1e-14  # TA_EPSILON of the bundled TA-Lib
_MA_TYPES = {0: "SMA", 1: "EMA"}


def _is_zero(xp, v):
    """TA-Lib's TA_IS_ZERO: inside the fixed band (-1e-14, 1e-14)."""
    return (-_EPSILON < v) & (v < _EPSILON)


def _is_zero_scaled(xp, v, scale):
    """TA-Lib's TA_IS_ZERO_SCALED: ``|v| <= 1e-14 * scale`` (``scale`` = |a| + |b| of a difference)."""
    return xp.abs(v) <= _EPSILON * scale


# ------------------------------------------------------------------------ composite-kernel state


def _sub(s, prefix: str) -> dict:
    """The state entries of one stage of a composite kernel, keys without ``prefix``."""
    return {k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)}


def _put(s, prefix: str, stage: dict) -> None:
    for k, v in stage.items():
        s[prefix + k] = v


def _with_prefix(prefix: str, stage: dict) -> dict:
    return {prefix + k: v for k, v in stage.items()}


def _check_matype(fn: str, name: str, matype: int) -> None:
    if matype not in _MA_TYPES:
        raise ConfigError(f"{fn} {name}={matype!r}: supported MA types are {sorted(_MA_TYPES)} "
                          f"({', '.join(_MA_TYPES.values())})")


# ---------------------------------------------------------------------------- window primitives


def _across(xp, w):
    """A window ``w`` (rows, width) of `Bars.window` as a contiguous (width, rows) array, so that
    a max/min over the window runs across rows: NumPy reduces a short inner axis several times
    slower (widths 5 to 30). Free when every row steps (the engine's history is time-major); a
    copy when only some rows step (the engine then hands over a row-major window). Not for sums
    whose order matters: with one row NumPy adds pairwise again."""
    return xp.ascontiguousarray(w.T)


def _slot(xp, t, width: int):
    """``t mod width`` (non-negative, ``t`` may be negative) by floor division: NumPy's integer
    ``%`` costs twice as much."""
    return t - (t // width) * width


def _ring(xp, s, key: str, time_major: bool = False):
    """The per-row circular buffer ``s[key]`` (n, width), bar t of a row in slot ``t mod width``,
    as (ring, flat view): one value per row is read or written as ``flat[pos]`` with positions
    from `_ring_pos`, O(n), where shifting a window costs O(n * width) and a (rows, slot) pair of
    index arrays is several times slower in NumPy.

    ``time_major`` keeps the ring in column-major order (memory (width, n)), so ``ring.T[j]`` is
    slot j of every row, contiguous: for kernels that reduce across the slots. The ring is
    converted (and stored back) when it is not in that order: once after the engine grows, and
    every bar for the copy the engine hands a kernel when only some rows step. Otherwise
    row-major, which the engine keeps.
    """
    ring = s[key]
    ring = s[key] = xp.asfortranarray(ring) if time_major else xp.ascontiguousarray(ring)
    return ring, (ring.T if time_major else ring).reshape(-1)


def _ring_pos(xp, ring, t):
    """Positions of slot ``t mod width`` of each row in the flat view of ``ring`` (`_ring`)."""
    n, width = ring.shape
    slot = _slot(xp, t, width)
    if ring.flags.c_contiguous:
        return xp.arange(n) * width + slot
    return slot * n + xp.arange(n)


def _patch_rows(xp, need, general, args, steady):
    """``general(*args)``, a kernel's full per-row formula (a tuple of arrays, right for every
    row), computed with NumPy only for the rows where ``need`` holds: the other rows take
    ``steady()``, a shorter formula right where ``need`` does not hold (past the warm-up, no reset
    of a window's sums). Returns a list of arrays.

    Rows warming up are few once a feed runs, so every row pays only the steady formula, and
    finding the others costs no transfer (NumPy arrays are on the host). On a GPU, where a
    device-to-host read would stall, ``general`` runs for every row.
    """
    if xp.__name__ != "numpy":
        return list(general(*args))
    out = list(steady())
    idx = xp.flatnonzero(need)
    if idx.size:
        for dst, v in zip(out, general(*(a[idx] for a in args))):
            dst[idx] = v
    return out


def _sma_init(xp, n, period: int) -> dict:
    return {"tmp": xp.zeros(n), "ring": _prim.window_init(xp, n, period)}


def _sma(xp, s, x, t, period: int):
    """`_prim.sma` (TA-Lib's running ``periodTotal``, the same arithmetic) over a circular buffer
    written in place instead of a shifted window. The state keeps the total before the value
    leaving the window is subtracted (``tmp``); that value, x[t - period], is subtracted on the
    next bar, read from the slot x[t] is about to overwrite: the same float operations in the
    same order as `_prim.sma`. For a series a kernel derives; an SMA of a bar field reads the
    shared history (`_close_sma`)."""
    ring, flat = _ring(xp, s, "ring")
    pos = _ring_pos(xp, ring, t)
    leaving = flat[pos]  # x[t - period]: the last value of the previous bar's window
    flat[pos] = x
    prev = s["tmp"]

    def general(t, prev, leaving, x):
        tmp = xp.where(t >= period, prev - leaving, prev) + x
        return xp.where(t >= 0, tmp, prev), xp.where(t >= period - 1, tmp / period, NAN)

    def steady():  # a full window
        tmp = (prev - leaving) + x
        return tmp, tmp / period

    s["tmp"], out = _patch_rows(xp, t < period, general, (t, prev, leaving, x), steady)
    return out


def _ma_init(xp, n, matype: int, period: int) -> dict:
    return _sma_init(xp, n, period) if matype == 0 else _prim.ema_init(xp, n)


def _ema_stage(xp, s, prefix: str, x, t, period: int, k: float):
    """`_prim.ema` (TA-Lib's EMA: seeded by the mean of the first ``period`` values, then
    ``((x - prev) * k) + prev``, the same arithmetic) on the state entries ``prefix*`` (``sum``,
    ``v``) of a composite kernel's flat state; the seeding only for rows still in it
    (`_patch_rows`). ``t`` counts the values fed to this stage before this one."""
    sum_, v = s[prefix + "sum"], s[prefix + "v"]

    def general(t, sum_, v, x):
        acc = sum_ + x
        seeding = (t >= 0) & (t < period)
        return (xp.where(seeding, acc, sum_),
                xp.where(t == period - 1, acc / period, xp.where(t >= period, ((x - v) * k) + v, v)))

    # Past the seed the sum stays as it is (written in place for the rows still seeding).
    s[prefix + "sum"], s[prefix + "v"] = sum_, v = _patch_rows(
        xp, t < period, general, (t, sum_, v, x), lambda: (sum_, ((x - v) * k) + v))
    return v


def _ma(xp, s, prefix: str, x, t, matype: int, period: int):
    """TA-Lib's TA_MA (SMA or EMA) on the state entries ``prefix*``; period 1 copies the input, as
    TA_MA does. ``t`` counts the values fed to this stage before this one."""
    if period == 1:
        return xp.where(t >= 0, x, NAN)
    if matype == 1:
        return _ema_stage(xp, s, prefix, x, t, period, 2.0 / (period + 1))
    st = _sub(s, prefix)
    v = _sma(xp, st, x, t, period)
    _put(s, prefix, st)
    return v


def _slot_sum(xp, slots, center=None):
    """Sum of the rows of ``slots`` (width, n) added one after the other, slot 0 first: the order
    of TA-Lib's loops over its circular buffer. With ``center`` (n,), the sum of ``|slot -
    center|``. A reduction would not keep the order (NumPy adds a contiguous axis pairwise, a GPU
    in a tree), ``cumsum`` along the short axis costs several times more than these width - 1
    whole-row additions, and row by row no (width, n) temporary is made."""
    if center is None:
        total = slots[0] + slots[1]
        for j in range(2, slots.shape[0]):
            total += slots[j]
        return total
    total = xp.abs(slots[0] - center)
    dev = xp.empty_like(total)
    for j in range(1, slots.shape[0]):
        xp.subtract(slots[j], center, out=dev)
        total += xp.abs(dev, out=dev)
    return total


# ------------------------------------------------------------------------------- shared recurrences


def _rsi_init(xp, n) -> dict:
    return {"prev": xp.full(n, NAN), "gain": xp.zeros(n), "loss": xp.zeros(n)}


def _gain_loss(xp, s, x, t, p: int, scale):
    """TA-Lib's Wilder-smoothed average gain and loss of ``x`` (state ``prev``, ``gain``,
    ``loss``), defined from ``t == p`` on: plain sums of the first ``p`` gains and losses, scaled
    on bar p, then ``scale(prev * (p - 1) + value)``. ``scale`` is ``v * (1 / p)`` for RSI and
    ``v / p`` for CMO, as the bundled TA-Lib computes them. The plain sums only for rows up to
    bar p (`_patch_rows`).
    """
    diff = x - s["prev"]
    s["prev"] = x
    # fmax: 0 where diff is NaN (a row's first bar: no previous value), so that bar adds 0 to the
    # initial 0. A -0.0 in place of TA-Lib's 0 adds the same to a sum that is never -0.0.
    up = xp.fmax(diff, 0.0)
    down = xp.fmax(-diff, 0.0)
    gain, loss = s["gain"], s["loss"]

    def general(t, gain, loss, up, down):
        def average(acc, v):
            seed = acc + v
            return xp.where(t > p, scale(acc * (p - 1) + v), xp.where(t == p, scale(seed), seed))
        return average(gain, up), average(loss, down)

    s["gain"], s["loss"] = gain, loss = _patch_rows(
        xp, t <= p, general, (t, gain, loss, up, down),
        lambda: (scale(gain * (p - 1) + up), scale(loss * (p - 1) + down)))
    return gain, loss


def _rsi(xp, s, x, t, p: int):
    """TA-Lib's RSI of ``x`` (state ``prev``, ``gain``, ``loss``); defined from ``t == p`` on.

    Seed: plain sums of the first ``p`` gains and losses, times ``1 / p``. Then Wilder:
    ``(prev * (p - 1) + x) * (1 / p)`` (the bundled TA-Lib multiplies by the inverse in RSI, where
    CMO divides). The gain + loss total is tested exactly (> 0), as TA-Lib does.
    """
    inv = 1.0 / p
    gain, loss = _gain_loss(xp, s, x, t, p, lambda v: v * inv)
    total = gain + loss
    return xp.where(total > 0.0, 100.0 * (gain / total), 0.0)


def _fast_k(xp, highest, lowest, x):
    """Fast %K as TA-Lib computes it: ``((x - lowest) / (highest - lowest)) * 100``, 0 on a range
    that is zero to within 1e-14 of ``|highest| + |lowest|``."""
    rng = highest - lowest
    flat = _is_zero_scaled(xp, rng, xp.abs(highest) + xp.abs(lowest))
    return xp.where(flat, 0.0, ((x - lowest) / rng) * 100.0)


class _RSILine(Stage):
    """TA-Lib's RSI of the close (`_rsi`): one stage for RSI and STOCHRSI of the same period."""

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def init(self, xp, n):
        return _rsi_init(xp, n)

    def step(self, xp, s, b):
        return _rsi(xp, s, b.close, b.t, self.params["timeperiod"])


class _FastK(Stage):
    """Fast %K of the close in the last ``fastk_period`` bars' range (`_fast_k`): one stage for
    STOCH and STOCHF of the same %K period."""

    def __init__(self, fastk_period: int) -> None:
        super().__init__(fastk_period=fastk_period)
        self._extremes = HighLow(fastk_period)

    def stages(self):
        return (self._extremes,)

    def step(self, xp, s, b):
        highest, lowest = b.stage(self._extremes)
        return _fast_k(xp, highest, lowest, b.close)


class _FastKMA(Stage):
    """TA_MA of the fast %K (`_ma`, from the bar %K is first defined): STOCH's slow %K and
    STOCHF's %D, the same line when their periods and MA types agree (5/3/SMA by default)."""

    def __init__(self, fastk_period: int, period: int, matype: int) -> None:
        super().__init__(fastk_period=fastk_period, period=period, matype=matype)
        self._fastk = _FastK(fastk_period)

    def stages(self):
        return (self._fastk,)

    def init(self, xp, n):
        return _ma_init(xp, n, self.params["matype"], self.params["period"])

    def step(self, xp, s, b):
        p = self.params
        return _ma(xp, s, "", b.stage(self._fastk), b.t - (p["fastk_period"] - 1), p["matype"], p["period"])


def _close_sma(xp, s, key: str, b, period: int):
    """TA-Lib's SMA of the close (`_prim.sma`'s arithmetic) with the running total in ``s[key]``
    and the value leaving the window read from the shared close history (``windows`` must ask for
    ``period`` closes)."""
    tmp = s[key] + b.close
    full = b.t >= period - 1
    s[key] = xp.where(full, tmp - b.window("close", period)[:, 0], tmp)
    return xp.where(full, tmp / period, NAN)


def _roc_parts(b, period: int):
    """(this close, the close ``period`` bars back), both from the shared close history."""
    return b.close, b.window("close", period + 1)[:, 0]


# ---------------------------------------------------------------------------------------- RSI


class RSI(Kernel):
    """Relative strength index with Wilder smoothing (TA-Lib RSI).

    Formula: d = close - previous close; gain = max(d, 0), loss = max(-d, 0); the first average
    gain/loss is the plain mean of the first timeperiod values, then avg = (avg * (timeperiod - 1)
    + value) * (1 / timeperiod); RSI = 100 * avg_gain / (avg_gain + avg_loss).

    Edge cases: flat prices (avg_gain + avg_loss exactly 0) give 0; only gains give 100. Volume is
    not read.

    Reference: TA-Lib RSI; J. Welles Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib, talib_inputs, family = "rsi", "RSI", ("close",), "momentum"

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("RSI", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)
        self._rsi = _RSILine(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def stages(self):
        return (self._rsi,)

    def step(self, xp, s, b):
        return (b.stage(self._rsi),)


# ------------------------------------------------------------------------------------ stochastics


class STOCH(Kernel):
    """Slow stochastic oscillator: %K smoothed, and its signal line %D (TA-Lib STOCH).

    Formula: fastk = 100 * (close - LL) / (HH - LL), with HH/LL the highest high / lowest low of
    the last fastk_period bars; slowk = MA(fastk, slowk_period, slowk_matype); slowd = MA(slowk,
    slowd_period, slowd_matype). MA types: 0 SMA, 1 EMA.

    Edge cases: a flat range (HH - LL zero to within 1e-14 of |HH| + |LL|, e.g. flat prices) gives
    fastk = 0, so flat prices give slowk = slowd = 0. Volume is not read.

    Reference: TA-Lib STOCH; George Lane's stochastics.
    """

    fn, talib, talib_inputs, family = "stoch", "STOCH", ("high", "low", "close"), "momentum"
    output_names = ("slowk", "slowd")
    inputs = ("high", "low", "close")

    def __init__(self, fastk_period: int = 5, slowk_period: int = 3, slowk_matype: int = 0,
                 slowd_period: int = 3, slowd_matype: int = 0) -> None:
        _check_periods("STOCH", 1, fastk_period=fastk_period, slowk_period=slowk_period,
                       slowd_period=slowd_period)
        _check_matype("STOCH", "slowk_matype", slowk_matype)
        _check_matype("STOCH", "slowd_matype", slowd_matype)
        super().__init__(fastk_period=fastk_period, slowk_period=slowk_period, slowk_matype=slowk_matype,
                         slowd_period=slowd_period, slowd_matype=slowd_matype)
        self._slowk = _FastKMA(fastk_period, slowk_period, slowk_matype)

    @property
    def lookback(self) -> int:
        p = self.params
        return p["fastk_period"] - 1 + p["slowk_period"] - 1 + p["slowd_period"] - 1

    def stages(self):
        return (self._slowk,)

    def init(self, xp, n):
        p = self.params
        return _with_prefix("d.", _ma_init(xp, n, p["slowd_matype"], p["slowd_period"]))

    def step(self, xp, s, b):
        p = self.params
        slowk = b.stage(self._slowk)
        tk = b.t - (p["fastk_period"] - 1)
        slowd = _ma(xp, s, "d.", slowk, tk - (p["slowk_period"] - 1), p["slowd_matype"], p["slowd_period"])
        return slowk, slowd


class STOCHF(Kernel):
    """Fast stochastic oscillator: raw %K and its signal line %D (TA-Lib STOCHF).

    Formula: fastk = 100 * (close - LL) / (HH - LL), with HH/LL the highest high / lowest low of
    the last fastk_period bars; fastd = MA(fastk, fastd_period, fastd_matype). MA types: 0 SMA,
    1 EMA.

    Edge cases: a flat range (HH - LL zero to within 1e-14 of |HH| + |LL|, e.g. flat prices) gives
    fastk = 0. Volume is not read.

    Reference: TA-Lib STOCHF; George Lane's stochastics.
    """

    fn, talib, talib_inputs, family = "stochf", "STOCHF", ("high", "low", "close"), "momentum"
    output_names = ("fastk", "fastd")
    inputs = ("high", "low", "close")

    def __init__(self, fastk_period: int = 5, fastd_period: int = 3, fastd_matype: int = 0) -> None:
        _check_periods("STOCHF", 1, fastk_period=fastk_period, fastd_period=fastd_period)
        _check_matype("STOCHF", "fastd_matype", fastd_matype)
        super().__init__(fastk_period=fastk_period, fastd_period=fastd_period, fastd_matype=fastd_matype)
        self._fastk = _FastK(fastk_period)
        self._fastd = _FastKMA(fastk_period, fastd_period, fastd_matype)

    @property
    def lookback(self) -> int:
        return self.params["fastk_period"] - 1 + self.params["fastd_period"] - 1

    def stages(self):
        return (self._fastk, self._fastd)

    def step(self, xp, s, b):
        return b.stage(self._fastk), b.stage(self._fastd)


class STOCHRSI(Kernel):
    """Stochastic RSI: the fast stochastic of the RSI series (TA-Lib STOCHRSI).

    Formula: r = RSI(close, timeperiod); fastk = 100 * (r - min(r)) / (max(r) - min(r)) over the
    last fastk_period RSI values; fastd = MA(fastk, fastd_period, fastd_matype). MA types: 0 SMA,
    1 EMA.

    Edge cases: an RSI range zero to within 1e-14 of |max| + |min| (flat prices, a steady trend
    that pins RSI at 0 or 100) gives fastk = 0. Volume is not read.

    Reference: TA-Lib STOCHRSI (STOCHF run on the RSI as high, low and close); Tushar Chande and
    Stanley Kroll, The New Technical Trader (1994).
    """

    fn, talib, talib_inputs, family = "stochrsi", "STOCHRSI", ("close",), "momentum"
    output_names = ("fastk", "fastd")

    def __init__(self, timeperiod: int = 14, fastk_period: int = 5, fastd_period: int = 3,
                 fastd_matype: int = 0) -> None:
        _check_periods("STOCHRSI", 2, timeperiod=timeperiod)
        _check_periods("STOCHRSI", 1, fastk_period=fastk_period, fastd_period=fastd_period)
        _check_matype("STOCHRSI", "fastd_matype", fastd_matype)
        super().__init__(timeperiod=timeperiod, fastk_period=fastk_period, fastd_period=fastd_period,
                         fastd_matype=fastd_matype)
        self._rsi = _RSILine(timeperiod)

    @property
    def lookback(self) -> int:
        p = self.params
        return p["timeperiod"] + p["fastk_period"] - 1 + p["fastd_period"] - 1

    def stages(self):
        return (self._rsi,)

    def init(self, xp, n):
        p = self.params
        return {"rsi_ring": _prim.window_init(xp, n, p["fastk_period"]),
                **_with_prefix("d.", _ma_init(xp, n, p["fastd_matype"], p["fastd_period"]))}

    def step(self, xp, s, b):
        p = self.params
        period, w = p["timeperiod"], p["fastk_period"]
        tr = b.t - period  # RSI values seen before this one
        rsi = b.stage(self._rsi)
        # The last fastk_period RSI values, in any order, time-major for the max/min across them.
        ring, flat = _ring(xp, s, "rsi_ring", time_major=True)
        flat[_ring_pos(xp, ring, tr)] = rsi
        fastk = _fast_k(xp, ring.T.max(axis=0), ring.T.min(axis=0), rsi)
        fastd = _ma(xp, s, "d.", fastk, tr - (w - 1), p["fastd_matype"], p["fastd_period"])
        return fastk, fastd


class WILLR(Kernel):
    """Williams' %R: the close's place in the recent high-low range, from 0 (top) to -100 (bottom).

    Formula: willr = -100 * (HH - close) / (HH - LL), with HH/LL the highest high / lowest low of
    the last timeperiod bars.

    Edge cases: a flat range (HH - LL zero to within 1e-14 of |HH| + |LL|, e.g. flat prices) gives
    0. Volume is not read.

    Reference: TA-Lib WILLR; Larry Williams.
    """

    fn, talib, talib_inputs, family = "willr", "WILLR", ("high", "low", "close"), "momentum"
    inputs = ("high", "low", "close")

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("WILLR", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)
        self._extremes = HighLow(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def stages(self):
        return (self._extremes,)

    def step(self, xp, s, b):
        highest, lowest = b.stage(self._extremes)
        rng = highest - lowest
        flat = _is_zero_scaled(xp, rng, xp.abs(highest) + xp.abs(lowest))
        return (xp.where(flat, 0.0, ((highest - b.close) / rng) * -100.0),)


# --------------------------------------------------------------------------------- rates of change


class _RateOfChange(Kernel):
    """Shared shape of ROC, ROCP, ROCR, ROCR100 and MOM: the close against the close ``timeperiod``
    bars back."""

    inputs = ("close",)
    talib_inputs = ("close",)
    family = "momentum"

    def __init__(self, timeperiod: int = 10) -> None:
        _check_periods(self.talib, 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}

    def step(self, xp, s, b):
        x, old = _roc_parts(b, self.params["timeperiod"])
        return (xp.where(old != 0.0, self._rate(x, old), 0.0),)

    @staticmethod
    def _rate(x, old):
        raise NotImplementedError


class ROC(_RateOfChange):
    """Rate of change in percent over ``timeperiod`` bars (TA-Lib ROC).

    Formula: roc = ((close / close[timeperiod bars ago]) - 1) * 100.

    Edge cases: an old close of exactly 0 gives 0; flat prices give 0. Volume is not read.

    Reference: TA-Lib ROC.
    """

    fn, talib = "roc", "ROC"

    @staticmethod
    def _rate(x, old):
        return ((x / old) - 1.0) * 100.0


class ROCP(_RateOfChange):
    """Rate of change as a fraction over ``timeperiod`` bars (TA-Lib ROCP).

    Formula: rocp = (close - close[timeperiod bars ago]) / close[timeperiod bars ago].

    Edge cases: an old close of exactly 0 gives 0; flat prices give 0. Volume is not read.

    Reference: TA-Lib ROCP.
    """

    fn, talib = "rocp", "ROCP"

    @staticmethod
    def _rate(x, old):
        return (x - old) / old


class ROCR(_RateOfChange):
    """Ratio of the close to the close ``timeperiod`` bars back (TA-Lib ROCR).

    Formula: rocr = close / close[timeperiod bars ago].

    Edge cases: an old close of exactly 0 gives 0; flat prices give 1. Volume is not read.

    Reference: TA-Lib ROCR.
    """

    fn, talib = "rocr", "ROCR"

    @staticmethod
    def _rate(x, old):
        return x / old


class ROCR100(_RateOfChange):
    """Ratio of the close to the close ``timeperiod`` bars back, times 100 (TA-Lib ROCR100).

    Formula: rocr100 = (close / close[timeperiod bars ago]) * 100.

    Edge cases: an old close of exactly 0 gives 0; flat prices give 100. Volume is not read.

    Reference: TA-Lib ROCR100.
    """

    fn, talib = "rocr100", "ROCR100"

    @staticmethod
    def _rate(x, old):
        return (x / old) * 100.0


class MOM(_RateOfChange):
    """Momentum: the change of the close over ``timeperiod`` bars (TA-Lib MOM).

    Formula: mom = close - close[timeperiod bars ago].

    Edge cases: flat prices give 0; an old close of 0 is an ordinary value here. Volume is not
    read.

    Reference: TA-Lib MOM.
    """

    fn, talib = "mom", "MOM"

    def step(self, xp, s, b):
        x, old = _roc_parts(b, self.params["timeperiod"])
        return (x - old,)


# ---------------------------------------------------------------------------- oscillators of price


class CCI(Kernel):
    """Commodity channel index: the typical price's distance from its mean, in mean deviations.

    Formula: tp = (high + low + close) / 3; m = mean of the last timeperiod tp; md = mean of
    |tp_i - m| over the same bars; cci = (tp - m) / (0.015 * md). Both sums run over TA-Lib's
    circular buffer of tp in slot order (bar i in slot i mod timeperiod), as TA-Lib adds them.

    Edge cases: tp - m or md zero to within 1e-14 of |m| (flat prices) gives 0. Volume is not read.

    Reference: TA-Lib CCI; Donald Lambert (1980).
    """

    fn, talib, talib_inputs, family = "cci", "CCI", ("high", "low", "close"), "momentum"
    inputs = ("high", "low", "close")

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("CCI", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def init(self, xp, n):
        return {"ring": _prim.window_init(xp, n, self.params["timeperiod"])}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        tp = (b.high + b.low + b.close) / 3
        ring, flat = _ring(xp, s, "ring", time_major=True)
        flat[_ring_pos(xp, ring, b.t)] = tp
        slots = ring.T  # (timeperiod, n), slot j of every row in row j
        mean = _slot_sum(xp, slots) / p
        meandev = _slot_sum(xp, slots, mean) / p
        dist = tp - mean
        level = xp.abs(mean)
        flat = _is_zero_scaled(xp, dist, level) | _is_zero_scaled(xp, meandev, level)
        return (xp.where(flat, 0.0, dist / (0.015 * meandev)),)


class CMO(Kernel):
    """Chande momentum oscillator: net gain over total movement, Wilder-smoothed (TA-Lib CMO).

    Formula: d = close - previous close; gain = max(d, 0), loss = max(-d, 0); the first averages
    are the plain means of the first timeperiod values, then avg = (avg * (timeperiod - 1) + value)
    / timeperiod; cmo = 100 * (avg_gain - avg_loss) / (avg_gain + avg_loss).

    Edge cases: flat prices (avg_gain + avg_loss exactly 0) give 0. Volume is not read.

    Reference: TA-Lib CMO; Tushar Chande and Stanley Kroll, The New Technical Trader (1994).
    """

    fn, talib, talib_inputs, family = "cmo", "CMO", ("close",), "momentum"

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("CMO", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def init(self, xp, n):
        return _rsi_init(xp, n)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        gain, loss = _gain_loss(xp, s, b.close, b.t, p, lambda v: v / p)
        total = gain + loss
        return (xp.where(total > 0.0, 100.0 * ((gain - loss) / total), 0.0),)


class _PriceOscillator(Kernel):
    """Shared shape of APO and PPO: a fast and a slow moving average of the close (TA_INT_PO).

    The bundled TA-Lib runs both averages from the first bar (older versions started the fast one
    at bar ``slowperiod - fastperiod``, which moves an EMA's seed).
    """

    talib_inputs = ("close",)
    family = "momentum"

    def __init__(self, fastperiod: int = 12, slowperiod: int = 26, matype: int = 0) -> None:
        _check_periods(self.talib, 2, fastperiod=fastperiod, slowperiod=slowperiod)
        _check_matype(self.talib, "matype", matype)
        super().__init__(fastperiod=fastperiod, slowperiod=slowperiod, matype=matype)

    def _periods(self) -> tuple[int, int]:
        fast, slow = self.params["fastperiod"], self.params["slowperiod"]
        return (slow, fast) if slow < fast else (fast, slow)  # TA-Lib swaps them too

    @property
    def lookback(self) -> int:
        return self._periods()[1] - 1

    def windows(self):
        # An SMA of the close takes the value leaving its window from the shared close history.
        return {"close": self._periods()[1]} if self.params["matype"] == 0 else {}

    def init(self, xp, n):
        if self.params["matype"] == 0:
            return {"f.total": xp.zeros(n), "s.total": xp.zeros(n)}
        return {**_with_prefix("f.", _prim.ema_init(xp, n)), **_with_prefix("s.", _prim.ema_init(xp, n))}

    def _averages(self, xp, s, b):
        fast, slow = self._periods()
        if self.params["matype"] == 0:
            return _close_sma(xp, s, "f.total", b, fast), _close_sma(xp, s, "s.total", b, slow)
        return _ma(xp, s, "f.", b.close, b.t, 1, fast), _ma(xp, s, "s.", b.close, b.t, 1, slow)


class APO(_PriceOscillator):
    """Absolute price oscillator: fast minus slow moving average of the close (TA-Lib APO).

    Formula: apo = MA(close, fastperiod, matype) - MA(close, slowperiod, matype); MA types: 0 SMA,
    1 EMA (the bundled TA-Lib defaults to 1; this feature set uses 0). Both MAs start at the first
    bar; periods given in the wrong order are swapped, as TA-Lib does.

    Edge cases: flat prices give 0, up to the rounding residue of the SMA's running sums (as in
    TA-Lib). Volume is not read.

    Reference: TA-Lib APO.
    """

    fn, talib = "apo", "APO"

    def step(self, xp, s, b):
        f, sl = self._averages(xp, s, b)
        return (f - sl,)


class PPO(_PriceOscillator):
    """Percentage price oscillator: fast minus slow moving average, in percent of the slow one.

    Formula: ppo = ((MA(close, fastperiod) - MA(close, slowperiod)) / MA(close, slowperiod)) * 100;
    MA types: 0 SMA, 1 EMA (the bundled TA-Lib defaults to 1; this feature set uses 0). Both MAs
    start at the first bar; periods given in the wrong order are swapped, as TA-Lib does.

    Edge cases: a slow average inside TA-Lib's fixed band |MA| < 1e-14 (prices at or near 0) gives
    0; flat prices give 0, up to the rounding residue of the SMA's running sums (as in TA-Lib).
    Volume is not read.

    Reference: TA-Lib PPO.
    """

    fn, talib = "ppo", "PPO"

    def step(self, xp, s, b):
        f, sl = self._averages(xp, s, b)
        return (xp.where(_is_zero(xp, sl), 0.0, ((f - sl) / sl) * 100.0),)


class TRIX(Kernel):
    """One-bar rate of change in percent of a triple exponential moving average of the close.

    Formula: e1 = EMA(close), e2 = EMA(e1), e3 = EMA(e2), each with k = 2 / (timeperiod + 1) and
    seeded by the mean of its first timeperiod inputs; trix = ((e3 / previous e3) - 1) * 100.

    Edge cases: a previous e3 of exactly 0 gives 0; flat prices give 0. Volume is not read.

    Reference: TA-Lib TRIX; Jack Hutson.
    """

    fn, talib, talib_inputs, family = "trix", "TRIX", ("close",), "momentum"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("TRIX", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return 3 * (self.params["timeperiod"] - 1) + 1

    def init(self, xp, n):
        return {k: v for i in (1, 2, 3) for k, v in _with_prefix(f"e{i}.", _prim.ema_init(xp, n)).items()}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        t = b.t
        k = 2.0 / (p + 1)
        e1 = _ema_stage(xp, s, "e1.", b.close, t, p, k)
        e2 = _ema_stage(xp, s, "e2.", e1, t - (p - 1), p, k)
        prev = s["e3.v"]
        e3 = _ema_stage(xp, s, "e3.", e2, t - 2 * (p - 1), p, k)
        return (xp.where(prev != 0.0, ((e3 / prev) - 1.0) * 100.0, 0.0),)


class ULTOSC(Kernel):
    """Ultimate oscillator: buying pressure over true range on three horizons, weighted 4:2:1.

    Formula: bp = close - min(low, previous close); tr = max(high - low, |previous close - high|,
    |previous close - low|); a_i / b_i = running sums of bp / tr over the last period_i bars (the
    periods sorted shortest first); ultosc = 100 * (4 * a1 / b1 + 2 * a2 / b2 + a3 / b3) / 7, a
    term whose tr sum is not > 0 left out. A run of bars with bp = tr = 0 as long as a window resets
    that window's sums to exactly 0, as TA-Lib does.

    Edge cases: flat prices give 0. Volume is not read.

    Reference: TA-Lib ULTOSC; Larry Williams (1985).
    """

    fn, talib, talib_inputs, family = "ultosc", "ULTOSC", ("high", "low", "close"), "momentum"
    inputs = ("high", "low", "close")

    def __init__(self, timeperiod1: int = 7, timeperiod2: int = 14, timeperiod3: int = 28) -> None:
        _check_periods("ULTOSC", 1, timeperiod1=timeperiod1, timeperiod2=timeperiod2, timeperiod3=timeperiod3)
        super().__init__(timeperiod1=timeperiod1, timeperiod2=timeperiod2, timeperiod3=timeperiod3)

    def _periods(self) -> tuple[int, int, int]:
        p = self.params
        return tuple(sorted((p["timeperiod1"], p["timeperiod2"], p["timeperiod3"])))

    @property
    def lookback(self) -> int:
        return self._periods()[2]

    def windows(self):
        w = self._periods()[2]
        return {"high": w + 1, "low": w + 1, "close": w + 2}

    def init(self, xp, n):
        return {**{f"{sum_}{i}": xp.zeros(n) for sum_ in "ab" for i in (1, 2, 3)}, "null_run": xp.zeros(n)}

    @staticmethod
    def _terms(xp, high, low, close, prev_close):
        """(close - true low, true range) of one bar, in TA-Lib's order."""
        bp = close - xp.minimum(low, prev_close)
        tr = xp.maximum(xp.maximum(high - low, xp.abs(prev_close - high)), xp.abs(prev_close - low))
        return bp, tr

    def step(self, xp, s, b):
        periods = self._periods()
        longest = periods[2]
        t = b.t
        hw, lw, cw = b.window("high", longest + 1), b.window("low", longest + 1), b.window("close", longest + 2)
        bp, tr = self._terms(xp, b.high, b.low, b.close, cw[:, -2])
        run = (s["null_run"] + 1.0) * ((tr == 0.0) & (bp == 0.0))
        s["null_run"] = xp.minimum(run, longest)  # run <= t: only capped once the oscillator runs
        # The sums a_i (buying pressure) and b_i (true range) keep bar t's terms until bar t + 1,
        # which first takes out those of bar t + 1 - p (TA-Lib subtracts them right after its
        # output: the same operations in the same order): column longest - p of the high/low
        # history, longest - p + 1 of the close history (its previous close just before).
        prev, leaving = [], []
        for i, p in enumerate(periods, start=1):
            c = longest - p
            prev += [s[f"a{i}"], s[f"b{i}"]]
            leaving += self._terms(xp, hw[:, c], lw[:, c], cw[:, c + 1], cw[:, c])

        def general(t, run, bp, tr, *args):
            new = []
            for i, p in enumerate(periods):
                a, bsum, lbp, ltr = args[2 * i], args[2 * i + 1], args[6 + 2 * i], args[7 + 2 * i]
                # Window p sums bars from `longest - p + 1` on, as TA-Lib's warm-up adds them;
                # once the oscillator runs, a run of p bars without terms empties it to exactly 0.
                adding = t >= max(1, longest - p + 1)
                empty = (t >= longest) & (run >= p)
                a = xp.where(t > longest, a - lbp, a)
                bsum = xp.where(t > longest, bsum - ltr, bsum)
                new += [xp.where(empty, 0.0, xp.where(adding, a + bp, a)),
                        xp.where(empty, 0.0, xp.where(adding, bsum + tr, bsum))]
            return new

        def steady():  # past the warm-up, no window emptied
            return [(sum_ - out) + term for sum_, out, term in zip(prev, leaving, (bp, tr) * 3)]

        sums = _patch_rows(xp, (t <= longest) | (run >= periods[0]), general, (t, run, bp, tr, *prev, *leaving),
                           steady)
        out = None
        for i in range(3):
            a, bsum = sums[2 * i], sums[2 * i + 1]
            s[f"a{i + 1}"], s[f"b{i + 1}"] = a, bsum
            ratio = xp.where(bsum > 0.0, a / bsum, 0.0)
            out = 4.0 * ratio if i == 0 else (out + 2.0 * ratio if i == 1 else out + ratio)
        return (100.0 * (out / 7.0),)


class BOP(Kernel):
    """Balance of power: the bar's body over its range (TA-Lib BOP).

    Formula: bop = (close - open) / (high - low).

    Edge cases: a range that is not > 0 (high == low, flat prices) gives 0. Volume is not read.

    Reference: TA-Lib BOP; Igor Livshin (2001).
    """

    fn, talib, talib_inputs, family = "bop", "BOP", ("open", "high", "low", "close"), "momentum"
    inputs = ("open", "high", "low", "close")

    @property
    def lookback(self) -> int:
        return 0

    def step(self, xp, s, b):
        rng = b.high - b.low
        return (xp.where(rng > 0.0, (b.close - b.open) / rng, 0.0),)


class MFI(Kernel):
    """Money flow index: the share of money flow on rising typical prices over ``timeperiod`` bars.

    Formula: tp = (high + low + close) / 3; flow = tp * volume, counted positive when tp rose and
    negative when it fell against the previous bar (a change within 1e-14 of |tp| + |previous tp|
    counts as none); mfi = 100 * pos / (pos + neg) over running sums of the last timeperiod flows.
    A run of timeperiod bars without flow resets the sums to exactly 0, as TA-Lib does.

    Edge cases: zero volume or an unchanged typical price adds no flow; a window without flow
    (flat prices, zero volume) gives 0.

    Reference: TA-Lib MFI; Gene Quong and Avrum Soudack.
    """

    fn, talib, talib_inputs, family = "mfi", "MFI", ("high", "low", "close", "volume"), "momentum"
    inputs = ("high", "low", "close", "volume")

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("MFI", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def windows(self):
        w = self.params["timeperiod"] + 1
        return {"high": w, "low": w, "close": w, "volume": w}

    def init(self, xp, n):
        # tp / tp_out: the typical prices of the previous bar and of the bar that left the window
        # on the previous bar, each the "previous typical price" of this bar's pair.
        return {"pos": xp.zeros(n), "neg": xp.zeros(n), "null_run": xp.zeros(n), "tp": xp.full(n, NAN),
                "tp_out": xp.full(n, NAN)}

    @staticmethod
    def _flows(xp, tp, prev_tp, volume):
        """(positive flow, negative flow, unchanged, tp * volume) of one bar, in TA-Lib's order:
        the flow tp * volume counts as none where tp is unchanged (the change within 1e-14 of |tp|
        + |previous tp|), as negative where tp fell."""
        d = tp - prev_tp
        unchanged = _is_zero_scaled(xp, d, xp.abs(tp) + xp.abs(prev_tp))
        flow = tp * volume
        falling = d < 0.0
        return (xp.where(unchanged | falling, 0.0, flow), xp.where(falling & ~unchanged, flow, 0.0),
                unchanged, flow)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        t = b.t
        hw, lw, cw = b.window("high", p + 1), b.window("low", p + 1), b.window("close", p + 1)
        tp = (b.high + b.low + b.close) / 3.0
        tp_out = (hw[:, 0] + lw[:, 0] + cw[:, 0]) / 3.0  # the bar leaving the window
        # This bar against the previous one; the bar leaving the window against the one before.
        pos_in, neg_in, unchanged, flow = self._flows(xp, tp, s["tp"], b.volume)
        pos_out, neg_out, _, _ = self._flows(xp, tp_out, s["tp_out"], b.window("volume", p + 1)[:, 0])
        s["tp"], s["tp_out"] = tp, tp_out
        run = (s["null_run"] + 1.0) * (unchanged | (flow == 0.0))  # bars in a row without flow
        s["null_run"] = xp.minimum(run, float(p))

        def general(t, run, pos, neg, pos_in, neg_in, pos_out, neg_out):
            sliding = t > p
            pos = xp.where(sliding, pos - pos_out, pos) + pos_in
            neg = xp.where(sliding, neg - neg_out, neg) + neg_in
            # A run of timeperiod bars without flow empties the sums to exactly 0.
            keep = (t >= 1) & (run < p)
            return xp.where(keep, pos, 0.0), xp.where(keep, neg, 0.0)

        # The general formula only for rows warming up or without flow for timeperiod bars.
        pos, neg = s["pos"], s["neg"]
        s["pos"], s["neg"] = pos, neg = _patch_rows(
            xp, (t <= p) | (run >= p), general, (t, run, pos, neg, pos_in, neg_in, pos_out, neg_out),
            lambda: ((pos - pos_out) + pos_in, (neg - neg_out) + neg_in))
        total = pos + neg
        pos_clamped = xp.minimum(xp.maximum(pos, 0.0), total)
        return (xp.where(total > 0.0, 100.0 * (pos_clamped / total), 0.0),)


def defaults() -> list[Kernel]:
    """The momentum features every engine computes by default."""
    return [RSI(14), STOCH(5, 3, 0, 3, 0), STOCHF(5, 3, 0), STOCHRSI(14, 5, 3, 0), ROC(10), ROCP(10),
            ROCR(10), ROCR100(10), MOM(10), WILLR(14), CCI(14), CMO(14), APO(12, 26, 0), PPO(12, 26, 0),
            TRIX(30), ULTOSC(7, 14, 28), BOP(), MFI(14)]
