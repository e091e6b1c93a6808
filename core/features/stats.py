"""Statistics of returns: rolling moments, ranks, autocorrelation, beta and correlation against a reference.

Returns are simple one-bar returns of the close, ``r_t = close_t / close_{t-1} - 1``, taken from
the engine's shared close history (a return whose previous close is 0 counts as 0, as TA-Lib's
BETA does). A return is always the same division of the same two closes, so the one leaving a
window is bit for bit the one that entered it.

Numerics of the rolling moments. Mean, standard deviation, z-score, skewness, kurtosis and the
autocorrelation use running power sums ``S_k = sum r^k`` over the window: each bar adds the new
return's powers and subtracts those of the return leaving. A plain running sum keeps the rounding
error of every add and subtract forever, and after a large return has left the window that error
can be a large part of what remains, so every sum is kept as a pair ``(s, c)`` with Knuth's
TwoSum (``c`` collects the exact rounding error of each update; ``s + c`` stays within ~1e-32 of
the largest term that passed through). That is ample for the squares, but a 3rd or 4th power of a
crash return can exceed those of the quiet returns after it by 1e20 and more, so skewness and
kurtosis rebuild their sums from the window (with the same ~1e-32 accuracy) when the largest square
added since the last rebuild exceeds 1e8 times the current ``S_2``: a rare, per-row event. The
central moments are then formed from the raw sums (``B = S_2/n - mean^2`` and so on), which loses
``log10(1 + (mean/std)^2)`` digits: a fraction of one for returns. A window whose returns are all
equal (flat prices) has variance exactly 0, which sums that held other returns before need not
reproduce; such windows are recognised exactly, by counting neighbouring returns that differ, and
give a standard deviation of 0 and NaN for the ratios that divide by it.

Reference symbol (``ref_close``): BETA and CORREL advance only on bars whose ``ref_close`` is
finite; any other bar leaves their state untouched and outputs NaN, so over the bars that have a
reference they equal TA-Lib on the series of those bars. They count those bars themselves and
output NaN until TA-Lib's warm-up has passed in that count.
"""

from __future__ import annotations

from core.features.kernel import Kernel

__all__ = ["RetMean", "RetStd", "RetZScore", "RetMin", "RetMax", "RetPctRank", "RetSkew", "RetKurt",
           "LogRet", "AutoCorr", "BETA", "CORREL", "defaults"]

NAN = float("nan")
INF = float("inf")


# ------------------------------------------------------------------------------------ helpers


def _ret(xp, cur, prev):
    """One-bar simple return ``cur / prev - 1``; 0 where ``prev`` is 0 (TA-Lib's BETA rule)."""
    return xp.where(prev == 0, 0.0, cur / prev - 1.0)


def _two_sum(xp, s, c, a):
    """Adds ``a`` to the compensated sum ``(s, c)``: returns ``(s + a, c + error of s + a)``.

    Knuth's TwoSum recovers the rounding error of ``s + a`` exactly whatever the magnitudes, so
    ``s + c`` carries only the (second-order) rounding of the ``c`` additions.
    """
    t = s + a
    z = t - s
    return t, c + ((s - (t - z)) + (a - z))


def _exact_sum(xp, a):
    """Sum along axis 1 as a compensated pair ``(s, c)``: pairwise additions whose rounding errors
    (TwoSum) are summed on the side, so ``s + c`` is within ~1e-32 relative of the exact sum."""
    errs = xp.zeros(a.shape[0])
    while a.shape[1] > 1:
        if a.shape[1] % 2:
            a = xp.concatenate([a, xp.zeros((a.shape[0], 1))], axis=1)
        x, y = a[:, 0::2], a[:, 1::2]
        s = x + y
        z = s - x
        errs = errs + ((x - (s - z)) + (y - z)).sum(axis=1)
        a = s
    return a[:, 0], errs


def _ring_put(buf, flat_idx, x):
    """``buf`` (n, width) with ``x`` written at the flat positions ``flat_idx`` (``row * width +
    column``, one per row). In place when ``buf`` is contiguous: O(n) a bar, where shifting a
    window costs O(n * width) and a 2-D fancy index is several times slower."""
    flat = buf.reshape(-1)
    flat[flat_idx] = x
    return flat.reshape(buf.shape)


def _ordered(xp, buf, oldest, width: int):
    """The first ``width`` columns of the ring ``buf`` (m, >= width) as a window, oldest first;
    ``oldest`` is each row's oldest column."""
    cols = (oldest[:, None] + xp.arange(width)[None, :]) % width
    return xp.take_along_axis(buf[:, :width], cols, axis=1)


