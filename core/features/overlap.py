"""Overlap studies: moving averages, MACD, midpoints, linear regression and price transforms."""

from __future__ import annotations

from core.errors import ConfigError
from core.features._prim import HighLow
from core.features._prim import check_periods as _check_periods
from core.features.kernel import Kernel, Stage

__all__ = [
    "SMA", "EMA", "WMA", "DEMA", "TEMA", "TRIMA", "KAMA", "T3", "MIDPOINT", "MIDPRICE", "MACD",
    "MACDEXT", "MACDFIX", "LINEARREG", "LINEARREG_SLOPE", "LINEARREG_ANGLE", "LINEARREG_INTERCEPT",
    "TSF", "AVGPRICE", "MEDPRICE", "TYPPRICE", "WCLPRICE", "defaults",
]

NAN = float("nan")
_PI = 3.141592653589793  # the literal TA-Lib's LINEARREG_ANGLE divides by


def _ema_init(xp, n, prefix: str = "") -> dict:
    return {prefix + "sum": xp.zeros(n), prefix + "v": xp.full(n, NAN)}


def _ema(xp, s, prefix: str, x, t, period: int, k: float, gated: bool = True):
    """TA-Lib's EMA on the state entries ``prefix + ("sum", "v")``: the mean of the first ``period``
    inputs, then ``((x - prev) * k) + prev`` (``t`` counts this stage's earlier inputs).

    The values of `_prim.ema` with one selection instead of three: before the seed ``prev`` is NaN,
    so the recursion itself gives the NaN. ``gated=False`` is for an input that is real from the
    row's first bar (the close, with ``t`` the row's bar count): the seed sum then needs no gate.
    """
    acc = s[prefix + "sum"] + x
    s[prefix + "sum"] = xp.where(t >= 0, acc, s[prefix + "sum"]) if gated else acc
    prev = s[prefix + "v"]
    v = xp.where(t == period - 1, acc / period, ((x - prev) * k) + prev)
    s[prefix + "v"] = v
    return v


def _t3_ema(xp, s, prefix: str, x, t, period: int, k: float, one_minus_k: float, gated: bool):
    """One of T3's six EMA, as `_ema` but with T3's form of the recursion, ``k*x + (1-k)*prev``."""
    acc = s[prefix + "sum"] + x
    s[prefix + "sum"] = xp.where(t >= 0, acc, s[prefix + "sum"]) if gated else acc
    v = xp.where(t == period - 1, acc / period, k * x + one_minus_k * s[prefix + "v"])
    s[prefix + "v"] = v
    return v


def _sma(xp, s, key: str, x, leaving, t, period: int, gated: bool = True):
    """TA-Lib's SMA running total in ``s[key]``: add ``x``, take total / period, subtract the value
    leaving the window (``leaving``, the input ``period - 1`` bars back; ignored while ``t`` <
    period - 1). ``gated=False`` when ``t`` >= 0 on every row."""
    tmp = s[key] + x
    total = tmp - xp.where(t >= period - 1, leaving, 0.0)
    s[key] = xp.where(t >= 0, total, s[key]) if gated else total
    return tmp / period


# ---------------------------------------------------------------------------------- moving averages


