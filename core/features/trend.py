"""Trend strength and direction: directional movement (ADX family), Aroon, parabolic SAR, Ichimoku."""

from __future__ import annotations

from typing import ClassVar

from core.errors import ConfigError
from core.features.kernel import Kernel, Stage
from core.features.momentum import _across, _patch_rows, _ring, _ring_pos, _slot

__all__ = ["SAR", "ADX", "ADXR", "DX", "PLUS_DI", "MINUS_DI", "PLUS_DM", "MINUS_DM", "AROON", "AROONOSC",
           "Ichimoku", "defaults"]

NAN = float("nan")


# The bundled TA-Lib tests the smoothed true range of the DI/DX/ADX functions for an exact zero,
# not with TA_IS_ZERO: a TR sum of 7e-323 still gives a DI (checked against ta-lib 0.8.2), while
# the +DI + -DI sum is tested with TA_IS_ZERO.


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
        state = (s["long"], s["sar"], s["ep"], s["af"])

        def general(t, high, low, prev_high, prev_low, long, sar, ep, af):
            # Bootstrap on a row's second bar; TA-Lib then uses that bar as its own previous bar.
            first = t == 1
            diff_p, diff_m = high - prev_high, prev_low - low
            start_long = ~((diff_m > 0) & (diff_p < diff_m))
            long = xp.where(first, start_long, long)
            sar = xp.where(first, xp.where(start_long, prev_low, prev_high), sar)
            ep = xp.where(first, xp.where(start_long, high, low), ep)
            af = xp.where(first, acc, af)
            prev_high = xp.where(first, high, prev_high)
            prev_low = xp.where(first, low, prev_low)
            out, sar, ep, af, flip = _sar_advance(xp, acc, top, long, sar, ep, af, high, low, prev_high, prev_low)
            live = t >= 1
            return (out, xp.where(live & flip, ~long, long), xp.where(live, sar, NAN), xp.where(live, ep, NAN),
                    af)

        def steady():  # from a row's third bar on
            out, sar, ep, af, flip = _sar_advance(xp, acc, top, *state, high, low, prev_high, prev_low)
            return out, state[0] ^ flip, sar, ep, af

        out, s["long"], s["sar"], s["ep"], s["af"] = _patch_rows(
            xp, t <= 1, general, (t, high, low, prev_high, prev_low, *state), steady)
        return (out,)


def _sar_advance(xp, acc: float, top: float, long, sar, ep, af, high, low, prev_high, prev_low):
    """One bar of the parabolic SAR in its trade (``long``, ``sar``, ``ep``, ``af``): returns (this
    bar's SAR, next SAR, next EP, next AF, reversed)."""
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
    return (d * xp.where(flip, out_flip, sar_o), d * xp.where(flip, next_flip, next_keep),
            d * xp.where(flip, nl, ep_keep), xp.where(flip, acc, af_keep), flip)


# ------------------------------------------------------------------------ directional movement


def _dm1(xp, b, sums):
    """One-bar +DM (``"pdm"`` in ``sums``) and -DM (``"mdm"``), by key (TA-Lib's cases: the larger
    move wins, a tie gives neither; no move on a row's first bar)."""
    diff_p = b.high - b.window("high", 2)[:, 0]
    diff_m = b.window("low", 2)[:, 0] - b.low
    out = {}
    if "pdm" in sums:
        out["pdm"] = xp.where((diff_p > 0) & (diff_p > diff_m), diff_p, 0.0)
    if "mdm" in sums:
        out["mdm"] = xp.where((diff_m > 0) & (diff_p < diff_m), diff_m, 0.0)
    return out


def _tr1(xp, b):
    """True range of the bar against the previous close."""
    prev_close = b.window("close", 2)[:, 0]
    return xp.maximum(xp.maximum(b.high - b.low, xp.abs(b.high - prev_close)), xp.abs(b.low - prev_close))


