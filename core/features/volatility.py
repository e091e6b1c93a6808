"""Volatility: true range, ATR, bands and channels, dispersion and range-based estimators."""

from __future__ import annotations

import math

from core.errors import ConfigError
from core.features import _prim
from core.features.kernel import Kernel, Stage

__all__ = ["TRANGE", "ATR", "NATR", "BBANDS", "STDDEV", "VAR", "Keltner", "Donchian", "RealizedVol",
           "Parkinson", "GarmanKlass", "defaults"]

NAN = float("nan")


# ------------------------------------------------------------------------------------- helpers


def _true_range(xp, b):
    """TA-Lib's true range of this bar (NaN on a row's first bar): the largest of high - low,
    |previous close - high| and |previous close - low|. Needs ``windows()`` close >= 2."""
    prev = b.window("close", 2)[:, 0]
    high, low = b.high, b.low
    return xp.maximum(high - low, xp.maximum(xp.abs(prev - high), xp.abs(prev - low)))


def _atr_init(xp, n, key: str = "atr") -> dict:
    return {f"{key}_sum": xp.zeros(n), key: xp.full(n, NAN)}


def _atr(xp, s, tr, t, period: int, key: str = "atr"):
    """TA-Lib's ATR of the true range ``tr`` (defined from t = 1): the sum of the first ``period``
    true ranges, accumulated from 0 in bar order, divided by the period at t = period; then
    Wilder's step ``wAlpha * tr + wBeta * atr`` with wBeta = (period - 1) / period and
    wAlpha = 1 - wBeta (TA-Lib 0.8's two-coefficient form; its FMA build fuses the second product,
    so the two differ by an ulp, never more, since the step contracts errors)."""
    beta = (period - 1) / period
    alpha = 1.0 - beta
    acc = s[f"{key}_sum"] + tr
    s[f"{key}_sum"] = xp.where((t >= 1) & (t <= period), acc, s[f"{key}_sum"])
    prev = s[key]
    atr = xp.where(t == period, acc / period, xp.where(t > period, alpha * tr + beta * prev, prev))
    s[key] = atr
    return atr


def _var_init(xp, n, period: int) -> dict:
    return {"v_shift": xp.zeros(n), "v_sum1": xp.zeros(n), "v_sum2": xp.zeros(n),
            "v_left": xp.full(n, 32 * period, dtype=xp.int64)}


def _shifted_var(xp, s, b, period: int):
    """TA-Lib 0.8's population variance of the close over ``period`` bars (ta_VAR.c, #118/#243),
    shared by VAR, STDDEV and BBANDS.

    Running sums of d = x - shift and d*d, with the shift the row's first close, give
    var = sum2 / p - (sum1 / p)^2 without subtracting two ~price^2 quantities. After the trailing
    value is removed, the row is rebuilt from its window with a fresh two-pass (shift = the
    window's left-to-right sum / p, then the sums of d and d*d, left to right) when the variance
    fell under 1e-6 of sum2 / p, when the removed d*d exceeds 1e6 * sum2, or every 32 * p windows;
    a rebuilt variance under 1e-12 of sum2 / p is 0. Rows are rebuilt only where that fires (a
    gather of the few rows, not the whole window of every row). ``windows()`` close >= period.
    """
    t, x = b.t, b.close
    inv = 1.0 / period
    shift = xp.where(t == 0, x, s["v_shift"])
    d = x - shift
    sum1 = s["v_sum1"] + d
    sum2 = s["v_sum2"] + d * d
    m1 = sum1 * inv
    var = sum2 * inv - m1 * m1
    full = t >= period - 1
    win = b.window("close", period)
    old = win[:, 0] - shift
    old2 = old * old
    sum1 = xp.where(full, sum1 - old, sum1)
    sum2 = xp.where(full, sum2 - old2, sum2)
    left = xp.where(full, s["v_left"] - 1, s["v_left"])
    rebuild = full & ((var < 1e-6 * (sum2 * inv)) | (old2 > 1e6 * sum2) | (left <= 0))
    # Gathering the few rows to rebuild beats a two-pass over every row's window (on CuPy the
    # gather's size costs a host sync).
    rows = xp.flatnonzero(rebuild)
    w = win[rows]
    # cumsum is a left-to-right sum, TA-Lib's order
    r_shift = xp.cumsum(w, axis=1)[:, -1] * inv
    dev = w - r_shift[:, None]
    r_sum1 = xp.cumsum(dev, axis=1)[:, -1]
    r_sum2 = xp.cumsum(dev * dev, axis=1)[:, -1]
    r_m1 = r_sum1 * inv
    r_var = r_sum2 * inv - r_m1 * r_m1
    var[rows] = xp.where(r_var < 1e-12 * (r_sum2 * inv), 0.0, r_var)
    r_old = dev[:, 0]
    shift[rows] = r_shift
    sum1[rows] = r_sum1 - r_old
    sum2[rows] = r_sum2 - r_old * r_old
    left[rows] = 32 * period
    s["v_shift"], s["v_sum1"], s["v_sum2"], s["v_left"] = shift, sum1, sum2, left
    return var