class SMA(Kernel):
    """Simple moving average of the close.

    Formula: SMA_t = (x_{t-n+1} + ... + x_t) / n with n = timeperiod, kept as a running total that
    adds the new close and subtracts the one leaving the window.

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib); timeperiod 1 gives the close.

    Reference: TA-Lib SMA.
    """

    fn, talib, talib_inputs, family = "sma", "SMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("SMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        return {"close": self.params["timeperiod"]}

    def init(self, xp, n):
        return {"total": xp.zeros(n)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        if p == 1:
            return (b.close,)
        return (_sma(xp, s, "total", b.close, b.window("close", p)[:, 0], b.t, p, gated=False),)


class EMA(Kernel):
    """Exponential moving average of the close, seeded by the simple average of the first bars.

    Formula: k = 2 / (n + 1) with n = timeperiod; EMA_{n-1} = mean(x_0..x_{n-1}); then
    EMA_t = (x_t - EMA_{t-1}) * k + EMA_{t-1}.

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib); timeperiod 1 gives the close.

    Reference: TA-Lib EMA (default compatibility: SMA seed).
    """

    fn, talib, talib_inputs, family = "ema", "EMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("EMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def init(self, xp, n):
        return _ema_init(xp, n)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        if p == 1:  # TA-Lib copies the input (its recursion at k = 1 need not give x exactly)
            return (b.close,)
        return (_ema(xp, s, "", b.close, b.t, p, 2.0 / (p + 1), gated=False),)


class WMA(Kernel):
    """Linearly weighted moving average of the close, the newest bar weighted most.

    Formula: WMA_t = (1*x_{t-n+1} + 2*x_{t-n+2} + ... + n*x_t) / (n(n+1)/2) with n = timeperiod,
    kept as TA-Lib does: a running weighted sum that gains n*x_t and loses the running plain sum of
    the window every bar, both rebuilt from the window (oldest first) every 8n outputs.

    Edge cases: flat prices give the price; timeperiod 1 gives the close.

    Reference: TA-Lib WMA.
    """

    fn, talib, talib_inputs, family = "wma", "WMA", ("close",), "overlap"
    _REANCHOR_EVERY = 8  # outputs between TA-Lib's rebuilds of the running sums, in units of timeperiod

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("WMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}

    def init(self, xp, n):
        p = self.params["timeperiod"]
        # `due` counts down to the next rebuild: 8n - 1 at the first output, as in TA-Lib.
        first_due = float((self._REANCHOR_EVERY + 1) * p - 1)
        return {"sub": xp.zeros(n), "wsum": xp.zeros(n), "due": xp.full(n, first_due),
                "scan_sub": xp.zeros(n), "scan_wsum": xp.zeros(n)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        x, t = b.close, b.t
        if p == 1:
            return (x,)
        # TA-Lib: periodSub += x; periodSub -= x[t-p] (0.0 before the window is full);
        # periodSum += x * weight; out = periodSum / divider; periodSum -= periodSub.
        leaving = xp.where(t >= p, b.window("close", p + 1)[:, 0], 0.0)
        sub = (s["sub"] + x) - leaving
        wsum = s["wsum"] + x * xp.minimum(t + 1, p)
        # The rebuild scans the window oldest first with weights 1..n; those terms arrive in bar
        # order, so they are summed over the n bars before each rebuild.
        due = s["due"] - 1.0
        fresh = due == p - 1
        scan_sub = xp.where(fresh, 0.0, s["scan_sub"]) + x
        scan_wsum = xp.where(fresh, 0.0, s["scan_wsum"]) + x * (p - due)
        s["scan_sub"], s["scan_wsum"] = scan_sub, scan_wsum
        rebuild = due <= 0
        sub = xp.where(rebuild, scan_sub, sub)
        wsum = xp.where(rebuild, scan_wsum, wsum)
        s["due"] = xp.where(rebuild, float(self._REANCHOR_EVERY * p), due)
        s["sub"] = sub
        s["wsum"] = xp.where(t >= p - 1, wsum - sub, wsum)
        return (wsum / (p * (p + 1) / 2.0),)


class DEMA(Kernel):
    """Double exponential moving average (Mulloy): twice the EMA less the EMA of the EMA.

    Formula: E1 = EMA(close, n), E2 = EMA(E1, n), each seeded by the mean of its first n inputs;
    DEMA = 2*E1 - E2.

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib); timeperiod 1 gives the close.

    Reference: TA-Lib DEMA; P. G. Mulloy, "Smoothing Data With Faster Moving Averages", Stocks &
    Commodities V.12:1 (1994).
    """

    fn, talib, talib_inputs, family = "dema", "DEMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("DEMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return 2 * (self.params["timeperiod"] - 1)

    def init(self, xp, n):
        return {**_ema_init(xp, n, "e1."), **_ema_init(xp, n, "e2.")}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        if p == 1:
            return (b.close,)
        k = 2.0 / (p + 1)
        e1 = _ema(xp, s, "e1.", b.close, b.t, p, k, gated=False)
        e2 = _ema(xp, s, "e2.", e1, b.t - (p - 1), p, k)
        return (2.0 * e1 - e2,)


class TEMA(Kernel):
    """Triple exponential moving average (Mulloy): 3*EMA - 3*EMA(EMA) + EMA(EMA(EMA)).

    Formula: E1 = EMA(close, n), E2 = EMA(E1, n), E3 = EMA(E2, n), each seeded by the mean of its
    first n inputs; TEMA = E3 + (3*E1 - 3*E2).

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib); timeperiod 1 gives the close.

    Reference: TA-Lib TEMA; P. G. Mulloy, "Smoothing Data With Less Lag", Stocks & Commodities
    V.12:2 (1994).
    """

    fn, talib, talib_inputs, family = "tema", "TEMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("TEMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return 3 * (self.params["timeperiod"] - 1)

    def init(self, xp, n):
        return {**_ema_init(xp, n, "e1."), **_ema_init(xp, n, "e2."), **_ema_init(xp, n, "e3.")}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        if p == 1:
            return (b.close,)
        k = 2.0 / (p + 1)
        e1 = _ema(xp, s, "e1.", b.close, b.t, p, k, gated=False)
        e2 = _ema(xp, s, "e2.", e1, b.t - (p - 1), p, k)
        e3 = _ema(xp, s, "e3.", e2, b.t - 2 * (p - 1), p, k)
        return (e3 + (3.0 * e1 - 3.0 * e2),)


class TRIMA(Kernel):
    """Triangular moving average: weights rise linearly to the middle of the window and fall after.

    Formula: TRIMA = sum(w_j * x_j) / sum(w_j) over the last n = timeperiod closes (j = 0 the
    oldest), w_j = j+1 for j <= floor((n-1)/2) and n-j after: an SMA of an SMA. Advanced as TA-Lib
    does with three running sums (the numerator, the first half and the second half of the window).

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib); timeperiod 1 gives the close.

    Reference: TA-Lib TRIMA.
    """

    fn, talib, talib_inputs, family = "trima", "TRIMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("TRIMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}

    def init(self, xp, n):
        return {"num": xp.zeros(n), "nsub": xp.zeros(n), "nadd": xp.zeros(n)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        x, t = b.close, b.t
        if p == 1:
            return (x,)
        half = p >> 1
        odd = p % 2 == 1
        mid = (p - 1) // 2
        factor = 1.0 / ((half + 1) * (half + 1) if odd else half * (half + 1))
        win = b.window("close", p + 1)
        leaving, middle = win[:, 0], win[:, p - half]  # x[t-p], x[t-half]
        num, nsub, nadd = s["num"], s["nsub"], s["nadd"]
        # Warm-up (bars 0..n-1): the weighted sum and the two half sums, built as the bars arrive.
        first = t <= mid
        w_num = num + xp.where(first, t + 1, p - t) * x
        w_sub = xp.where(first, nsub + x, nsub)
        w_add = xp.where(first, nadd, nadd + x)
        # Afterwards, TA-Lib's four adjustments (the even case updates numeratorAdd before using it).
        r_num = num - nsub
        r_sub = (nsub - leaving) + middle
        if odd:
            r_num = r_num + nadd
            r_add = (nadd - middle) + x
        else:
            r_add = nadd - middle
            r_num = r_num + r_add
            r_add = r_add + x
        r_num = r_num + x
        warm = t < p
        num = xp.where(warm, w_num, r_num)
        s["num"] = num
        s["nsub"] = xp.where(warm, w_sub, r_sub)
        s["nadd"] = xp.where(warm, w_add, r_add)
        return (num * factor,)


class KAMA(Kernel):
    """Kaufman adaptive moving average: an EMA whose factor follows the efficiency ratio.

    Formula: ER = |x_t - x_{t-n}| / sum_{i=t-n+1..t} |x_i - x_{i-1}| (1 when the sum is 0 or not
    above the signed net change), sc = (ER * (2/3 - 2/31) + 2/31)^2, KAMA_t = (x_t - KAMA_{t-1}) *
    sc + KAMA_{t-1}, started from x_{n-1} at bar n. The sum of changes slides (less the change
    leaving, plus the new one) and is set to exactly 0 once n changes in a row were 0, as TA-Lib
    does.

    Edge cases: flat prices give the price (ER = 1 and no change to follow); timeperiod 1 gives the
    close.

    Reference: TA-Lib KAMA; P. J. Kaufman, "Smarter Trading" (1995).
    """

    fn, talib, talib_inputs, family = "kama", "KAMA", ("close",), "overlap"

    def __init__(self, timeperiod: int = 30) -> None:
        _check_periods("KAMA", 1, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        p = self.params["timeperiod"]
        return 0 if p == 1 else p

    def windows(self):
        return {"close": self.params["timeperiod"] + 2}

    def init(self, xp, n):
        return {"roc_sum": xp.zeros(n), "flat_run": xp.zeros(n), "kama": xp.full(n, NAN)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        x, t = b.close, b.t
        if p == 1:
            return (x,)
        const_max = 2.0 / (30.0 + 1.0)
        const_diff = 2.0 / (2.0 + 1.0) - const_max
        win = b.window("close", p + 2)
        prev_x, trail = win[:, -2], win[:, 1]  # x[t-1], x[t-n]
        change = x - prev_x  # NaN on a row's first bar
        # Bars 1..n prime the sum; later bars slide it: less the change leaving, plus the new one.
        leaving = xp.where(t > p, xp.abs(win[:, 0] - trail), 0.0)
        roc_sum = xp.where(t >= 1, (s["roc_sum"] - leaving) + xp.abs(change), 0.0)
        # n zero changes in a row: the window is flat and its sum exactly 0, not a rounding residue.
        flat_run = xp.minimum(xp.where(change == 0.0, s["flat_run"] + 1.0, 0.0), float(p))
        roc_sum = xp.where(flat_run >= p, 0.0, roc_sum)
        s["roc_sum"], s["flat_run"] = roc_sum, flat_run
        period_roc = x - trail
        er = xp.where((roc_sum <= 0.0) | (roc_sum <= period_roc), 1.0, xp.abs(period_roc / roc_sum))
        sc = er * const_diff + const_max
        sc = sc * sc
        prev = xp.where(t == p, prev_x, s["kama"])
        kama = (x - prev) * sc + prev
        s["kama"] = xp.where(t >= p, kama, s["kama"])
        return (kama,)


class T3(Kernel):
    """Tillson T3: a triple generalized DEMA, i.e. a weighted sum of six chained EMA.

    Formula: k = 2 / (n + 1); E1..E6 chained EMA of the close (E_i = k*in + (1-k)*E_i, each seeded
    by the mean of its first n inputs); with a = vfactor: c1 = -a^3, c2 = 3a^2 + 3a^3, c3 = -6a^2 -
    3a - 3a^3, c4 = 1 + 3a + a^3 + 3a^2; T3 = c1*E6 + c2*E5 + c3*E4 + c4*E3.

    Edge cases: flat prices give the price, to rounding (the coefficients sum to 1); timeperiod 1
    gives the close; defined from bar 6(n-1).

    Reference: TA-Lib T3; T. Tillson, "Smoothing Techniques For More Accurate Signals", Stocks &
    Commodities V.16:1 (1998).
    """

    fn, talib, talib_inputs, family = "t3", "T3", ("close",), "overlap"

    def __init__(self, timeperiod: int = 5, vfactor: float = 0.7) -> None:
        _check_periods("T3", 1, timeperiod=timeperiod)
        if not 0.0 <= vfactor <= 1.0:
            raise ConfigError(f"T3 vfactor={vfactor!r}: must be from 0 to 1")
        super().__init__(timeperiod=timeperiod, vfactor=vfactor)

    @property
    def lookback(self) -> int:
        return 6 * (self.params["timeperiod"] - 1)

    def init(self, xp, n):
        return {f"e{i}.{k}": (xp.zeros(n) if k == "sum" else xp.full(n, NAN))
                for i in range(1, 7) for k in ("sum", "v")}

    def step(self, xp, s, b):
        p, a = self.params["timeperiod"], self.params["vfactor"]
        if p == 1:
            return (b.close,)
        k = 2.0 / (p + 1.0)
        one_minus_k = 1.0 - k
        e = b.close
        es = []
        for i in range(6):
            e = _t3_ema(xp, s, f"e{i + 1}.", e, b.t - i * (p - 1), p, k, one_minus_k, gated=i > 0)
            es.append(e)
        a2 = a * a
        c1 = 0 - a2 * a
        c2 = 3.0 * (a2 - c1)
        c3 = (0 - 6.0) * a2 - 3.0 * (a - c1)
        c4 = 1.0 + 3.0 * a - c1 + 3.0 * a2
        return (c1 * es[5] + c2 * es[4] + c3 * es[3] + c4 * es[2],)


class MIDPOINT(Kernel):
    """Midpoint of the close over the window: halfway between its highest and lowest value.

    Formula: (max(close_{t-n+1..t}) + min(close_{t-n+1..t})) / 2.

    Edge cases: flat prices give the price.

    Reference: TA-Lib MIDPOINT.
    """

    fn, talib, talib_inputs, family = "midpoint", "MIDPOINT", ("close",), "overlap"

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("MIDPOINT", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        return {"close": self.params["timeperiod"]}

    def step(self, xp, s, b):
        # Reduced along axis 0 of the window's transpose, the time-major history: across rows,
        # several times faster than along each row's short window.
        win = b.window("close", self.params["timeperiod"]).T
        return ((win.max(axis=0) + win.min(axis=0)) / 2.0,)


class MIDPRICE(Kernel):
    """Midpoint price over the window: halfway between the highest high and the lowest low.

    Formula: (max(high_{t-n+1..t}) + min(low_{t-n+1..t})) / 2.

    Edge cases: flat prices give the price.

    Reference: TA-Lib MIDPRICE.
    """

    fn, talib, talib_inputs, family = "midprice", "MIDPRICE", ("high", "low"), "overlap"
    inputs = ("high", "low")

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods("MIDPRICE", 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)
        self._extremes = HighLow(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def stages(self):
        return (self._extremes,)

    def step(self, xp, s, b):
        highest, lowest = b.stage(self._extremes)
        return ((highest + lowest) / 2.0,)


# ---------------------------------------------------------------------------------- MACD


class _MACDBase(Kernel):
    """The three MACD lines from a fast and a slow EMA, both seeded over windows that end on the
    slow EMA's first bar (TA-Lib's TA_INT_MACD), and a signal EMA of their difference."""

    output_names = ("macd", "macdsignal", "macdhist")
    talib_inputs = ("close",)
    family = "overlap"

    def _periods(self) -> tuple[int, float, int, float, int]:
        """(fast period, fast k, slow period, slow k, signal period), slow >= fast."""
        raise NotImplementedError

    @property
    def lookback(self) -> int:
        _, _, slow, _, signal = self._periods()
        return (slow - 1) + (signal - 1)

    def init(self, xp, n):
        return {k: v for name in ("fast.", "slow.", "signal.")
                for k, v in _ema_init(xp, n, name).items()}

    def step(self, xp, s, b):
        fast, k_fast, slow, k_slow, signal = self._periods()
        t = b.t
        slow_v = _ema(xp, s, "slow.", b.close, t, slow, k_slow, gated=False)
        fast_v = _ema(xp, s, "fast.", b.close, t - (slow - fast), fast, k_fast)
        macd = fast_v - slow_v
        if signal == 1:  # no smoothing: TA-Lib's signal is the MACD line itself
            return macd, macd, macd - macd
        sig = _ema(xp, s, "signal.", macd, t - (slow - 1), signal, 2.0 / (signal + 1))
        return macd, sig, macd - sig


class MACD(_MACDBase):
    """Moving average convergence/divergence: fast EMA less slow EMA, its signal EMA and histogram.

    Formula: macd = EMA(close, fast) - EMA(close, slow), both EMA seeded by means over windows that
    end on bar slow-1 (TA-Lib's alignment: the fast EMA ignores the first slow-fast bars);
    macdsignal = EMA(macd, signal) seeded by the mean of its first signal values;
    macdhist = macd - macdsignal. A slow period below the fast one is swapped, as TA-Lib does.

    Edge cases: flat prices give 0 for all three lines, to rounding (an ulp or so of the price).

    Reference: TA-Lib MACD; G. Appel, "Technical Analysis: Power Tools for Active Investors" (2005).
    """

    fn, talib = "macd", "MACD"

    def __init__(self, fastperiod: int = 12, slowperiod: int = 26, signalperiod: int = 9) -> None:
        _check_periods("MACD", 2, fastperiod=fastperiod, slowperiod=slowperiod)
        _check_periods("MACD", 1, signalperiod=signalperiod)
        super().__init__(fastperiod=fastperiod, slowperiod=slowperiod, signalperiod=signalperiod)

    def _periods(self):
        fast, slow = sorted((self.params["fastperiod"], self.params["slowperiod"]))
        return fast, 2.0 / (fast + 1), slow, 2.0 / (slow + 1), self.params["signalperiod"]


class MACDFIX(_MACDBase):
    """MACD with the classic fixed 12/26 smoothing constants and a configurable signal period.

    Formula: macd = EMA(close, 12) - EMA(close, 26) aligned as in MACD, but with k = 0.15 and
    0.075 (not 2/13 and 2/27); macdsignal = EMA(macd, signalperiod); macdhist = macd - macdsignal.

    Edge cases: flat prices give 0 for all three lines, to rounding (an ulp or so of the price).

    Reference: TA-Lib MACDFIX.
    """

    fn, talib = "macdfix", "MACDFIX"

    def __init__(self, signalperiod: int = 9) -> None:
        _check_periods("MACDFIX", 1, signalperiod=signalperiod)
        super().__init__(signalperiod=signalperiod)

    def _periods(self):
        return 12, 0.15, 26, 0.075, self.params["signalperiod"]


_MA_TYPES = {0: "SMA", 1: "EMA"}


class MACDEXT(Kernel):
    """MACD with a chosen moving-average type for each line (SMA by default).

    Formula: macd = MA(close, fast, fastmatype) - MA(close, slow, slowmatype); macdsignal = MA(macd,
    signal, signalmatype); macdhist = macd - macdsignal. Each MA starts where TA-Lib's does: the MA
    with the shorter lookback ignores the bars before the longer one's window begins. Supported MA
    types: 0 (SMA) and 1 (EMA); a period of 1 copies its input, as TA_MA does.

    Edge cases: flat prices give 0 for all three lines, to rounding (an ulp or so of the price).

    Reference: TA-Lib MACDEXT.
    """

    fn, talib, talib_inputs, family = "macdext", "MACDEXT", ("close",), "overlap"
    output_names = ("macd", "macdsignal", "macdhist")

    def __init__(self, fastperiod: int = 12, fastmatype: int = 0, slowperiod: int = 26, slowmatype: int = 0,
                 signalperiod: int = 9, signalmatype: int = 0) -> None:
        for name, value in ("fastmatype", fastmatype), ("slowmatype", slowmatype), ("signalmatype", signalmatype):
            if value not in _MA_TYPES:
                raise ConfigError(f"MACDEXT {name}={value!r}: supported MA types are {sorted(_MA_TYPES)} "
                                  f"({', '.join(_MA_TYPES.values())})")
        _check_periods("MACDEXT", 2, fastperiod=fastperiod, slowperiod=slowperiod)
        _check_periods("MACDEXT", 1, signalperiod=signalperiod)
        super().__init__(fastperiod=fastperiod, fastmatype=fastmatype, slowperiod=slowperiod,
                         slowmatype=slowmatype, signalperiod=signalperiod, signalmatype=signalmatype)

    def _lines(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """((fast period, type), (slow period, type), (signal period, type)), swapped like TA-Lib."""
        p = self.params
        fast, slow = (p["fastperiod"], p["fastmatype"]), (p["slowperiod"], p["slowmatype"])
        if slow[0] < fast[0]:
            fast, slow = slow, fast
        return fast, slow, (p["signalperiod"], p["signalmatype"])

    @property
    def lookback(self) -> int:
        (fast, _), (slow, _), (signal, _) = self._lines()
        return max(fast, slow) - 1 + signal - 1

    def windows(self):
        (fast, ft), (slow, st), _ = self._lines()
        widths = [p for p, mt in ((fast, ft), (slow, st)) if mt == 0]
        return {"close": max(widths)} if widths else {}

    def init(self, xp, n):
        _, _, (signal, gt) = self._lines()
        state = {}
        for name in ("fast.", "slow.", "signal."):
            state.update(_ema_init(xp, n, name))  # an SMA line uses "sum" as its running total
        if gt == 0:
            state["signal.window"] = xp.zeros((n, signal))  # the signal SMA's input is no bar field
        return state

    @staticmethod
    def _close_ma(xp, s, prefix, b, t, period, matype):
        if period == 1:
            return xp.where(t >= 0, b.close, NAN)
        if matype == 0:
            return _sma(xp, s, prefix + "sum", b.close, b.window("close", period)[:, 0], t, period)
        return _ema(xp, s, prefix, b.close, t, period, 2.0 / (period + 1))

    def step(self, xp, s, b):
        (fast, ft), (slow, st), (signal, gt) = self._lines()
        largest = max(fast, slow) - 1
        # TA_MA is asked for outputs from bar `largest` on: an MA with a shorter lookback starts
        # its own window (and its running sum or EMA seed) later.
        slow_v = self._close_ma(xp, s, "slow.", b, b.t - (largest - (slow - 1)), slow, st)
        fast_v = self._close_ma(xp, s, "fast.", b, b.t - (largest - (fast - 1)), fast, ft)
        macd = fast_v - slow_v
        t = b.t - largest
        if signal == 1:
            sig = xp.where(t >= 0, macd, NAN)
        elif gt == 0:
            # The last `signal` MACD values, newest last (the MACD line is no shared bar field).
            window = xp.concatenate([s["signal.window"][:, 1:], macd[:, None]], axis=1)
            s["signal.window"] = window
            sig = _sma(xp, s, "signal.sum", macd, window[:, 0], t, signal)
        else:
            sig = _ema(xp, s, "signal.", macd, t, signal, 2.0 / (signal + 1))
        return macd, sig, macd - sig


# ---------------------------------------------------------------------------------- linear regression


class _LinRegFit(Stage):
    """Least-squares line through the last ``timeperiod`` closes, kept as TA-Lib keeps it; this
    bar's (slope m, intercept b), shared by the five LINEARREG kernels of one period.

    TA-Lib's x counts bars back from the newest (x = n-1 for the oldest), so its SumXY weights the
    oldest close most and the slope's sign comes back through the negative divisor. The window sums
    slide in O(1) (SumXY += SumY - n*leaving; SumY += new - leaving) and are rebuilt by a fresh
    oldest-first scan every 32*n outputs, and on a bar whose leaving close outweighs the window
    (|n*leaving| > 100*sum|y|). A scan's terms arrive in bar order, so each scan is summed over the
    n bars before it: one accumulator for the scheduled rebuild, one for an outlier rebuild, opened
    on a bar whose previous close could trigger one when it leaves (n*|prev| > 50*|close|) and
    closed early on a bar that rules that out (n*|that close| <= 50*|close|). A second such bar
    while the first is still open gets no accumulator: if it triggers, that rebuild keeps the slid
    sums (off TA-Lib's by their rounding residue until the next rebuild). sum|y| is only ever slid:
    it decides the 100x trigger, which its residue cannot move.
    """

    _RESCAN_EVERY = 32  # outputs between TA-Lib's scheduled rebuilds, in units of timeperiod
    _OUTLIER = 100.0  # TA-Lib rebuilds when |n*leaving| > _OUTLIER * sum|y|
    _MAYBE = 50.0  # the outlier accumulator is open while n*|its leaving close| > _MAYBE * |close|

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}

    def init(self, xp, n):
        p = self.params["timeperiod"]
        zeros = ("sum_y", "sum_xy", "sum_abs", "due_y", "due_xy", "out_y", "out_xy", "out_lead", "prev")
        return {**{k: xp.zeros(n) for k in zeros},
                # Bars to the next scheduled rebuild (the first is TA-Lib's priming scan, at bar n-1).
                "due": xp.full(n, float(p)),
                # Bars the outlier accumulator has summed, less one; -inf while it is closed.
                "out_age": xp.full(n, -float("inf"))}

    def step(self, xp, s, b):
        """(m, b): slope and intercept of TA-Lib's fit for this bar."""
        p = self.params["timeperiod"]
        x = b.close
        ax = xp.abs(x)
        sum_x = p * (p - 1) * 0.5
        divisor = sum_x * sum_x - p * float(p * (p - 1) * (2 * p - 1) // 6)
        # x[t-n]; 0 during the warm-up, where the slides below then build plain running sums.
        leaving = xp.where(b.t >= p, b.window("close", p + 1)[:, 0], 0.0)
        # Scheduled rebuild: its scan weights each close by the bars left until the rebuild.
        due = s["due"] - 1.0
        fresh = due == p - 1
        due_y = xp.where(fresh, 0.0, s["due_y"]) + x
        due_xy = xp.where(fresh, 0.0, s["due_xy"]) + due * x
        s["due_y"], s["due_xy"] = due_y, due_xy
        # Outlier rebuild: the previous close leaves n bars from now, with this close in the window.
        # It cannot trigger once one close of that window is past 1/50 of its weight: then close.
        lead_now = float(p) * xp.abs(s["prev"])
        opening = (lead_now > self._MAYBE * ax) & (s["out_age"] < 0)
        s["prev"] = x
        age = xp.where(opening, 0.0, s["out_age"] + 1.0)
        out_y = xp.where(opening, 0.0, s["out_y"]) + x
        out_xy = xp.where(opening, 0.0, s["out_xy"]) + ((p - 1) - age) * x
        lead = xp.where(opening, lead_now, s["out_lead"])
        alive = lead > self._MAYBE * ax
        s["out_y"], s["out_xy"], s["out_lead"] = out_y, out_xy, lead
        s["out_age"] = xp.where(alive & (age < p - 1), age, -float("inf"))
        # The O(1) slide, then TA-Lib's two rebuild triggers.
        weighted = float(p) * leaving
        sum_abs = (s["sum_abs"] - xp.abs(leaving)) + ax
        s["sum_abs"] = sum_abs
        scheduled = due <= 0
        rebuild = scheduled | (alive & (age == p - 1) & (xp.abs(weighted) > self._OUTLIER * sum_abs))
        sum_y = xp.where(rebuild, xp.where(scheduled, due_y, out_y), (s["sum_y"] - leaving) + x)
        sum_xy = xp.where(rebuild, xp.where(scheduled, due_xy, out_xy), (s["sum_xy"] + s["sum_y"]) - weighted)
        s["sum_y"], s["sum_xy"] = sum_y, sum_xy
        s["due"] = xp.where(rebuild, float(self._RESCAN_EVERY * p), due)
        m = (p * sum_xy - sum_x * sum_y) / divisor
        return m, (sum_y - m * sum_x) / p


class _LinReg(Kernel):
    """A reading of TA-Lib's least-squares fit over the last ``timeperiod`` closes (`_LinRegFit`,
    one stage for every LINEARREG kernel of that period: the fit is most of their cost)."""

    talib_inputs = ("close",)
    family = "overlap"

    def __init__(self, timeperiod: int = 14) -> None:
        _check_periods(self.talib, 2, timeperiod=timeperiod)
        super().__init__(timeperiod=timeperiod)
        self._fit_stage = _LinRegFit(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def stages(self):
        return (self._fit_stage,)

    def _fit(self, xp, s, b):
        """(m, b): slope and intercept of TA-Lib's fit for this bar."""
        return b.stage(self._fit_stage)


class LINEARREG(_LinReg):
    """Linear regression of the close over the window, read at the newest bar.

    Formula: the least-squares line y = b + m*x through the last n closes (x = 0 for the oldest);
    LINEARREG = b + m*(n-1).

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib); a straight line of prices gives its last value.

    Reference: TA-Lib LINEARREG.
    """

    fn, talib = "linearreg", "LINEARREG"

    def step(self, xp, s, b):
        m, icpt = self._fit(xp, s, b)
        return (icpt + m * (self.params["timeperiod"] - 1),)


class LINEARREG_SLOPE(_LinReg):
    """Slope of the linear regression of the close over the window, in price per bar.

    Formula: m = (n*sum(x*y) - sum(x)*sum(y)) / (n*sum(x^2) - sum(x)^2) over the last n closes.

    Edge cases: flat prices give 0, to rounding (an ulp or so of the price).

    Reference: TA-Lib LINEARREG_SLOPE.
    """

    fn, talib = "linearreg_slope", "LINEARREG_SLOPE"

    def step(self, xp, s, b):
        return (self._fit(xp, s, b)[0],)


class LINEARREG_ANGLE(_LinReg):
    """Angle of the linear regression of the close over the window, in degrees.

    Formula: atan(m) * 180 / pi, m the regression slope in price per bar (so the angle depends on
    the price scale).

    Edge cases: flat prices give 0, to rounding (an ulp or so of the price).

    Reference: TA-Lib LINEARREG_ANGLE.
    """

    fn, talib = "linearreg_angle", "LINEARREG_ANGLE"

    def step(self, xp, s, b):
        return (xp.arctan(self._fit(xp, s, b)[0]) * (180.0 / _PI),)


class LINEARREG_INTERCEPT(_LinReg):
    """Intercept of the linear regression of the close over the window, at its oldest bar.

    Formula: b = (sum(y) - m*sum(x)) / n, the line's value at the window's oldest bar.

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib).

    Reference: TA-Lib LINEARREG_INTERCEPT.
    """

    fn, talib = "linearreg_intercept", "LINEARREG_INTERCEPT"

    def step(self, xp, s, b):
        return (self._fit(xp, s, b)[1],)


class TSF(_LinReg):
    """Time series forecast: the linear regression of the close extended one bar ahead.

    Formula: b + m*n for the least-squares line y = b + m*x through the last n closes (x = 0 for
    the oldest).

    Edge cases: flat prices give the price, to rounding (an ulp or so of the price from the running
    sums, as in TA-Lib).

    Reference: TA-Lib TSF.
    """

    fn, talib = "tsf", "TSF"

    def step(self, xp, s, b):
        m, icpt = self._fit(xp, s, b)
        return (icpt + m * self.params["timeperiod"],)


# ---------------------------------------------------------------------------------- price transforms


class AVGPRICE(Kernel):
    """Average of the bar's open, high, low and close.

    Formula: (high + low + close + open) / 4.

    Edge cases: flat prices give the price (to an ulp); defined from the first bar.

    Reference: TA-Lib AVGPRICE.
    """

    fn, talib, talib_inputs, family = "avgprice", "AVGPRICE", ("open", "high", "low", "close"), "overlap"
    inputs = ("open", "high", "low", "close")
    lookback = 0

    def step(self, xp, s, b):
        return ((b.high + b.low + b.close + b.open) / 4,)


class MEDPRICE(Kernel):
    """Median price of the bar: halfway between its high and low.

    Formula: (high + low) / 2.

    Edge cases: flat prices give the price (to an ulp); defined from the first bar.

    Reference: TA-Lib MEDPRICE.
    """

    fn, talib, talib_inputs, family = "medprice", "MEDPRICE", ("high", "low"), "overlap"
    inputs = ("high", "low")
    lookback = 0

    def step(self, xp, s, b):
        return ((b.high + b.low) / 2.0,)


class TYPPRICE(Kernel):
    """Typical price of the bar: the mean of its high, low and close.

    Formula: (high + low + close) / 3.

    Edge cases: flat prices give the price (to an ulp); defined from the first bar.

    Reference: TA-Lib TYPPRICE.
    """

    fn, talib, talib_inputs, family = "typprice", "TYPPRICE", ("high", "low", "close"), "overlap"
    inputs = ("high", "low", "close")
    lookback = 0

    def step(self, xp, s, b):
        return ((b.high + b.low + b.close) / 3.0,)


class WCLPRICE(Kernel):
    """Weighted close price of the bar: the close counted twice with the high and the low.

    Formula: (high + low + 2*close) / 4.

    Edge cases: flat prices give the price (to an ulp); defined from the first bar.

    Reference: TA-Lib WCLPRICE.
    """

    fn, talib, talib_inputs, family = "wclprice", "WCLPRICE", ("high", "low", "close"), "overlap"
    inputs = ("high", "low", "close")
    lookback = 0

    def step(self, xp, s, b):
        return ((b.high + b.low + b.close * 2.0) / 4.0,)


def defaults() -> list[Kernel]:
    """The overlap features every engine computes by default."""
    return [
        SMA(10), SMA(20), SMA(50), EMA(12), EMA(26), EMA(50),
        WMA(20), DEMA(20), TEMA(20), TRIMA(20), KAMA(30), T3(5, 0.7), MIDPOINT(14), MIDPRICE(14),
        MACD(12, 26, 9), MACDEXT(12, 0, 26, 0, 9, 0), MACDFIX(9),
        LINEARREG(14), LINEARREG_SLOPE(14), LINEARREG_ANGLE(14), LINEARREG_INTERCEPT(14), TSF(14),
        AVGPRICE(), MEDPRICE(), TYPPRICE(), WCLPRICE(),
    ]