class _DMSums(Stage):
    """TA-Lib's Wilder running sums of the one-bar +DM, -DM and true range over ``timeperiod``
    bars, by key (``pdm``: +DM_p, ``mdm``: -DM_p, ``tr``: TR_p): one stage for every directional
    kernel of that period (seven by default), each reading the sums it needs.

    The plain sum of the values of bars 1..p-1 (bar 0 has none), then ``acc - acc / p + x``; the
    plain sums only for rows still warming up. Each sum is advanced on its own, so a kernel
    reading one of them gets the value it would get computing that sum alone.
    """

    _KEYS = ("pdm", "mdm", "tr")

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        return {"high": 2, "low": 2, "close": 2}

    def init(self, xp, n):
        return {key: xp.zeros(n) for key in self._KEYS}

    def step(self, xp, s, b):
        p, t = self.params["timeperiod"], b.t
        xs = _dm1(xp, b, self._KEYS)
        xs["tr"] = _tr1(xp, b)
        xs = [xs[key] for key in self._KEYS]
        accs = [s[key] for key in self._KEYS]

        def general(t, *args):
            n = len(args) // 2
            return [xp.where(t >= p, acc - acc / p + x, xp.where(t >= 1, acc + x, acc))
                    for acc, x in zip(args[:n], args[n:])]

        sums = _patch_rows(xp, t < p, general, (t, *accs, *xs),
                           lambda: [acc - acc / p + x for acc, x in zip(accs, xs)])
        for key, v in zip(self._KEYS, sums):
            s[key] = v
        return dict(zip(self._KEYS, sums))


class _DXLine(Stage):
    """(DX, valid) of ``timeperiod``: valid where TA-Lib computes a DX (TR and +DI + -DI not
    zero). Shared by DX, ADX and ADXR."""

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)
        self._sums = _DMSums(timeperiod)

    def stages(self):
        return (self._sums,)

    def step(self, xp, s, b):
        sums = b.stage(self._sums)
        pdm, mdm, tr = sums["pdm"], sums["mdm"], sums["tr"]
        minus_di = 100.0 * (mdm / tr)
        plus_di = 100.0 * (pdm / tr)
        total = minus_di + plus_di
        # Both DIs are >= 0 (NaN only where TR is 0), so TA_IS_ZERO(total) is total < 1e-14.
        valid = (tr != 0) & (total >= 1e-14)
        return 100.0 * (xp.abs(minus_di - plus_di) / total), valid


class _ADXLine(Stage):
    """TA-Lib's ADX of ``timeperiod`` (see ADX), shared by ADX and ADXR."""

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)
        self._dx = _DXLine(timeperiod)

    def stages(self):
        return (self._dx,)

    def init(self, xp, n):
        return {"adx": xp.zeros(n)}

    def step(self, xp, s, b):
        p, t = self.params["timeperiod"], b.t
        dx, valid = b.stage(self._dx)
        prev = s["adx"]

        def general(t, prev, dx, valid):
            # Bars p..2p-1 accumulate the DX sum in "adx" (bars before p add 0 to its initial 0,
            # an undefined DX adds 0: later, it leaves ADX unchanged); bar 2p-1 divides it;
            # Wilder from then on.
            seed = prev + xp.where(valid & (t >= p), dx, 0.0)
            return xp.where(valid & (t >= 2 * p), (prev * (p - 1) + dx) / p,
                            xp.where(t == 2 * p - 1, seed / p, seed)),

        s["adx"], = adx, = _patch_rows(xp, t < 2 * p, general, (t, prev, dx, valid),
                                       lambda: (xp.where(valid, (prev * (p - 1) + dx) / p, prev),))
        return adx


class _Directional(Kernel):
    """A directional-movement kernel: reads the Wilder sums of +DM, -DM and TR of its period
    (`_DMSums`, shared by every such kernel), those of ``_sums``."""

    family = "trend"
    inputs = ("high", "low", "close")
    talib_inputs = ("high", "low", "close")
    _sums: ClassVar[tuple[str, ...]] = ("pdm", "mdm", "tr")

    def __init__(self, timeperiod: int = 14) -> None:
        # TA-Lib's one-bar DI drops the factor 100 and tests TR with TA_IS_ZERO; not mirrored.
        least = 2 if "tr" in self._sums else 1
        if timeperiod < least:
            raise ConfigError(f"{self.fn} needs timeperiod >= {least}, got {timeperiod}")
        super().__init__(timeperiod=timeperiod)
        self._dm = _DMSums(timeperiod)

    def stages(self):
        return (self._dm,)

    def _advance(self, xp, s, b):
        """This bar's sums by key (``pdm``: +DM_p, ``mdm``: -DM_p, ``tr``: TR_p)."""
        return b.stage(self._dm)


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
    _sums = ("pdm",)

    @property
    def lookback(self) -> int:
        # timeperiod 1 is the raw one-bar DM, which starts on the second bar.
        return max(self.params["timeperiod"] - 1, 1)

    def step(self, xp, s, b):
        return (self._advance(xp, s, b)["pdm"],)


