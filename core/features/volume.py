"""Volume: on-balance volume, accumulation/distribution, VWAP, volume profile, trade-side imbalance."""

from __future__ import annotations

from core.features._prim import ordered_sum
from core.features.kernel import Kernel
from core.features.volatility import _rolling_sum, _rsum_init

__all__ = ["OBV", "AD", "ADOSC", "VWAPSession", "VWAP", "VolumeProfile", "Imbalance", "ImbalanceRolling",
           "defaults"]

NAN = float("nan")
_DAY_NS = 86_400_000_000_000
_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitter for doubles


def _split(x):
    """x = hi + lo exactly, each half with at most 26 significant bits (Veltkamp)."""
    t = _SPLIT * x
    hi = t - (t - x)
    return hi, x - hi


def _fma(a: float, b, c):
    """``a * b + c`` rounded once, as a fused multiply-add gives it, for a constant ``a``.

    Dekker's exact product a * b = p + e, Knuth's TwoSum p + c = s + err, then s + (err + e): equal
    to the hardware FMA except in rare double-rounding ties. Needed where TA-Lib's FMA build fuses
    a step whose results are then subtracted (ADOSC's fast - slow), so an unfused ulp would be
    magnified by the cancellation.
    """
    a_hi, a_lo = _split(a)
    p = a * b
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    s = p + c
    z = s - p
    err = (p - (s - z)) + (c - z)
    return s + (err + e)


def _ad_step(xp, ad, b):
    """TA-Lib's accumulation/distribution increment: ad + ((c - l) - (h - c)) / (h - l) * v where
    h - l > 0, else ad unchanged."""
    high, low, close = b.high, b.low, b.close
    rng = high - low
    return xp.where(rng > 0.0, ad + (((close - low) - (high - close)) / rng) * b.volume, ad)


def _typical(b):
    return (b.high + b.low + b.close) / 3.0


# ------------------------------------------------------------------------------------- TA-Lib


class OBV(Kernel):
    """On-balance volume: volume added on an up close, subtracted on a down close (TA-Lib OBV).

    Formula: OBV = the first bar's volume on the first bar; then OBV + volume when close >
    previous close, OBV - volume when close < previous close, unchanged otherwise.

    Edge cases: flat prices keep OBV at the first bar's volume; zero volume leaves it unchanged.

    Reference: TA-Lib OBV; J. Granville, Granville's New Key to Stock Market Profits (1963).
    """

    fn, talib, talib_inputs, family = "obv", "OBV", ("close", "volume"), "volume"
    inputs = ("close", "volume")

    def __init__(self) -> None:
        super().__init__()

    @property
    def lookback(self) -> int:
        return 0

    def windows(self):
        return {"close": 2}

    def init(self, xp, n):
        return {"obv": xp.zeros(n)}

    def step(self, xp, s, b):
        close, vol = b.close, b.volume
        prev = b.window("close", 2)[:, 0]
        obv = s["obv"]
        obv = xp.where(close > prev, obv + vol, xp.where(close < prev, obv - vol, obv))
        obv = xp.where(b.t == 0, vol, obv)
        s["obv"] = obv
        return (obv,)


class AD(Kernel):
    """Chaikin accumulation/distribution line (TA-Lib AD).

    Formula: AD = cumulative sum of ((close - low) - (high - close)) / (high - low) * volume, from 0,
    over bars with high > low.

    Edge cases: a bar with high = low (flat prices) adds nothing; zero volume adds nothing.

    Reference: TA-Lib AD; M. Chaikin.
    """

    fn, talib, talib_inputs, family = "ad", "AD", ("high", "low", "close", "volume"), "volume"
    inputs = ("high", "low", "close", "volume")

    def __init__(self) -> None:
        super().__init__()

    @property
    def lookback(self) -> int:
        return 0

    def init(self, xp, n):
        return {"ad": xp.zeros(n)}

    def step(self, xp, s, b):
        ad = _ad_step(xp, s["ad"], b)
        s["ad"] = ad
        return (ad,)


