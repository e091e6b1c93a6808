"""Trend strength and direction: directional movement (ADX family), Aroon, parabolic SAR, Ichimoku."""

from __future__ import annotations

from core.errors import ConfigError
from core.features.kernel import Kernel

__all__ = ["SAR", "ADX", "ADXR", "DX", "PLUS_DI", "MINUS_DI", "PLUS_DM", "MINUS_DM", "AROON", "AROONOSC",
           "Ichimoku", "defaults"]

NAN = float("nan")


def _is_zero(xp, v):
    """TA-Lib's TA_IS_ZERO for the bundled TA-Lib version (TA_EPSILON = 1e-14)."""
    return (-1e-14 < v) & (v < 1e-14)


# The bundled TA-Lib tests the smoothed true range of the DI/DX/ADX functions for an exact zero,
# not with TA_IS_ZERO: a TR sum of 7e-323 still gives a DI (checked against ta-lib 0.8.2), while
# the +DI + -DI sum is tested with TA_IS_ZERO.


def _ring_swap(xp, buf, rows, slot, x):
    """Writes ``x`` into the per-row ring ``buf`` (n, width) at ``slot`` (per row, e.g.
    ``t % width``) and returns what that slot held: the value written ``width`` bars ago. Written in
    place, so a bar costs O(n), not O(n * width) as a shifted window would. ``rows`` is
    ``xp.arange(n)``."""
    old = buf[rows, slot]
    buf[rows, slot] = x
    return old


# ---------------------------------------------------------------------------------------- SAR