def _seq_sum(xp, a):
    """Sum along axis 1 added left to right, as TA-Lib's C loops add (``cumsum`` accumulates in
    order; ``sum`` adds pairwise, which rounds differently)."""
    return xp.cumsum(a, axis=1)[:, -1]


def _on_rows(xp, need, fn, args, into):
    """Runs ``fn(*args)`` for the rows where ``need`` holds and writes its results into the fresh
    arrays ``into`` (one per result) at those rows; returns ``into``.

    For rare per-row branches (rebuilding a window's sums): with NumPy only the rows that need it
    are computed (they are on the host, so finding them costs no transfer); on a GPU every row is
    computed and selected, which avoids a device-to-host sync.
    """
    if xp.__name__ == "numpy":
        idx = xp.flatnonzero(need)
        if idx.size:
            for dst, v in zip(into, fn(*(a[idx] for a in args))):
                dst[idx] = v
        return into
    return [xp.where(need, v, dst) for v, dst in zip(fn(*args), into)]


class _Returns(Kernel):
    """A kernel on the one-bar returns of the close over ``timeperiod`` bars."""

    family = "stats"

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}


# ------------------------------------------------------------------------ rolling moments


class _RetMoments(_Returns):
    """Running compensated power sums ``S_1..S_order`` of the last ``timeperiod`` returns and the
    count of neighbouring returns in the window that differ (0: a constant window). From order 3
    the sums are rebuilt from the window when the largest square added since the last rebuild
    exceeds ``_REBUILD_RATIO`` times the current S_2 (see the module's notes)."""

    order = 1
    _REBUILD_RATIO = 1e8

    def init(self, xp, n):
        # r1 = r_{t-1}, lead = r_{t-p}: this bar's r_t and r_{t-p+1}, carried to the next one.
        s = {"diff": xp.zeros(n, dtype=xp.int64), "r1": xp.full(n, NAN), "lead": xp.full(n, NAN)}
        for k in range(1, self.order + 1):
            s[f"s{k}"] = xp.zeros(n)
            s[f"c{k}"] = xp.zeros(n)
        if self.order >= 3:
            s["big"] = xp.zeros(n)
        return s

    def _advance(self, xp, s, b):
        """Advances the sums; returns (latest return, power sums S_1.., constant-window flag)."""
        p = self.params["timeperiod"]
        t = b.t
        w = b.window("close", p + 1)  # close_{t-p} .. close_t
        r = _ret(xp, w[:, -1], w[:, -2])     # r_t
        lead = _ret(xp, w[:, 1], w[:, 0])    # r_{t-p+1}, the oldest return kept
        r_prev, r_old = s["r1"], s["lead"]   # r_{t-1}; r_{t-p}, the return leaving
        s["r1"], s["lead"] = r, lead
        # r_1 is the first return; r_{t-p} leaves once it exists (t >= p + 1). Adding 0.0 leaves a
        # sum exact, so masked terms are zeros.
        add = xp.where(t >= 1, r, 0.0)
        old = xp.where(t >= p + 1, r_old, 0.0)
        pa, po = add, old
        new = []
        for k in range(1, self.order + 1):
            if k > 1:
                pa, po = pa * add, po * old
            sk, ck = _two_sum(xp, s[f"s{k}"], s[f"c{k}"], pa)
            sk, ck = _two_sum(xp, sk, ck, -po)
            new += [sk, ck]
        if self.order >= 3:
            big = xp.maximum(s["big"], add * add)
            need = (t >= p) & (big > self._REBUILD_RATIO * (new[2] + new[3]))
            new = _on_rows(xp, need, lambda win: self._rebuild(xp, win), (w,), new + [big])
            s["big"] = new.pop()
        sums = []
        for k in range(1, self.order + 1):
            s[f"s{k}"], s[f"c{k}"] = new[2 * k - 2], new[2 * k - 1]
            sums.append(new[2 * k - 2] + new[2 * k - 1])
        # Pairs (r_{k-1}, r_k) in the window: k = t-p+2..t; r_2 is the first pair's right end.
        diff = s["diff"] + ((t >= 2) & (r != r_prev)) - ((t >= p + 1) & (lead != r_old))
        s["diff"] = diff
        return r, sums, diff == 0

    def _rebuild(self, xp, w):
        """The compensated sums and the largest square of the window's returns. The rebuilt sums
        must be as exact as the running ones: an ordinary sum's 1e-16 error would stay behind
        after the returns it was computed from have left."""
        r = _ret(xp, w[:, 1:], w[:, :-1])  # r_{t-p+1..t}
        out, pk = [], r
        for k in range(1, self.order + 1):
            if k > 1:
                pk = pk * r
            out += list(_exact_sum(xp, pk))
        return out + [(r * r).max(axis=1)]