class ADOSC(Kernel):
    """Chaikin A/D oscillator: the fast EMA minus the slow EMA of the A/D line (TA-Lib ADOSC).

    Formula: AD as in AD; both EMAs start at the first bar's AD and then follow
    ema = (1 - k) * ema + k * AD with k = 2 / (period + 1) (no SMA seed); ADOSC = fast EMA - slow
    EMA. The step is evaluated as a fused multiply-add, as the bundled TA-Lib's FMA build does.

    Edge cases: flat prices or zero volume keep AD constant, so ADOSC decays to 0.

    Reference: TA-Lib ADOSC; M. Chaikin.
    """

    fn, talib, talib_inputs, family = "adosc", "ADOSC", ("high", "low", "close", "volume"), "volume"
    inputs = ("high", "low", "close", "volume")

    def __init__(self, fastperiod: int = 3, slowperiod: int = 10) -> None:
        super().__init__(fastperiod=fastperiod, slowperiod=slowperiod)

    @property
    def lookback(self) -> int:
        return max(self.params["fastperiod"], self.params["slowperiod"]) - 1

    def init(self, xp, n):
        return {"ad": xp.zeros(n), "fast": xp.zeros(n), "slow": xp.zeros(n)}

    def step(self, xp, s, b):
        fk = 2.0 / (self.params["fastperiod"] + 1.0)
        sk = 2.0 / (self.params["slowperiod"] + 1.0)
        ad = _ad_step(xp, s["ad"], b)
        first = b.t == 0
        fast = xp.where(first, ad, _fma(1.0 - fk, s["fast"], fk * ad))
        slow = xp.where(first, ad, _fma(1.0 - sk, s["slow"], sk * ad))
        s["ad"], s["fast"], s["slow"] = ad, fast, slow
        return (fast - slow,)


# --------------------------------------------------------------------------------- non-TA-Lib


class VWAPSession(Kernel):
    """Volume-weighted average typical price since the start of the bar's UTC day.

    Formula: typical = (high + low + close) / 3; over the bars of the current UTC day (the day of
    the bar's start time ts_ns; the sums restart on a row's first bar of each day),
    vwap_session = sum(typical * volume) / sum(volume).

    Edge cases: while the day's volume is 0, the bar's typical price; flat prices give the price. A
    gap of days simply starts a new session.

    Reference: the intraday VWAP benchmark, as in S. Berkowitz, D. Logue, E. Noser, "The Total Cost
    of Transactions on the NYSE", Journal of Finance 43 (1988).
    """

    fn, family = "vwap_session", "volume"
    inputs = ("high", "low", "close", "volume", "ts_ns")

    def __init__(self) -> None:
        super().__init__()

    @property
    def lookback(self) -> int:
        return 0

    def init(self, xp, n):
        return {"day": xp.zeros(n, dtype=xp.int64), "pv": xp.zeros(n), "v": xp.zeros(n)}

    def step(self, xp, s, b):
        day = b.ts_ns // _DAY_NS
        new = (b.t == 0) | (day != s["day"])
        typical = _typical(b)
        pv = xp.where(new, 0.0, s["pv"]) + typical * b.volume
        v = xp.where(new, 0.0, s["v"]) + b.volume
        s["day"], s["pv"], s["v"] = day, pv, v
        return (xp.where(v > 0.0, pv / v, typical),)


class VWAP(Kernel):
    """Rolling volume-weighted average typical price over the last timeperiod bars.

    Formula: typical = (high + low + close) / 3; vwap = sum(typical * volume) / sum(volume) over the
    last n bars (this one included). Both sums are compensated running sums.

    Edge cases: while the window's volume is 0, the bar's typical price; flat prices give the
    price.

    Reference: the VWAP benchmark, as in S. Berkowitz, D. Logue, E. Noser, "The Total Cost of
    Transactions on the NYSE", Journal of Finance 43 (1988).
    """

    fn, family = "vwap", "volume"
    inputs = ("high", "low", "close", "volume")

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        w = self.params["timeperiod"] + 1
        return {"typical": w, "volume": w}

    def init(self, xp, n):
        return {**_rsum_init(xp, n, "pv"), **_rsum_init(xp, n, "v")}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        typical = b.typical
        leaving, v = (b.window(f, p + 1)[:, 0] for f in ("typical", "volume"))
        add, drop = b.t >= 0, b.t >= p
        pv = _rolling_sum(xp, s, "pv", typical * b.volume, leaving * v, add, drop)
        vol = _rolling_sum(xp, s, "v", b.volume, v, add, drop)
        return (xp.where(vol > 0.0, pv / vol, typical),)