def _rsum_init(xp, n, key: str) -> dict:
    return {f"{key}_sum": xp.zeros(n), f"{key}_err": xp.zeros(n),
            f"{key}_nz": xp.zeros(n, dtype=xp.int64), f"{key}_bad": xp.zeros(n, dtype=xp.int64)}


def _two_sum(a, b):
    """a + b = s + e exactly (Knuth's TwoSum, branch-free)."""
    s = a + b
    z = s - a
    return s, (a - (s - z)) + (b - z)


def _rolling_sum(xp, s, key: str, new, old, add, drop):
    """A window sum of a per-bar term kept as a running sum: adds ``new`` where ``add``, removes
    ``old`` (the term of the bar leaving the window, recomputed from the shared histories, so
    bit-identical to what was added) where ``drop``.

    The sum is compensated (TwoSum, the rounding errors carried in ``_err``), so it stays accurate
    to the current sum's own precision however large the terms that already left were; a count of
    non-zero terms resets it to an exact 0 when the window holds only zeros; a non-finite term
    (a log of a non-positive price) adds 0 and is counted, and the sum is NaN while the window
    holds one. Returns the sum.
    """
    ok_new = xp.isfinite(new)
    ok_old = xp.isfinite(old)
    a = xp.where(add & ok_new, new, 0.0)
    r = xp.where(drop & ok_old, old, 0.0)
    total, e1 = _two_sum(s[f"{key}_sum"], a)
    total, e2 = _two_sum(total, -r)
    err = s[f"{key}_err"] + (e1 + e2)
    nz = s[f"{key}_nz"] + (a != 0) - (r != 0)
    bad = s[f"{key}_bad"] + (add & ~ok_new) - (drop & ~ok_old)
    empty = nz == 0
    total = xp.where(empty, 0.0, total)
    err = xp.where(empty, 0.0, err)
    s[f"{key}_sum"], s[f"{key}_err"], s[f"{key}_nz"], s[f"{key}_bad"] = total, err, nz, bad
    return xp.where(bad > 0, NAN, total + err)


class _ATRLine(Stage):
    """TA-Lib's ATR of ``timeperiod`` (`_atr` of `_true_range`): one stage for ATR, NATR and
    Keltner of the same period."""

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        return {"close": 2}

    def init(self, xp, n):
        return _atr_init(xp, n)

    def step(self, xp, s, b):
        return _atr(xp, s, _true_range(xp, b), b.t, self.params["timeperiod"])


class _ShiftedVar(Stage):
    """`_shifted_var` of ``timeperiod``: one stage for VAR, STDDEV and BBANDS of the same period."""

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        return {"close": self.params["timeperiod"]}

    def init(self, xp, n):
        return _var_init(xp, n, self.params["timeperiod"])

    def step(self, xp, s, b):
        return _shifted_var(xp, s, b, self.params["timeperiod"])


# ------------------------------------------------------------------------------------- TA-Lib