class MINUS_DM(PLUS_DM):
    """Minus directional movement, Wilder-smoothed over ``timeperiod`` bars (TA-Lib MINUS_DM).

    Formula: -DM1 = previous low - low when that exceeds both 0 and high - previous high, else 0;
    the first value is the sum of -DM1 over bars 1..timeperiod-1, then -DM = previous -DM -
    previous -DM / timeperiod + -DM1 (a Wilder running sum, not an average).

    Edge cases: flat prices give 0; equal up and down moves give 0 to both +DM1 and -DM1.

    Reference: TA-Lib MINUS_DM; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "minus_dm", "MINUS_DM"
    _sums = ("mdm",)

    def step(self, xp, s, b):
        return (self._advance(xp, s, b)["mdm"],)


class PLUS_DI(_Directional):
    """Plus directional indicator: smoothed +DM as a percentage of smoothed true range (TA-Lib PLUS_DI).

    Formula: +DI = 100 * (+DM_n / TR_n), where +DM_n and TR_n are Wilder running sums (first the
    plain sum over bars 1..n-1, then S - S / n + x) of the one-bar +DM and the true range
    max(high - low, |high - previous close|, |low - previous close|).

    Edge cases: a smoothed true range of exactly 0 (flat prices) gives 0.

    Reference: TA-Lib PLUS_DI; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "plus_di", "PLUS_DI"
    _sums = ("pdm", "tr")

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def step(self, xp, s, b):
        sums = self._advance(xp, s, b)
        dm, tr = sums[self._sums[0]], sums["tr"]
        return (xp.where(tr == 0, 0.0, 100.0 * (dm / tr)),)