def _sample_std(xp, n: float, sums):
    """Sample standard deviation (ddof = 1) from the power sums S1, S2 of ``n`` values; a negative
    rounding residue of S2 - S1^2/n counts as 0."""
    return xp.sqrt(xp.maximum(sums[1] - sums[0] * sums[0] / n, 0.0) / (n - 1.0))


def _central(xp, n: float, sums):
    """Mean ``A`` and the biased central moments ``B`` (2nd), ``C`` (3rd), ``D`` (4th) from raw
    power sums, pandas' rolling skew/kurt algebra; as many as ``sums`` allows."""
    a = sums[0] / n
    out = [a]
    if len(sums) >= 2:
        bb = sums[1] / n - a * a
        out.append(bb)
    if len(sums) >= 3:
        cc = sums[2] / n - a * a * a - 3.0 * a * bb
        out.append(cc)
    if len(sums) >= 4:
        out.append(sums[3] / n - a * a * a * a - 6.0 * bb * a * a - 4.0 * cc * a)
    return out


class RetMean(_RetMoments):
    """Mean of the last ``timeperiod`` one-bar simple returns of the close.

    Formula: r_t = close_t / close_{t-1} - 1; ret_mean = (1/n) * sum of r over the last n bars
    (this one included), from a compensated running sum.

    Edge cases: flat prices give 0. A previous close of 0 gives a return of 0.

    Reference: sample mean of simple returns.
    """

    fn = "ret_mean"
    order = 1

    def step(self, xp, s, b):
        r, sums, const = self._advance(xp, s, b)
        return (xp.where(const, r, sums[0] / self.params["timeperiod"]),)


class RetStd(_RetMoments):
    """Sample standard deviation (ddof = 1) of the last ``timeperiod`` one-bar simple returns.

    Formula: sqrt((S2 - S1^2 / n) / (n - 1)), S_k = sum of r^k over the last n returns (this
    bar's included), compensated running sums; a negative rounding residue counts as 0.

    Edge cases: flat prices (any window of equal returns) give exactly 0.

    Reference: sample standard deviation of simple returns.
    """

    fn = "ret_std"
    order = 2

    def step(self, xp, s, b):
        p = float(self.params["timeperiod"])
        _, sums, const = self._advance(xp, s, b)
        return (xp.where(const, 0.0, _sample_std(xp, p, sums)),)


class RetZScore(_RetMoments):
    """Z-score of the latest one-bar return within the last ``timeperiod`` returns.

    Formula: (r_t - mean) / std, with the mean and the sample standard deviation (ddof = 1) of the
    last n returns, r_t included (as ret_mean and ret_std).

    Edge cases: a window of equal returns (flat prices) has std 0 and gives NaN.

    Reference: standard score of the latest return.
    """

    fn = "ret_zscore"
    order = 2

    def step(self, xp, s, b):
        p = float(self.params["timeperiod"])
        r, sums, const = self._advance(xp, s, b)
        std = _sample_std(xp, p, sums)
        return (xp.where(const | (std == 0), NAN, (r - sums[0] / p) / std),)


class RetSkew(_RetMoments):
    """Skewness of the last ``timeperiod`` one-bar returns, bias-corrected as pandas' rolling skew.

    Formula: with A = S1/n, B = S2/n - A^2, C = S3/n - A^3 - 3AB (biased central moments from
    compensated running power sums S_k), skew = sqrt(n(n-1)) * C / ((n - 2) * B^1.5), the
    adjusted Fisher-Pearson coefficient G1 (pandas Series.rolling(n).skew()).

    Edge cases: a window of equal returns (flat prices) gives NaN (pandas gives 0 there, and NaN
    whenever B <= 1e-14, a threshold meant for prices that would blank quiet return windows).

    Reference: D. N. Joanes and C. A. Gill, Comparing measures of sample skewness and kurtosis,
    The Statistician 47 (1998), G1; pandas window aggregations calc_skew.
    """

    fn = "ret_skew"
    order = 3

    def step(self, xp, s, b):
        n = float(self.params["timeperiod"])
        _, sums, const = self._advance(xp, s, b)
        _, bb, cc = _central(xp, n, sums)
        rr = xp.sqrt(bb)
        out = (n * (n - 1.0)) ** 0.5 * cc / ((n - 2.0) * rr * rr * rr)
        return (xp.where(const | ~(bb > 0), NAN, out),)