_VP_BINS = 24
_VP_AREA = 0.7


class VolumeProfile(Kernel):
    """Volume profile of the last timeperiod bars: point of control and value area.

    Formula: over the last n bars, the range [lo, hi] = [lowest low, highest high] is cut into 24
    equal bins of width w = (hi - lo) / 24; each bar's volume goes to the bin of its typical price
    (high + low + close) / 3, bin = floor((typical - lo) * (24 / (hi - lo))) clipped to 0..23. poc =
    the centre of the bin holding the most volume (the lowest such bin on a tie). The value area
    starts as the poc bin and grows one bin at a time towards the larger of the two neighbouring
    bins (the one above on a tie; a side past the range's edge is never taken) until it holds at
    least 70% of the window's volume; vah = the upper edge of its highest bin, val = the lower edge
    of its lowest bin.

    Edge cases: a window with no volume has no profile, so all three are NaN; flat prices (hi =
    lo) put every bar in bin 0, so all three equal the price.

    Reference: J. P. Steidlmayer's Market Profile value area (CBOT, 1980s), on volume rather than
    time.
    """

    fn, family = "vp", "volume"
    output_names = ("poc", "vah", "val")
    inputs = ("high", "low", "close", "volume")

    def __init__(self, timeperiod: int = 50) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        p = self.params["timeperiod"]
        return {"high": p, "low": p, "typical": p, "volume": p}

    def step(self, xp, s, b):
        p, nb = self.params["timeperiod"], _VP_BINS
        n = b.n
        # The shared histories, time-major (p, n): the window's max and min reduce along the outer
        # axis, per-row values broadcast along contiguous rows, and the ravels below are free.
        # (Running extremes, as AROON keeps them, cost more here: at 50 bars the rescans of the
        # rows whose extreme left the window outweigh two reductions.)
        high, low, typical, vol = (b.window(f, p).T for f in ("high", "low", "typical", "volume"))
        hi, lo = high.max(axis=0), low.min(axis=0)
        width = hi - lo
        scale = xp.where(width > 0.0, nb / width, 0.0)
        # The typical price of each bar comes from the engine's shared history (computed once per
        # close, not once per window slot).
        x = typical - lo
        x *= scale
        # Clipped before the cast (the truncation of the clipped value is the clipped floor), so
        # that a close far outside its bar's range cannot overflow the cast. NaN, a slot before a
        # row's first bar, casts to garbage, which the integer clip keeps in range (that row's
        # output is masked until its window is full anyway).
        xp.clip(x, 0.0, nb - 1.0, out=x)
        # int32 while the index is built (half the bytes moved; (nb + 2) * n < 2**31 for up to 82M
        # rows), int64 for bincount.
        k = x.astype(xp.int32)
        del x
        xp.clip(k, 0, nb - 1, out=k)
        # One bincount over (bin + 1) * n + row: the histogram bin-major, (nb + 2, n), each bin a
        # contiguous row across symbols, summed in time order; the empty bin on either side is set
        # to -1, where the value area stops (a real bin is never below 0).
        k *= n
        k += xp.arange(n, n + n, dtype=xp.int32)
        hist = xp.bincount(k.ravel().astype(xp.int64), weights=vol.ravel(), minlength=(nb + 2) * n)
        del k
        hist = hist.reshape(nb + 2, n)
        hist[0] = -1.0
        hist[nb + 1] = -1.0
        bins = hist[1:nb + 1]
        peak = bins.max(axis=0)
        # poc = the lowest bin holding the maximum: nb - max over bins of (bin == max) * (nb - bin),
        # on uint8. A row with NaN in its window (still warming up) matches nothing: clamped.
        poc = nb - ((bins == peak) * xp.arange(nb, 0, -1).astype(xp.uint8)[:, None]).max(axis=0)
        poc = xp.minimum(poc.astype(xp.int64), nb - 1)
        # The growth is a walk of two pointers into the flat histogram, one bin per step,
        # vectorized across rows (each choice depends on the previous one). Every row walks all
        # nb - 1 steps, which take every bin once (a real bin always beats the -1 past an edge),
        # recording the volume held after each step, summed in the order taken as the definition
        # reads (after the last step: the window's volume), and the pointer above the area; the
        # first step that holds 70% is looked up afterwards. After i steps the pointers are
        # i + 2 bins apart, so only the one above is kept.
        rows = xp.arange(n, dtype=xp.int64)
        flat = hist.ravel()
        held = xp.empty((nb, n))
        held[0] = peak
        above = xp.empty((nb, n), dtype=xp.int64)
        xp.add(rows, (poc + 2) * n, out=above[0])
        for i in range(1, nb):
            hu = xp.take(flat, above[i - 1])
            hd = xp.take(flat, above[i - 1] - (i + 1) * n)
            xp.add(held[i - 1], xp.maximum(hu, hd), out=held[i])
            xp.add(above[i - 1], (hu >= hd) * n, out=above[i])
        total = held[nb - 1]
        steps = (held < _VP_AREA * total).view(xp.uint8).sum(axis=0, dtype=xp.uint8).astype(xp.int64)
        top = xp.take(above.ravel(), steps * n + rows) // n - 2
        bottom = top - steps
        w = width / nb
        some = total > 0.0
        return (xp.where(some, lo + (poc + 0.5) * w, NAN), xp.where(some, lo + (top + 1) * w, NAN),
                xp.where(some, lo + bottom * w, NAN))