class SAR(Kernel):
    """Parabolic stop-and-reverse of Wilder, with TA-Lib's bootstrap (TA-Lib SAR).

    Formula: the first bar is consumed; the second bar's direction is short when its one-bar -DM
    is positive (low fell more than the high rose), long otherwise, with SAR = the first bar's low
    (long) or high (short) and EP = the second bar's high (long) or low (short). Each bar then
    outputs the SAR in effect; while long, a low <= SAR reverses to short with SAR = max(EP,
    previous high, high), EP = low and AF = acceleration, else a new high > EP sets EP = high and
    AF = min(AF + acceleration, maximum); the next SAR = SAR + AF * (EP - SAR), kept at or below the
    previous and current lows (mirror image while short, kept at or above the highs). On the
    second bar the "previous" bar is the bar itself, as in TA-Lib.

    Edge cases: flat prices give a tie (-DM = 0), so the trade starts long with SAR = the first
    low; the first flat low touches it and the SAR flips every bar, staying at the flat price. An
    acceleration above the maximum is lowered to the maximum.

    Reference: TA-Lib SAR; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib, talib_inputs, family = "sar", "SAR", ("high", "low"), "trend"
    inputs = ("high", "low")

    def __init__(self, acceleration: float = 0.02, maximum: float = 0.2) -> None:
        super().__init__(acceleration=acceleration, maximum=maximum)

    @property
    def lookback(self) -> int:
        return 1

    def windows(self):
        return {"high": 2, "low": 2}

    def init(self, xp, n):
        return {"long": xp.ones(n, dtype=bool), "sar": xp.full(n, NAN), "ep": xp.full(n, NAN),
                "af": xp.zeros(n)}

    def step(self, xp, s, b):
        acc, top = float(self.params["acceleration"]), float(self.params["maximum"])
        acc = min(acc, top)
        t = b.t
        high, low = b.high, b.low
        prev_high, prev_low = b.window("high", 2)[:, 0], b.window("low", 2)[:, 0]
        # Bootstrap on a row's second bar; TA-Lib then uses that bar as its own previous bar.
        first = t == 1
        diff_p, diff_m = high - prev_high, prev_low - low
        start_long = ~((diff_m > 0) & (diff_p < diff_m))
        long = xp.where(first, start_long, s["long"])
        sar = xp.where(first, xp.where(start_long, prev_low, prev_high), s["sar"])
        ep = xp.where(first, xp.where(start_long, high, low), s["ep"])
        af = xp.where(first, acc, s["af"])
        prev_high = xp.where(first, high, prev_high)
        prev_low = xp.where(first, low, prev_low)
        # Work in the trade's own orientation: negating prices turns a short into a long (IEEE
        # negation is exact, so the arithmetic equals TA-Lib's short branch bit for bit).
        d = xp.where(long, 1.0, -1.0)
        ph = xp.where(long, prev_high, -prev_low)
        pl = xp.where(long, prev_low, -prev_high)
        nh = xp.where(long, high, -low)
        nl = xp.where(long, low, -high)
        sar_o, ep_o = d * sar, d * ep
        flip = nl <= sar_o
        # Reversal: the SAR output is the EP, kept above both highs; the next one starts from it.
        out_flip = xp.maximum(xp.maximum(ep_o, ph), nh)
        next_flip = out_flip + acc * (nl - out_flip)
        next_flip = xp.maximum(xp.maximum(next_flip, ph), nh)
        # No reversal: a new extreme moves EP and raises AF; the SAR stays below both lows.
        new_ext = nh > ep_o
        ep_keep = xp.where(new_ext, nh, ep_o)
        af_keep = xp.where(new_ext, xp.minimum(af + acc, top), af)
        next_keep = sar_o + af_keep * (ep_keep - sar_o)
        next_keep = xp.minimum(xp.minimum(next_keep, pl), nl)
        live = t >= 1
        out = d * xp.where(flip, out_flip, sar_o)
        s["sar"] = xp.where(live, d * xp.where(flip, next_flip, next_keep), NAN)
        s["ep"] = xp.where(live, d * xp.where(flip, nl, ep_keep), NAN)
        s["af"] = xp.where(flip, acc, af_keep)
        s["long"] = xp.where(live & flip, ~long, long)
        return (out,)


# ------------------------------------------------------------------------ directional movement


def _dm1(xp, b):
    """One-bar +DM and -DM (TA-Lib's cases: the larger move wins, a tie gives neither)."""
    diff_p = b.high - b.window("high", 2)[:, 0]
    diff_m = b.window("low", 2)[:, 0] - b.low
    plus = xp.where((diff_p > 0) & (diff_p > diff_m), diff_p, 0.0)
    minus = xp.where((diff_m > 0) & (diff_p < diff_m), diff_m, 0.0)
    return plus, minus


def _tr1(xp, b):
    """True range of the bar against the previous close."""
    prev_close = b.window("close", 2)[:, 0]
    return xp.maximum(xp.maximum(b.high - b.low, xp.abs(b.high - prev_close)), xp.abs(b.low - prev_close))


def _wilder_sum(xp, acc, x, t, p: int):
    """TA-Lib's Wilder running sum: plain sum of the values of bars 1..p-1, then
    ``acc - acc / p + x`` (bar 0 has no value)."""
    return xp.where(t >= p, acc - acc / p + x, xp.where(t >= 1, acc + x, acc))


class _Directional(Kernel):
    """Shared state of the directional-movement kernels: Wilder sums of +DM, -DM and TR."""

    family = "trend"
    inputs = ("high", "low", "close")
    talib_inputs = ("high", "low", "close")
    _need_tr = True

    def __init__(self, timeperiod: int = 14) -> None:
        # TA-Lib's one-bar DI drops the factor 100 and tests TR with TA_IS_ZERO; not mirrored.
        if timeperiod < (2 if self._need_tr else 1):
            raise ConfigError(f"{self.fn} needs timeperiod >= {2 if self._need_tr else 1}, got {timeperiod}")
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        w = {"high": 2, "low": 2}
        if self._need_tr:
            w["close"] = 2
        return w

    def init(self, xp, n):
        return {"pdm": xp.zeros(n), "mdm": xp.zeros(n), "tr": xp.zeros(n)}

    def _advance(self, xp, s, b):
        """Advances the sums by one bar; returns (+DM_p, -DM_p, TR_p)."""
        p, t = self.params["timeperiod"], b.t
        plus, minus = _dm1(xp, b)
        s["pdm"] = _wilder_sum(xp, s["pdm"], plus, t, p)
        s["mdm"] = _wilder_sum(xp, s["mdm"], minus, t, p)
        if self._need_tr:
            s["tr"] = _wilder_sum(xp, s["tr"], _tr1(xp, b), t, p)
        return s["pdm"], s["mdm"], s["tr"]

    def _dx(self, xp, s, b):
        """(DX, valid): valid where TA-Lib computes a DX (TR and +DI + -DI not zero)."""
        pdm, mdm, tr = self._advance(xp, s, b)
        minus_di = 100.0 * (mdm / tr)
        plus_di = 100.0 * (pdm / tr)
        total = minus_di + plus_di
        valid = (tr != 0) & ~_is_zero(xp, total)
        return 100.0 * (xp.abs(minus_di - plus_di) / total), valid


class PLUS_DM(_Directional):
    """Plus directional movement, Wilder-smoothed over ``timeperiod`` bars (TA-Lib PLUS_DM).

    Formula: +DM1 = high - previous high when that exceeds both 0 and previous low - low, else 0;
    the first value is the sum of +DM1 over bars 1..timeperiod-1, then +DM = previous +DM -
    previous +DM / timeperiod + +DM1 (a Wilder running sum, not an average).

    Edge cases: flat prices give 0; equal up and down moves give 0 to both +DM1 and -DM1.

    Reference: TA-Lib PLUS_DM; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib, talib_inputs = "plus_dm", "PLUS_DM", ("high", "low")
    inputs = ("high", "low")
    _need_tr = False

    @property
    def lookback(self) -> int:
        # timeperiod 1 is the raw one-bar DM, which starts on the second bar.
        return max(self.params["timeperiod"] - 1, 1)

    def step(self, xp, s, b):
        return (self._advance(xp, s, b)[0],)


class MINUS_DM(PLUS_DM):
    """Minus directional movement, Wilder-smoothed over ``timeperiod`` bars (TA-Lib MINUS_DM).

    Formula: -DM1 = previous low - low when that exceeds both 0 and high - previous high, else 0;
    the first value is the sum of -DM1 over bars 1..timeperiod-1, then -DM = previous -DM -
    previous -DM / timeperiod + -DM1 (a Wilder running sum, not an average).

    Edge cases: flat prices give 0; equal up and down moves give 0 to both +DM1 and -DM1.

    Reference: TA-Lib MINUS_DM; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "minus_dm", "MINUS_DM"

    def step(self, xp, s, b):
        return (self._advance(xp, s, b)[1],)


class PLUS_DI(_Directional):
    """Plus directional indicator: smoothed +DM as a percentage of smoothed true range (TA-Lib PLUS_DI).

    Formula: +DI = 100 * (+DM_n / TR_n), where +DM_n and TR_n are Wilder running sums (first the
    plain sum over bars 1..n-1, then S - S / n + x) of the one-bar +DM and the true range
    max(high - low, |high - previous close|, |low - previous close|).

    Edge cases: a smoothed true range of exactly 0 (flat prices) gives 0.

    Reference: TA-Lib PLUS_DI; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "plus_di", "PLUS_DI"

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def step(self, xp, s, b):
        pdm, _, tr = self._advance(xp, s, b)
        return (xp.where(tr == 0, 0.0, 100.0 * (pdm / tr)),)


class MINUS_DI(PLUS_DI):
    """Minus directional indicator: smoothed -DM as a percentage of smoothed true range (TA-Lib MINUS_DI).

    Formula: -DI = 100 * (-DM_n / TR_n), where -DM_n and TR_n are Wilder running sums (first the
    plain sum over bars 1..n-1, then S - S / n + x) of the one-bar -DM and the true range
    max(high - low, |high - previous close|, |low - previous close|).

    Edge cases: a smoothed true range of exactly 0 (flat prices) gives 0.

    Reference: TA-Lib MINUS_DI; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "minus_di", "MINUS_DI"

    def step(self, xp, s, b):
        _, mdm, tr = self._advance(xp, s, b)
        return (xp.where(tr == 0, 0.0, 100.0 * (mdm / tr)),)


class DX(_Directional):
    """Directional movement index: the spread of +DI and -DI over their sum (TA-Lib DX).

    Formula: DX = 100 * |(-DI) - (+DI)| / ((-DI) + (+DI)), with +DI and -DI as in PLUS_DI and
    MINUS_DI (Wilder running sums over ``timeperiod`` bars).

    Edge cases: where the smoothed true range is exactly 0 or the DI sum is below 1e-14 in
    magnitude, DX repeats its previous value, and is 0 on the first bar (flat prices give 0
    throughout).

    Reference: TA-Lib DX; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "dx", "DX"

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def init(self, xp, n):
        return {**super().init(xp, n), "dx": xp.zeros(n)}

    def step(self, xp, s, b):
        dx, valid = self._dx(xp, s, b)
        s["dx"] = xp.where(valid & (b.t >= self.params["timeperiod"]), dx, s["dx"])
        return (s["dx"],)


class ADX(_Directional):
    """Average directional movement index: Wilder's average of DX (TA-Lib ADX).

    Formula: DX as in DX over ``timeperiod`` = n bars; the first ADX (bar 2n-1) is the sum of the
    DX of bars n..2n-1 divided by n, then ADX = (previous ADX * (n - 1) + DX) / n.

    Edge cases: a bar whose DX is undefined (smoothed true range exactly 0, or DI sum below 1e-14
    in magnitude) adds nothing to the first sum and leaves ADX unchanged afterwards; flat prices give 0.

    Reference: TA-Lib ADX; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "adx", "ADX"

    @property
    def lookback(self) -> int:
        return 2 * self.params["timeperiod"] - 1

    def init(self, xp, n):
        return {**super().init(xp, n), "adx": xp.zeros(n)}

    def _adx(self, xp, s, b):
        p, t = self.params["timeperiod"], b.t
        dx, valid = self._dx(xp, s, b)
        dx0 = xp.where(valid, dx, 0.0)
        # Bars p..2p-1 accumulate the DX sum in "adx"; bar 2p-1 divides it; Wilder from then on.
        seed = s["adx"] + dx0
        wilder = xp.where(valid, (s["adx"] * (p - 1) + dx) / p, s["adx"])
        adx = xp.where(t < p, s["adx"], xp.where(t < 2 * p - 1, seed,
                                                  xp.where(t == 2 * p - 1, seed / p, wilder)))
        s["adx"] = adx
        return adx

    def step(self, xp, s, b):
        return (self._adx(xp, s, b),)


class ADXR(ADX):
    """Average directional movement rating: the mean of ADX now and ADX timeperiod-1 bars ago (TA-Lib ADXR).

    Formula: ADXR = (ADX + ADX[timeperiod - 1 bars ago]) / 2, with ADX as in ADX.

    Edge cases: as ADX (flat prices give 0).

    Reference: TA-Lib ADXR; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "adxr", "ADXR"

    @property
    def lookback(self) -> int:
        return 3 * self.params["timeperiod"] - 2

    def init(self, xp, n):
        return {**super().init(xp, n), "lag": xp.full((n, self.params["timeperiod"] - 1), NAN)}

    def step(self, xp, s, b):
        adx = self._adx(xp, s, b)
        lag = s["lag"]
        old = _ring_swap(xp, lag, xp.arange(b.n), b.t % lag.shape[1], adx)
        return ((adx + old) / 2.0,)


# ------------------------------------------------------------------------------------ Aroon


def _bars_since_extremes(xp, b, p: int):
    """Bars since the highest high and since the lowest low of the last p+1 bars; on ties the
    latest bar wins, as in TA-Lib's scan (>= / <=)."""
    hi = b.window("high", p + 1)[:, ::-1]
    lo = b.window("low", p + 1)[:, ::-1]
    return xp.argmax(hi, axis=1), xp.argmin(lo, axis=1)


class AROON(Kernel):
    """Aroon down and up: how recent the lowest low and highest high of the window are (TA-Lib AROON).

    Formula: over the last timeperiod+1 bars (this one included), aroonup = (100 / timeperiod) *
    (timeperiod - bars since the highest high) and aroondown likewise with the lowest low; when the
    extreme occurs more than once, the most recent occurrence counts.

    Edge cases: flat prices make the current bar the latest extreme, so both are 100.

    Reference: TA-Lib AROON; T. Chande, "A Time Price Oscillator", TASC (1995).
    """

    fn, talib, talib_inputs, family = "aroon", "AROON", ("high", "low"), "trend"
    inputs = ("high", "low")
    output_names = ("aroondown", "aroonup")

    def __init__(self, timeperiod: int = 14) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def windows(self):
        p = self.params["timeperiod"]
        return {"high": p + 1, "low": p + 1}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        factor = 100.0 / p
        since_high, since_low = _bars_since_extremes(xp, b, p)
        return factor * (p - since_low), factor * (p - since_high)


class AROONOSC(AROON):
    """Aroon oscillator: Aroon up minus Aroon down (TA-Lib AROONOSC).

    Formula: (100 / timeperiod) * (bars since the lowest low - bars since the highest high), over
    the last timeperiod+1 bars; on equal extremes the most recent occurrence counts.

    Edge cases: flat prices give 0.

    Reference: TA-Lib AROONOSC; T. Chande, "A Time Price Oscillator", TASC (1995).
    """

    fn, talib = "aroonosc", "AROONOSC"
    output_names = ()

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        since_high, since_low = _bars_since_extremes(xp, b, p)
        return ((100.0 / p) * (since_low - since_high),)


# --------------------------------------------------------------------------------- Ichimoku


class Ichimoku(Kernel):
    """Ichimoku kinko hyo lines as known at the bar's close, without look-ahead.

    Formula: tenkan = (highest high + lowest low) / 2 over the last ``tenkan`` bars; kijun = the
    same over ``kijun`` bars; the cloud is read where it is plotted, at the current bar: senkou_a =
    (tenkan + kijun) / 2 as computed ``kijun`` bars ago and senkou_b = (highest high + lowest low)
    / 2 over ``senkou`` bars as computed ``kijun`` bars ago (charts shift both lines forward by
    kijun bars; reading them at the current bar uses no future bar). The lagging span, which charts
    plot kijun bars back, would need future closes to line up with its own bar, so chikou is its
    distance to the price it is plotted against: close - close ``kijun`` bars ago. senkou must be
    2 * kijun (every standard variant: 9/26/52, 10/30/60, 20/60/120), so the senkou-bar extreme is
    that of two consecutive kijun-bar windows.

    Edge cases: flat prices give tenkan = kijun = senkou_a = senkou_b = the price and chikou = 0.
    Each output is NaN until its own window is full: tenkan from bar tenkan-1, kijun from kijun-1,
    chikou from kijun, senkou_a from 2*kijun-1 (with tenkan <= kijun), senkou_b from 3*kijun-1.

    Reference: G. Hosoda, Ichimoku Kinko Hyo (1969); not in TA-Lib.
    """

    fn, family = "ichimoku", "trend"
    inputs = ("high", "low", "close")
    output_names = ("tenkan", "kijun", "senkou_a", "senkou_b", "chikou")

    def __init__(self, tenkan: int = 9, kijun: int = 26, senkou: int = 52) -> None:
        if not 1 <= tenkan <= kijun or senkou != 2 * kijun:
            raise ConfigError(f"ichimoku needs 1 <= tenkan <= kijun and senkou == 2 * kijun, got "
                              f"{tenkan}/{kijun}/{senkou}")
        super().__init__(tenkan=tenkan, kijun=kijun, senkou=senkou)

    @property
    def lookback(self) -> int:
        return self.params["tenkan"] - 1

    def windows(self):
        k = self.params["kijun"]
        return {"high": k, "low": k, "close": k + 1}

    def init(self, xp, n):
        k = self.params["kijun"]
        # Rings: (tenkan + kijun) / 2 of the last kijun bars, kijun-bar extremes of the last 2*kijun.
        return {"a": xp.full((n, k), NAN), "hh": xp.full((n, 2 * k), NAN), "ll": xp.full((n, 2 * k), NAN)}

    def step(self, xp, s, b):
        tk, k = self.params["tenkan"], self.params["kijun"]
        t = b.t
        high_w, low_w = b.window("high", k), b.window("low", k)
        tenkan = (high_w[:, -tk:].max(axis=1) + low_w[:, -tk:].min(axis=1)) / 2
        hh, ll = high_w.max(axis=1), low_w.min(axis=1)
        kijun = (hh + ll) / 2
        rows = xp.arange(b.n)
        senkou_a = _ring_swap(xp, s["a"], rows, t % k, (tenkan + kijun) / 2)
        # The senkou-bar window that ended kijun bars ago is the kijun-bar windows ending kijun and
        # 2*kijun bars ago.
        slot = t % (2 * k)
        mid = (t + k) % (2 * k)
        hh_k, ll_k = s["hh"][rows, mid], s["ll"][rows, mid]
        hh_2k = _ring_swap(xp, s["hh"], rows, slot, hh)
        ll_2k = _ring_swap(xp, s["ll"], rows, slot, ll)
        senkou_b = (xp.maximum(hh_k, hh_2k) + xp.minimum(ll_k, ll_2k)) / 2
        chikou = b.close - b.window("close", k + 1)[:, 0]
        return (tenkan,
                xp.where(t >= k - 1, kijun, NAN),
                xp.where(t >= 2 * k - 1, senkou_a, NAN),
                xp.where(t >= 3 * k - 1, senkou_b, NAN),
                xp.where(t >= k, chikou, NAN))


def defaults() -> list[Kernel]:
    """The trend features every engine computes by default."""
    return [SAR(0.02, 0.2), ADX(14), ADXR(14), DX(14), PLUS_DI(14), MINUS_DI(14), PLUS_DM(14), MINUS_DM(14),
            AROON(14), AROONOSC(14), Ichimoku(9, 26, 52)]