class MINUS_DI(PLUS_DI):
    """Minus directional indicator: smoothed -DM as a percentage of smoothed true range (TA-Lib MINUS_DI).

    Formula: -DI = 100 * (-DM_n / TR_n), where -DM_n and TR_n are Wilder running sums (first the
    plain sum over bars 1..n-1, then S - S / n + x) of the one-bar -DM and the true range
    max(high - low, |high - previous close|, |low - previous close|).

    Edge cases: a smoothed true range of exactly 0 (flat prices) gives 0.

    Reference: TA-Lib MINUS_DI; J. W. Wilder, New Concepts in Technical Trading Systems (1978).
    """

    fn, talib = "minus_di", "MINUS_DI"
    _sums = ("mdm", "tr")


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

    def __init__(self, timeperiod: int = 14) -> None:
        super().__init__(timeperiod)
        self._dx_line = _DXLine(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def stages(self):
        return (self._dx_line,)

    def init(self, xp, n):
        return {"dx": xp.zeros(n)}

    def step(self, xp, s, b):
        dx, valid = b.stage(self._dx_line)
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

    def __init__(self, timeperiod: int = 14) -> None:
        super().__init__(timeperiod)
        self._adx_line = _ADXLine(timeperiod)

    @property
    def lookback(self) -> int:
        return 2 * self.params["timeperiod"] - 1

    def stages(self):
        return (self._adx_line,)

    def _adx(self, xp, s, b):
        return b.stage(self._adx_line)

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
        return {"lag": xp.full((n, self.params["timeperiod"] - 1), NAN)}

    def step(self, xp, s, b):
        adx = self._adx(xp, s, b)
        # The ADX of timeperiod-1 bars ago is in the slot this one overwrites.
        ring, lag = _ring(xp, s, "lag")
        pos = _ring_pos(xp, ring, b.t)
        old = lag[pos]
        lag[pos] = adx
        return ((adx + old) / 2.0,)


# ------------------------------------------------------------------------------------ Aroon


def _latest_extreme(xp, ext, age, x, win, p: int, highest: bool):
    """Advances the running extreme ``ext`` (highest when ``highest``, else lowest) of the last
    p+1 bars and ``age``, the bars since it, by this bar's ``x``, as TA-Lib's AROON keeps them: a
    value equal to the extreme replaces it (the latest occurrence counts), and an extreme that has
    left the window (age > p) is searched again in ``win`` (n, p+1), latest first, for those rows
    only (about one row in seven a bar on a random walk at p = 14). Returns the new (ext, age).

    ``ext`` only meets comparisons, where a maximum's choice between 0.0 and -0.0 cannot matter."""
    take = (x >= ext) if highest else (x <= ext)
    ext = xp.maximum(x, ext) if highest else xp.minimum(x, ext)
    age = (age + 1) * ~take
    find = xp.argmax if highest else xp.argmin

    def rescan(w):  # w: the window newest first, so the first extreme found is the latest
        i = find(w, axis=1)
        return w.reshape(-1)[xp.arange(w.shape[0]) * (p + 1) + i], i

    return _patch_rows(xp, age > p, rescan, (win[:, ::-1],), lambda: (ext, age))


class _BarsSince(Stage):
    """(bars since the highest high, bars since the lowest low) of the last timeperiod+1 bars, as
    TA-Lib's AROON keeps them; one stage for AROON and AROONOSC of the same period.

    The highest high and lowest low of the window and the bars since each are kept (an argmax over
    the window every bar costs several times more; TA-Lib keeps them too), see `_latest_extreme`.
    """

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def windows(self):
        p = self.params["timeperiod"]
        return {"high": p + 1, "low": p + 1}

    def init(self, xp, n):
        return {"hh": xp.full(n, -float("inf")), "hh_age": xp.zeros(n, dtype=xp.int64),
                "ll": xp.full(n, float("inf")), "ll_age": xp.zeros(n, dtype=xp.int64)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        s["hh"], s["hh_age"] = _latest_extreme(xp, s["hh"], s["hh_age"], b.high, b.window("high", p + 1), p, True)
        s["ll"], s["ll_age"] = _latest_extreme(xp, s["ll"], s["ll_age"], b.low, b.window("low", p + 1), p, False)
        return s["hh_age"], s["ll_age"]


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
        self._since = _BarsSince(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def stages(self):
        return (self._since,)

    def _bars_since(self, xp, s, b):
        """(bars since the highest high, bars since the lowest low) of the last timeperiod+1 bars."""
        return b.stage(self._since)

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        factor = 100.0 / p
        since_high, since_low = self._bars_since(xp, s, b)
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
        since_high, since_low = self._bars_since(xp, s, b)
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
        # The last kijun bars, bar t in slot t mod kijun, 4 values a slot (sharing a cache line):
        # the kijun-bar highest high and lowest low, (tenkan + kijun) / 2 and the senkou-bar
        # midpoint, each read back kijun bars later. NaN until written, so that what is read from
        # before a row's first values is NaN (senkou_a and senkou_b need no warm-up mask).
        return {"ring": xp.full((n, k, 4), NAN)}

    def step(self, xp, s, b):
        tk, k = self.params["tenkan"], self.params["kijun"]
        high_w, low_w = _across(xp, b.window("high", k)), _across(xp, b.window("low", k))
        # The kijun-bar extremes from the tenkan-bar ones and those of the bars before them. A
        # window reaching before a row's first bar holds NaN, which max/min propagate: each line
        # is NaN until its window is full without a mask.
        th, tl = high_w[k - tk:].max(axis=0), low_w[k - tk:].min(axis=0)
        tenkan = (th + tl) / 2
        if tk < k:
            hh = xp.maximum(th, high_w[:k - tk].max(axis=0))
            ll = xp.minimum(tl, low_w[:k - tk].min(axis=0))
        else:
            hh, ll = th, tl
        kijun = (hh + ll) / 2
        # This bar's slot holds the values of kijun bars ago; the senkou-bar window ending now is
        # the kijun-bar windows ending now and kijun bars ago.
        _, flat = _ring(xp, s, "ring")
        pos = xp.arange(b.n) * k + _slot(xp, b.t, k)  # this bar's slot, in (n * kijun, 4) rows
        old = xp.take(flat.reshape(-1, 4), pos, axis=0)  # (n, 4), written kijun bars ago
        senkou_a, senkou_b = old[:, 2], old[:, 3]
        new = (hh, ll, (tenkan + kijun) / 2, (xp.maximum(hh, old[:, 0]) + xp.minimum(ll, old[:, 1])) / 2)
        pos *= 4
        for j, v in enumerate(new):
            flat[pos + j] = v
        chikou = b.close - b.window("close", k + 1)[:, 0]
        return tenkan, kijun, senkou_a, senkou_b, chikou


def defaults() -> list[Kernel]:
    """The trend features every engine computes by default."""
    return [SAR(0.02, 0.2), ADX(14), ADXR(14), DX(14), PLUS_DI(14), MINUS_DI(14), PLUS_DM(14), MINUS_DM(14),
            AROON(14), AROONOSC(14), Ichimoku(9, 26, 52)]