class Imbalance(Kernel):
    """Trade-side imbalance of the bar: taker buy volume against taker sell volume.

    Formula: imbalance = (buy_volume - sell_volume) / (buy_volume + sell_volume), in [-1, 1].

    Edge cases: NaN when the bar has no side information (buy or sell volume NaN, e.g. bars built
    from OHLCV files without taker volume); 0 when both are 0.

    Reference: order-flow imbalance, as in T. Chordia, R. Roll, A. Subrahmanyam, "Order imbalance,
    liquidity, and market returns", Journal of Financial Economics 65 (2002).
    """

    fn, family = "imbalance", "volume"
    inputs = ("buy_volume", "sell_volume")

    def __init__(self) -> None:
        super().__init__()

    @property
    def lookback(self) -> int:
        return 0

    def step(self, xp, s, b):
        buy, sell = b.buy_volume, b.sell_volume
        return (xp.where((buy == 0.0) & (sell == 0.0), 0.0, (buy - sell) / (buy + sell)),)


class ImbalanceRolling(Kernel):
    """Trade-side imbalance of the last timeperiod bars together.

    Formula: with B and S the sums of buy_volume and sell_volume over the last n bars (this one
    included), imbalance = (B - S) / (B + S).

    Edge cases: NaN while any bar of the window has no side information; 0 when B and S are both 0.

    Reference: order-flow imbalance, as in T. Chordia, R. Roll, A. Subrahmanyam, "Order imbalance,
    liquidity, and market returns", Journal of Financial Economics 65 (2002).
    """

    fn, family = "imbalance", "volume"
    inputs = ("buy_volume", "sell_volume")

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def windows(self):
        p = self.params["timeperiod"]
        return {"buy_volume": p, "sell_volume": p}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        # Added oldest first whatever the row count (Indicator must equal the engine), across
        # rows of the time-major history (the window's transpose).
        buy = ordered_sum(xp, b.window("buy_volume", p).T)
        sell = ordered_sum(xp, b.window("sell_volume", p).T)
        return (xp.where((buy == 0.0) & (sell == 0.0), 0.0, (buy - sell) / (buy + sell)),)


def defaults() -> list[Kernel]:
    """The volume features every engine computes by default."""
    return [OBV(), AD(), ADOSC(3, 10), VWAPSession(), VWAP(20), VolumeProfile(50), Imbalance(),
            ImbalanceRolling(20)]