class RetKurt(_RetMoments):
    """Excess kurtosis of the last ``timeperiod`` one-bar returns, bias-corrected as pandas' rolling kurt.

    Formula: with A, B, C as in ret_skew and D = S4/n - A^4 - 6BA^2 - 4CA (4th central moment),
    kurt = ((n^2 - 1) * D / B^2 - 3(n - 1)^2) / ((n - 2)(n - 3)), the unbiased excess kurtosis G2
    (0 for a normal sample; pandas Series.rolling(n).kurt()).

    Edge cases: a window of equal returns (flat prices) gives NaN (pandas gives -3 there, and NaN
    whenever B <= 1e-14).

    Reference: Joanes and Gill (1998), G2; pandas window aggregations calc_kurt.
    """

    fn = "ret_kurt"
    order = 4

    def step(self, xp, s, b):
        n = float(self.params["timeperiod"])
        _, sums, const = self._advance(xp, s, b)
        _, bb, _, dd = _central(xp, n, sums)
        k = (n * n - 1.0) * dd / (bb * bb) - 3.0 * (n - 1.0) ** 2
        return (xp.where(const | ~(bb > 0), NAN, k / ((n - 2.0) * (n - 3.0))),)


# ---------------------------------------------------------------------- window order stats


class _RetExtreme(_Returns):
    """Running extreme of the window's returns and its age (bars since it came in); an extreme
    that has left the window is found again in the window, for those rows only (on average
    about one row in ``timeperiod`` a bar)."""

    _sign = 1.0  # +1: minimum, -1: maximum

    def init(self, xp, n):
        return {"ext": xp.full(n, self._sign * INF), "age": xp.zeros(n, dtype=xp.int64)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        w = b.window("close", p + 1)
        r = _ret(xp, w[:, -1], w[:, -2])  # NaN on a row's first bar: never taken
        # ties take the newest return, which stays longest
        take = (self._sign * r) <= (self._sign * s["ext"])
        ext = xp.where(take, r, s["ext"])
        age = xp.where(take, 0, s["age"] + 1)
        ext, age = _on_rows(xp, age >= p, lambda win: self._rescan(xp, win), (w,), [ext, age])
        s["ext"], s["age"] = ext, age
        return (ext,)

    def _rescan(self, xp, w):
        r = self._sign * _ret(xp, w[:, 1:], w[:, :-1])[:, ::-1]  # newest first
        i = xp.argmin(r, axis=1)
        return self._sign * xp.take_along_axis(r, i[:, None], axis=1)[:, 0], i


class RetMin(_RetExtreme):
    """Smallest one-bar simple return of the close over the last ``timeperiod`` bars.

    Formula: min of r_k = close_k / close_{k-1} - 1 over the last n bars, this one included
    (a running minimum, searched again in the window when it leaves).

    Edge cases: flat prices give 0. A previous close of 0 gives a return of 0.

    Reference: rolling minimum of simple returns.
    """

    fn = "ret_min"
    _sign = 1.0


class RetMax(_RetExtreme):
    """Largest one-bar simple return of the close over the last ``timeperiod`` bars.

    Formula: max of r_k = close_k / close_{k-1} - 1 over the last n bars, this one included
    (a running maximum, searched again in the window when it leaves).

    Edge cases: flat prices give 0. A previous close of 0 gives a return of 0.

    Reference: rolling maximum of simple returns.
    """

    fn = "ret_max"
    _sign = -1.0


class RetPctRank(_Returns):
    """Percentile rank of the latest one-bar return among the last ``timeperiod`` returns.

    Formula: (number of r_k <= r_t over the last n returns, r_t included) / n, in [1/n, 1].

    Edge cases: flat prices (all returns equal) give 1. Ties count as at or below.

    Reference: empirical CDF of the window at the latest return (pandas rank(pct=True,
    method="max") of the window's last element).
    """

    fn = "ret_pctrank"

    def init(self, xp, n):
        # the last n returns in ring order (order does not matter to a count); NaN until written
        return {"ring": xp.full((n, self.params["timeperiod"]), NAN)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        w = b.window("close", 2)
        r = _ret(xp, w[:, 1], w[:, 0])
        ring = _ring_put(s["ring"], xp.arange(b.n) * p + b.t % p, r)
        s["ring"] = ring
        # a count as a product with ones: a row sum of booleans is far slower in NumPy
        below = (ring <= r[:, None]).astype(xp.float64) @ xp.ones(p)
        return (below / float(p),)


# ---------------------------------------------------------------------------- log returns


class LogRet(Kernel):
    """Log return of the close over ``timeperiod`` bars.

    Formula: ln(close_t / close_{t-h}), h = timeperiod.

    Edge cases: flat prices give 0; a zero or sign-changing close (ratio <= 0) gives NaN.

    Reference: continuously compounded return.
    """

    fn, family = "logret", "stats"

    def __init__(self, timeperiod: int = 1) -> None:
        super().__init__(timeperiod=timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}

    def step(self, xp, s, b):
        w = b.window("close", self.params["timeperiod"] + 1)
        return (xp.log(w[:, -1] / w[:, 0]),)


# ------------------------------------------------------------------------ autocorrelation


class AutoCorr(Kernel):
    """Autocorrelation of one-bar returns at ``lag`` over ``timeperiod`` bars.

    Formula: Pearson correlation of x = (r_{t-n+1}, ..., r_t) with y = (r_{t-n+1-lag}, ...,
    r_{t-lag}), n = timeperiod, each side centred on its own mean: (Sxy - Sx*Sy/n) /
    sqrt((Sxx - Sx^2/n)(Syy - Sy^2/n)), from compensated running sums (y's sums are x's of lag
    bars before), clipped to [-1, 1].

    Edge cases: a side whose returns are all equal (flat prices) gives NaN.

    Reference: lagged Pearson autocorrelation (pandas Series.rolling(n).corr(r.shift(lag))).
    """

    fn, family = "autocorr", "stats"

    def __init__(self, timeperiod: int = 20, lag: int = 1) -> None:
        super().__init__(timeperiod=timeperiod, lag=lag)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] + self.params["lag"]

    def windows(self):
        return {"close": self.params["timeperiod"] + self.params["lag"] + 2}

    # x side: compensated Sx, Sxx and the count of differing neighbours; kept for lag bars in a
    # ring, where they become the y side's.
    _X = ("sx", "cx", "sxx", "cxx", "dx")

    def init(self, xp, n):
        lag = self.params["lag"]
        s = {k: xp.zeros(n) for k in ("sx", "cx", "sxx", "cxx", "sxy", "cxy")}
        s.update(dx=xp.zeros(n, dtype=xp.int64), r1=xp.full(n, NAN), lead=xp.full(n, NAN))
        for k in self._X:
            s["h" + k] = xp.zeros((n, lag), dtype=s[k].dtype)
        return s

    def step(self, xp, s, b):
        p, lag = self.params["timeperiod"], self.params["lag"]
        t = b.t
        w = b.window("close", p + lag + 2)  # close_{t-p-lag-1} .. close_t
        r = _ret(xp, w[:, -1], w[:, -2])             # r_t
        lead = _ret(xp, w[:, lag + 2], w[:, lag + 1])  # r_{t-p+1}
        r_prev, r_old = s["r1"], s["lead"]           # r_{t-1}; r_{t-p}, leaving
        s["r1"], s["lead"] = r, lead
        r_lag = r_prev if lag == 1 else _ret(xp, w[:, -1 - lag], w[:, -2 - lag])  # r_{t-lag}
        r_lag_old = _ret(xp, w[:, 1], w[:, 0])       # r_{t-p-lag}
        add = xp.where(t >= 1, r, 0.0)
        old = xp.where(t >= p + 1, r_old, 0.0)
        add_xy = xp.where(t >= lag + 1, add * r_lag, 0.0)
        old_xy = xp.where(t >= p + lag + 1, old * r_lag_old, 0.0)
        sums = {}
        for k, a, o in (("x", add, old), ("xx", add * add, old * old), ("xy", add_xy, old_xy)):
            sk, ck = _two_sum(xp, s["s" + k], s["c" + k], a)
            sk, ck = _two_sum(xp, sk, ck, -o)
            s["s" + k], s["c" + k] = sk, ck
            sums[k] = sk + ck
        s["dx"] = s["dx"] + ((t >= 2) & (r != r_prev)) - ((t >= p + 1) & (lead != r_old))
        # y side = x side lag bars ago: swap through the ring (slot t % lag)
        idx = xp.arange(b.n) * lag + t % lag
        ys = {}
        for k in self._X:
            ys[k] = s["h" + k].reshape(-1)[idx]
            s["h" + k] = _ring_put(s["h" + k], idx, s[k])
        n = float(p)
        sy, syy = ys["sx"] + ys["cx"], ys["sxx"] + ys["cxx"]
        vx = sums["xx"] - sums["x"] * sums["x"] / n
        vy = syy - sy * sy / n
        cov = sums["xy"] - sums["x"] * sy / n
        ok = (s["dx"] > 0) & (ys["dx"] > 0) & (vx > 0) & (vy > 0)
        rho = xp.minimum(xp.maximum(cov / xp.sqrt(vx * vy), -1.0), 1.0)
        return (xp.where(ok, rho, NAN),)


# ------------------------------------------------------------------- against a reference


class _Paired(Kernel):
    """TA-Lib's two-input running sums, advanced only on bars with a finite ``ref_close``.

    State: ``c`` pairs seen (bars with a reference), the anchors ``kx``/``ky``, the sums of the
    anchored values, the squares of the last removed terms, TA-Lib's countdown to a rebuild, and
    per input a ring of the window's ``timeperiod`` values (plus a scratch column that bars
    without a reference write to, so a write never needs to read first).
    """

    family = "stats"
    inputs = ("close", "ref_close")
    _SUMS = ("sx", "sxx", "sy", "syy", "sxy")

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def init(self, xp, n):
        p = self.params["timeperiod"]
        s = {k: xp.zeros(n) for k in self._SUMS}
        s.update(c=xp.zeros(n, dtype=xp.int64), cnt=xp.full(n, 32 * p, dtype=xp.int64),
                 kx=xp.zeros(n), ky=xp.zeros(n), tx2=xp.zeros(n), ty2=xp.zeros(n),
                 bx=xp.zeros((n, p + 1)), by=xp.zeros((n, p + 1)))
        return s

    def _store(self, xp, s, b, live, slot, x, y):
        """Writes ``x``/``y`` to the rings at ``slot`` for ``live`` rows (others: scratch column);
        returns the flat index of each row's first column."""
        width = self.params["timeperiod"] + 1
        base = xp.arange(b.n) * width
        idx = base + xp.where(live, slot, width - 1)
        s["bx"], s["by"] = _ring_put(s["bx"], idx, x), _ring_put(s["by"], idx, y)
        return base

    def _finish(self, xp, s, upd, main, sums, tx, ty, cnt, kx, ky):
        """Removes the trailing terms (zero outside the main phase) and stores the sums of the
        ``upd`` rows (those that fed a value to the sums)."""
        tx = xp.where(main, tx, 0.0)
        ty = xp.where(main, ty, 0.0)
        sx, sxx, sy, syy, sxy = sums
        after = {"sx": sx - tx, "sxx": sxx - tx * tx, "sy": sy - ty, "syy": syy - ty * ty,
                 "sxy": sxy - tx * ty}
        for k in self._SUMS:
            s[k] = xp.where(upd, after[k], s[k])
        s["tx2"] = xp.where(upd, tx * tx, s["tx2"])
        s["ty2"] = xp.where(upd, ty * ty, s["ty2"])
        s["cnt"] = xp.where(main, cnt, s["cnt"])
        s["kx"], s["ky"] = kx, ky


class BETA(_Paired):
    """Beta of the symbol's one-bar returns on the reference's over ``timeperiod`` returns (TA-Lib BETA).

    Formula: TA-Lib BETA(real0 = ref_close, real1 = close): with x = the reference's one-bar
    returns and y = the symbol's (a return after a price of 0 counts as 0), beta = (n*Sxy - Sx*Sy)
    / (n*Sxx - Sx^2) over the last n = timeperiod returns, i.e. cov(y, x) / var(x), the slope of
    the symbol's returns regressed on the reference's. As in the bundled TA-Lib the sums are of
    returns minus an anchor (the first return, then the window mean whenever the sums are rebuilt
    from the window: after 32n bars, or when n*Sxx - Sx^2 falls below 1e-6 * n*Sxx, or a removed
    term's square exceeds 1000 times its sum). The order real0 = reference makes the value the
    usual beta; TA-Lib's BETA divides by the variance of its first input.

    Edge cases: n*Sxx - Sx^2 <= 1e-14 * n*Sxx (a flat reference) gives 0, as TA-Lib. A bar whose
    ref_close is missing (NaN) does not advance the feature and gives NaN; the first value comes
    after timeperiod + 1 bars that have a reference.

    Reference: TA-Lib BETA.
    """

    fn, talib, talib_inputs = "beta", "BETA", ("ref_close", "close")

    def __init__(self, timeperiod: int = 5) -> None:
        super().__init__(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"]

    def init(self, xp, n):
        s = super().init(xp, n)
        s.update(px=xp.full(n, NAN), py=xp.full(n, NAN))
        return s

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        n = float(p)
        x, y = b.ref_close, b.close  # TA-Lib's real0, real1
        ok = xp.isfinite(x)
        c = s["c"]  # pairs (bars with a reference) seen before this one
        px, py = s["px"], s["py"]
        s["px"], s["py"] = xp.where(ok, x, px), xp.where(ok, y, py)
        rx = xp.where(px == 0, 0.0, (x - px) / px)
        ry = xp.where(py == 0, 0.0, (y - py) / py)
        # Return m (pair m >= 1) goes to ring column (m - 1) % p; the oldest of the window then
        # sits in column m % p.
        oldest = c % p
        has_ret = ok & (c >= 1)
        base = self._store(xp, s, b, has_ret, oldest - 1 + p * (oldest == 0), rx, ry)
        first = ok & (c == 1)
        kx = xp.where(first, rx, s["kx"])
        ky = xp.where(first, ry, s["ky"])
        main = ok & (c >= p)
        dx, dy = rx - kx, ry - ky
        sx = s["sx"] + dx
        sxx = s["sxx"] + dx * dx
        syy = s["syy"] + dy * dy
        sxy = dx * dy + s["sxy"]
        sy = dy + s["sy"]
        # TA-Lib's tests, in its order, on the updated x sums (and y's square sum): any of them
        # rebuilds every sum from the window, anchored at the window's mean return.
        nsxx = n * sxx
        den = nsxx - sx * sx
        cnt = s["cnt"] - 1
        need = main & ((1e-6 * nsxx > den) | (s["tx2"] > 1000.0 * sxx) | (s["ty2"] > 1000.0 * syy)
                       | (cnt == 0))
        kx, ky, sx, sxx, sy, syy, sxy, nsxx, den = _on_rows(
            xp, need, lambda bx, by, o: self._rebuild(xp, bx, by, o), (s["bx"], s["by"], oldest),
            [kx, ky, sx, sxx, sy, syy, sxy, nsxx, den])
        cnt = xp.where(need, 32 * p, cnt)
        tx = s["bx"].reshape(-1)[base + oldest] - kx
        ty = s["by"].reshape(-1)[base + oldest] - ky
        out = xp.where(den > 1e-14 * nsxx, (sxy * n - sx * sy) / den, 0.0)
        self._finish(xp, s, has_ret, main, (sx, sxx, sy, syy, sxy), tx, ty, cnt, kx, ky)
        s["c"] = c + ok
        return (xp.where(main, out, NAN),)

    def _rebuild(self, xp, bx, by, oldest):
        """TA-Lib's rebuild of the sums from the window's ``p`` returns (rows given)."""
        p = self.params["timeperiod"]
        n = float(p)
        wx, wy = _ordered(xp, bx, oldest, p), _ordered(xp, by, oldest, p)
        kx, ky = _seq_sum(xp, wx) / n, _seq_sum(xp, wy) / n
        dx, dy = wx - kx[:, None], wy - ky[:, None]
        sx, sxx = _seq_sum(xp, dx), _seq_sum(xp, dx * dx)
        sy, syy = _seq_sum(xp, dy), _seq_sum(xp, dy * dy)
        sxy = _seq_sum(xp, dx * dy)
        nsxx = n * sxx
        den = nsxx - sx * sx
        return kx, ky, sx, sxx, sy, syy, sxy, nsxx, xp.where(den < 0, 0.0, den)


class CORREL(_Paired):
    """Correlation of the close with the reference symbol's close over ``timeperiod`` bars (TA-Lib CORREL).

    Formula: TA-Lib CORREL(close, ref_close): r = (Sxy - Sx*Sy/n) / sqrt((Sxx - Sx^2/n) (Syy -
    Sy^2/n)) over the last n = timeperiod bars, clipped to [-1, 1]. As in the bundled TA-Lib the
    sums are of prices minus an anchor (the first price, then the window mean whenever the sums
    are rebuilt from the window: after 32n bars, or when a variance sum falls below 1e-6 of its
    square sum, or a removed term's square exceeds 1e6 times its square sum).

    Edge cases: a variance sum <= 1e-14 of its square sum (flat prices on either side) gives 0, as
    TA-Lib. A bar whose ref_close is missing (NaN) does not advance the feature and gives NaN; the
    first value comes after timeperiod bars that have a reference.

    Reference: TA-Lib CORREL.
    """

    fn, talib, talib_inputs = "correl", "CORREL", ("close", "ref_close")

    def __init__(self, timeperiod: int = 30) -> None:
        super().__init__(timeperiod)

    @property
    def lookback(self) -> int:
        return self.params["timeperiod"] - 1

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        inv_n = 1.0 / float(p)
        x, y = b.close, b.ref_close  # TA-Lib's real0, real1
        ok = xp.isfinite(y)
        c = s["c"]  # pairs (bars with a reference) seen before this one
        # Pair m goes to ring column m % p; the window's oldest then sits in column (m + 1) % p.
        slot = c % p
        base = self._store(xp, s, b, ok, slot, x, y)
        oldest = slot + 1 - p * (slot == p - 1)
        first = ok & (c == 0)
        kx = xp.where(first, x, s["kx"])
        ky = xp.where(first, y, s["ky"])
        main = ok & (c >= p - 1)
        dx, dy = x - kx, y - ky
        sx = s["sx"] + dx
        sxx = s["sxx"] + dx * dx
        sy = s["sy"] + dy
        syy = s["syy"] + dy * dy
        sxy = dx * dy + s["sxy"]
        # TA-Lib's tests, in its order; any of them rebuilds every sum from the window.
        varx = sxx - (sx * sx) * inv_n
        vary = syy - (sy * sy) * inv_n
        cnt = s["cnt"] - 1
        need = main & ((1e-6 * sxx > varx) | (1e-6 * syy > vary) | (s["tx2"] > 1e6 * sxx)
                       | (s["ty2"] > 1e6 * syy) | (cnt == 0))
        cov = sxy - (sx * sy) * inv_n
        kx, ky, sx, sxx, sy, syy, sxy, varx, vary, cov = _on_rows(
            xp, need, lambda bx, by, o: self._rebuild(xp, bx, by, o), (s["bx"], s["by"], oldest),
            [kx, ky, sx, sxx, sy, syy, sxy, varx, vary, cov])
        cnt = xp.where(need, 32 * p, cnt)
        tx = s["bx"].reshape(-1)[base + oldest] - kx
        ty = s["by"].reshape(-1)[base + oldest] - ky
        prod = varx * vary
        defined = (varx > 1e-14 * sxx) & (vary > 1e-14 * syy) & (prod > 0)
        r = cov / xp.sqrt(xp.where(defined, prod, 1.0))
        out = xp.where(defined, xp.minimum(xp.maximum(r, -1.0), 1.0), 0.0)
        self._finish(xp, s, ok, main, (sx, sxx, sy, syy, sxy), tx, ty, cnt, kx, ky)
        s["c"] = c + ok
        return (xp.where(main, out, NAN),)

    def _rebuild(self, xp, bx, by, oldest):
        """TA-Lib's rebuild of the sums from the window's ``p`` values (rows given)."""
        p = self.params["timeperiod"]
        inv_n = 1.0 / float(p)
        wx, wy = _ordered(xp, bx, oldest, p), _ordered(xp, by, oldest, p)
        kx, ky = _seq_sum(xp, wx) * inv_n, _seq_sum(xp, wy) * inv_n
        dx, dy = wx - kx[:, None], wy - ky[:, None]
        sx, sxx = _seq_sum(xp, dx), _seq_sum(xp, dx * dx)
        sy, syy = _seq_sum(xp, dy), _seq_sum(xp, dy * dy)
        sxy = _seq_sum(xp, dx * dy)
        varx = sxx - (sx * sx) * inv_n
        vary = syy - (sy * sy) * inv_n
        cov = sxy - (sy * sx) * inv_n
        return (kx, ky, sx, sxx, sy, syy, sxy, xp.where(varx < 0, 0.0, varx),
                xp.where(vary < 0, 0.0, vary), cov)


def defaults() -> list[Kernel]:
    """The stats features every engine computes by default."""
    return [RetMean(20), RetStd(20), RetZScore(20), RetMin(20), RetMax(20), RetPctRank(20), RetSkew(20),
            RetKurt(20), LogRet(1), LogRet(5), LogRet(15), LogRet(60), AutoCorr(20, 1), BETA(5), CORREL(30)]