class TRANGE(Kernel):
    """True range: the bar's range extended to the previous close (TA-Lib TRANGE).

    Formula: TR = max(high - low, |previous close - high|, |previous close - low|).

    Edge cases: flat prices give 0; a gap gives the distance to the previous close even when the
    bar itself has no range.

    Reference: TA-Lib TRANGE; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib, talib_inputs, family = "trange", "TRANGE", ("high", "low", "close"), "volatility"
    inputs = ("high", "low", "close")

    def __init__(self) -> None:
        super().__init__()

    @property
    def lookback(self) -> int:
        return 1

    def windows(self):
        return {"close": 2}

    def step(self, xp, s, b):
        return (_true_range(xp, b),)


class ATR(Kernel):
    """Average true range with Wilder smoothing (TA-Lib ATR).

    Formula: TR as in TRANGE; the first ATR (bar n = timeperiod) is the mean of the first n true
    ranges (bars 1..n); then ATR = wAlpha * TR + wBeta * previous ATR with wBeta = (n - 1) / n and
    wAlpha = 1 - wBeta.

    Edge cases: flat prices give 0.

    Reference: TA-Lib ATR; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib, talib_inputs, family = "atr", "ATR", ("high", "low", "close"), "volatility"
    inputs = ("high", "low", "close")

    def __init__(self, timeperiod: int = 14) -> None:
        super().__init__(timeperiod=timeperiod)
        self._atr = _ATRLine(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def stages(self):
        return (self._atr,)

    def step(self, xp, s, b):
        return (b.stage(self._atr),)


class NATR(Kernel):
    """Average true range as a percentage of the close (TA-Lib NATR).

    Formula: NATR = (ATR / close) * 100, with ATR as in ATR over the same timeperiod.

    Edge cases: flat prices give 0; a close of exactly 0 gives 0 (TA-Lib's test).

    Reference: TA-Lib NATR; J. Forman, "Cross-Market Evaluations With Normalized Average True
    Range", Technical Analysis of Stocks & Commodities (May 2006).
    """

    fn, talib, talib_inputs, family = "natr", "NATR", ("high", "low", "close"), "volatility"
    inputs = ("high", "low", "close")

    def __init__(self, timeperiod: int = 14) -> None:
        super().__init__(timeperiod=timeperiod)
        self._atr = _ATRLine(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def stages(self):
        return (self._atr,)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        atr = b.stage(self._atr)
        if p <= 1:  # TA-Lib: period 1 is the raw true range, not normalized
            return (atr,)
        close = b.close
        return (xp.where(close != 0.0, (atr / close) * 100.0, 0.0),)


class BBANDS(Kernel):
    """Bollinger bands: the SMA of the close plus and minus a multiple of the population standard
    deviation over the same window (TA-Lib BBANDS, matype 0).

    Formula: middleband = SMA(close, n) (TA-Lib's running total); sd = sqrt(variance) with the
    variance as in VAR over n bars; upperband = middleband + sd * nbdevup, lowerband =
    middleband - sd * nbdevdn.

    Edge cases: flat prices give sd = 0, so all three bands equal the price.

    Reference: TA-Lib BBANDS; J. Bollinger, Bollinger on Bollinger Bands (2001).
    """

    fn, talib, talib_inputs, family = "bbands", "BBANDS", ("close",), "volatility"
    output_names = ("upperband", "middleband", "lowerband")

    def __init__(self, timeperiod: int = 20, nbdevup: float = 2.0, nbdevdn: float = 2.0,
                 matype: int = 0) -> None:
        if matype != 0:
            raise ConfigError(f"BBANDS supports matype 0 (SMA) only, got {matype}")
        super().__init__(timeperiod=timeperiod, nbdevup=nbdevup, nbdevdn=nbdevdn, matype=matype)
        self._var = _ShiftedVar(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        return {"close": self.params["timeperiod"]}

    def stages(self):
        return (self._var,)

    def init(self, xp, n):
        return {"ma_total": xp.zeros(n)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        up, dn = float(self.params["nbdevup"]), float(self.params["nbdevdn"])
        tmp = s["ma_total"] + b.close
        mid = tmp / p
        s["ma_total"] = xp.where(b.t >= p - 1, tmp - b.window("close", p)[:, 0], tmp)
        sd = xp.sqrt(b.stage(self._var))
        if up == dn:
            dev = sd * up
            return mid + dev, mid, mid - dev
        return mid + sd * up, mid, mid - sd * dn


class STDDEV(Kernel):
    """Population standard deviation of the close, times nbdev (TA-Lib STDDEV).

    Formula: sqrt(variance) * nbdev, with the variance as in VAR over timeperiod bars.

    Edge cases: flat prices give 0.

    Reference: TA-Lib STDDEV.
    """

    fn, talib, talib_inputs, family = "stddev", "STDDEV", ("close",), "volatility"

    def __init__(self, timeperiod: int = 20, nbdev: float = 1.0) -> None:
        super().__init__(timeperiod=timeperiod, nbdev=nbdev)
        self._var = _ShiftedVar(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def stages(self):
        return (self._var,)

    def step(self, xp, s, b):
        sd = xp.sqrt(b.stage(self._var))
        k = float(self.params["nbdev"])
        return (sd if k == 1.0 else sd * k,)


class VAR(Kernel):
    """Population variance of the close (TA-Lib VAR; nbdev is accepted and ignored, as TA-Lib does).

    Formula: over the last n = timeperiod closes, var = S2 / n - (S1 / n)^2 with S1, S2 the running
    sums of d = close - shift and d^2 (TA-Lib 0.8's cancellation-free form: the shift is the first
    close, re-anchored to the window mean by a two-pass rebuild when the variance falls under 1e-6
    of S2 / n, when a removed d^2 exceeds 1e6 * S2, and every 32 * n bars; a rebuilt variance under
    1e-12 of S2 / n is 0).

    Edge cases: flat prices give 0; the output is never negative.

    Reference: TA-Lib VAR.
    """

    fn, talib, talib_inputs, family = "var", "VAR", ("close",), "volatility"

    def __init__(self, timeperiod: int = 20, nbdev: float = 1.0) -> None:
        super().__init__(timeperiod=timeperiod, nbdev=nbdev)
        self._var = _ShiftedVar(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def stages(self):
        return (self._var,)

    def step(self, xp, s, b):
        return (b.stage(self._var),)


# --------------------------------------------------------------------------------- non-TA-Lib


class Keltner(Kernel):
    """Keltner channel: an EMA of the typical price plus and minus a multiple of the ATR.

    Formula: typical = (high + low + close) / 3; middle = EMA(typical, n) as TA-Lib's EMA (seeded
    by the SMA of the first n values, k = 2 / (n + 1)); upper = middle + multiplier * ATR(n),
    lower = middle - multiplier * ATR(n), with ATR as in ATR (first value at bar n).

    Edge cases: flat prices give ATR 0, so all three lines equal the price.

    Reference: L. Bradford Raschke's modern form of C. Keltner's channel, How to Make Money in
    Commodities (1960).
    """

    fn, family = "keltner", "volatility"
    output_names = ("upper", "middle", "lower")
    inputs = ("high", "low", "close")

    def __init__(self, timeperiod: int = 20, multiplier: float = 2.0) -> None:
        super().__init__(timeperiod=timeperiod, multiplier=multiplier)
        self._atr = _ATRLine(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def stages(self):
        return (self._atr,)

    def init(self, xp, n):
        return {"ema_sum": xp.zeros(n), "ema_v": xp.full(n, NAN)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        k = float(self.params["multiplier"])
        typical = (b.high + b.low + b.close) / 3.0
        e = {"sum": s["ema_sum"], "v": s["ema_v"]}
        mid = _prim.ema(xp, e, typical, b.t, p, 2.0 / (p + 1))
        s["ema_sum"], s["ema_v"] = e["sum"], e["v"]
        band = k * b.stage(self._atr)
        return mid + band, mid, mid - band


class Donchian(Kernel):
    """Donchian channel: the highest high and lowest low of the last timeperiod bars.

    Formula: over the last n bars (this one included), upper = max(high), lower = min(low),
    middle = (upper + lower) / 2.

    Edge cases: flat prices give three equal lines.

    Reference: R. Donchian's channel breakout rule (1960s), as in J. Schwager, Technical Analysis
    (1996).
    """

    fn, family = "donchian", "volatility"
    output_names = ("upper", "middle", "lower")
    inputs = ("high", "low")

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        p = self.params["timeperiod"]
        return {"high": p, "low": p}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        # Along axis 0 of the time-major history (the window's transpose): across rows, several
        # times faster than along each row's short window.
        upper = b.window("high", p).T.max(axis=0)
        lower = b.window("low", p).T.min(axis=0)
        return upper, (upper + lower) * 0.5, lower


class RealizedVol(Kernel):
    """Realized volatility: the square root of the sum of squared one-bar log returns.

    Formula: r = ln(close / previous close); rv = sqrt(sum of r^2 over the last n = timeperiod
    returns) (not annualized, not divided by n). The sum is a compensated running sum.

    Edge cases: flat prices give 0 (exactly); a non-positive close makes its returns undefined, so
    rv is NaN while such a return is in the window.

    Reference: T. Andersen, T. Bollerslev, F. Diebold, P. Labys, "Modeling and Forecasting Realized
    Volatility", Econometrica 71 (2003).
    """

    fn, family = "rv", "volatility"

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def windows(self):
        return {"close": self.params["timeperiod"] + 2}

    def init(self, xp, n):
        return _rsum_init(xp, n, "r2")

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        w = b.window("close", p + 2)
        r_new = xp.log(w[:, -1] / w[:, -2])
        r_old = xp.log(w[:, 1] / w[:, 0])
        total = _rolling_sum(xp, s, "r2", r_new * r_new, r_old * r_old, b.t >= 1, b.t >= p + 1)
        return (xp.sqrt(total),)


_PARKINSON_K = 1.0 / (4.0 * math.log(2.0))
_GK_K = 2.0 * math.log(2.0) - 1.0


class Parkinson(Kernel):
    """Parkinson's range-based volatility per bar: the high-low range's variance estimator,
    averaged over the window.

    Formula: u = ln(high / low); per-bar variance u^2 / (4 ln 2); parkinson = sqrt(mean of the
    per-bar variance over the last n = timeperiod bars) (per bar, not annualized). The sum is a
    compensated running sum.

    Edge cases: flat prices (high = low) give 0 (exactly); a non-positive low makes the bar's
    term undefined, so the value is NaN while that bar is in the window.

    Reference: M. Parkinson, "The Extreme Value Method for Estimating the Variance of the Rate of
    Return", Journal of Business 53 (1980).
    """

    fn, family = "parkinson", "volatility"
    inputs = ("high", "low")

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        p = self.params["timeperiod"]
        return {"high": p + 1, "low": p + 1}

    def init(self, xp, n):
        return _rsum_init(xp, n, "pk")

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        h, lo = b.window("high", p + 1), b.window("low", p + 1)
        u_new = xp.log(h[:, -1] / lo[:, -1])
        u_old = xp.log(h[:, 0] / lo[:, 0])
        total = _rolling_sum(xp, s, "pk", u_new * u_new * _PARKINSON_K, u_old * u_old * _PARKINSON_K,
                             b.t >= 0, b.t >= p)
        return (xp.sqrt(total / p),)


class GarmanKlass(Kernel):
    """Garman-Klass volatility per bar: the open-high-low-close variance estimator, averaged over
    the window.

    Formula: per-bar variance = 0.5 * ln(high / low)^2 - (2 ln 2 - 1) * ln(close / open)^2;
    garman_klass = sqrt(max(0, mean of the per-bar variance over the last n = timeperiod bars))
    (per bar, not annualized). A bar whose open and close lie within its range has a per-bar
    variance >= 0; the max(0, .) only guards inconsistent bars. The sum is a compensated running
    sum.

    Edge cases: flat prices give 0 (exactly); a non-positive price makes the bar's term undefined,
    so the value is NaN while that bar is in the window.

    Reference: M. Garman, M. Klass, "On the Estimation of Security Price Volatilities from
    Historical Data", Journal of Business 53 (1980).
    """

    fn, family = "garman_klass", "volatility"
    inputs = ("open", "high", "low", "close")

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        p = self.params["timeperiod"] + 1
        return {"open": p, "high": p, "low": p, "close": p}

    def init(self, xp, n):
        return _rsum_init(xp, n, "gk")

    @staticmethod
    def _term(xp, o, h, lo, c):
        u = xp.log(h / lo)
        v = xp.log(c / o)
        return 0.5 * (u * u) - _GK_K * (v * v)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        o, h = b.window("open", p + 1), b.window("high", p + 1)
        lo, c = b.window("low", p + 1), b.window("close", p + 1)
        new = self._term(xp, o[:, -1], h[:, -1], lo[:, -1], c[:, -1])
        old = self._term(xp, o[:, 0], h[:, 0], lo[:, 0], c[:, 0])
        total = _rolling_sum(xp, s, "gk", new, old, b.t >= 0, b.t >= p)
        return (xp.sqrt(xp.maximum(total / p, 0.0)),)


def defaults() -> list[Kernel]:
    """The volatility features every engine computes by default."""
    return [TRANGE(), ATR(14), NATR(14), BBANDS(20, 2.0, 2.0, 0), STDDEV(20, 1.0), VAR(20, 1.0),
            Keltner(20, 2.0), Donchian(20), RealizedVol(20), Parkinson(20), GarmanKlass(20)]
