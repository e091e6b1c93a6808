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
reproduce; such windows are recognised exactly, by counting the neighbouring returns in the window
that are equal (all ``n - 1`` pairs of a full window), and give a standard deviation of 0 and NaN
for the ratios that divide by it.

Reference symbol (``ref_close``): BETA and CORREL advance only on bars whose ``ref_close`` is
finite; any other bar leaves their state untouched and outputs NaN, so over the bars that have a
reference they equal TA-Lib on the series of those bars. They count those bars themselves and
output NaN until TA-Lib's warm-up has passed in that count.

Cost. A step is a few dozen passes over arrays of one value per row, so the code counts passes: the
running sums are updated in place, a selection that is rare (a zero close, a constant window, a
rebuild) is checked with one cheap reduction and written to the few rows it picks, and with NumPy a
warm-up or missing-reference mask that holds on every row (the steady state) is not applied at all.
On a GPU such checks would cost a device-to-host sync, so there every select is computed (the
values are the same either way; the tests run both paths).
"""

from __future__ import annotations

from core.features.kernel import Kernel, Stage

__all__ = ["RetMean", "RetStd", "RetZScore", "RetMin", "RetMax", "RetPctRank", "RetSkew", "RetKurt",
           "LogRet", "AutoCorr", "BETA", "CORREL", "defaults"]

NAN = float("nan")
INF = float("inf")


# ------------------------------------------------------------------------------------ helpers


def _host(xp) -> bool:
    """True for NumPy: the arrays are on the host, so checking a mask once (``mask.any()``,
    ``c.min()``) costs one cheap pass and no transfer, and lets a step skip selects that would
    change nothing. On a GPU that check would be a device-to-host sync, so every select is done."""
    return xp.__name__ == "numpy"


def _warm(xp, oldest) -> bool:
    """Whether every row is past its warm-up, known from the oldest return a kernel reads (not
    NaN: it does not reach back before the row's first bar, see `_ret`, and neither do the newer
    ones). Only NumPy checks; on a GPU the answer is False and every warm-up mask is applied."""
    return _host(xp) and not xp.isnan(oldest).any()


def _zero_nan(xp, warm: bool, x, probe=None, zero=0.0):
    """``x`` with ``zero`` where the return ``probe`` (default: ``x``) is NaN, i.e. reaches back
    before the row's first bar (``x`` itself when every row is ``warm``)."""
    return x if warm else xp.where(xp.isnan(x if probe is None else probe), zero, x)


def _put_where(xp, mask, x, v):
    """``xp.where(mask, v, x)`` for a ``mask`` that picks few rows (a zero close, a constant
    window): with NumPy ``v`` is written into ``x``, a fresh array, after a check that costs a
    fraction of a where. ``v`` is a number or an array shaped like ``x``."""
    if _host(xp):
        if mask.any():
            x[mask] = v if isinstance(v, (int, float)) else v[mask]
        return x
    return xp.where(mask, v, x)


def _sel(xp, mask, a, b):
    """``xp.where(mask, a, b)``; ``a`` itself when ``mask`` is None (known to hold on every row)."""
    return a if mask is None else xp.where(mask, a, b)


def _ret(xp, cur, prev):
    """One-bar simple return ``cur / prev - 1``; 0 where ``prev`` is 0 (TA-Lib's BETA rule).

    The engine refuses bars whose close is not finite and fills a row's history before its first
    bar with NaN, so a return is NaN exactly when it reaches back before the row's first bar:
    r_k for k <= 0, k counting the row's bars from 0. Warm-up masks are taken from that instead of
    the bar count (a return at hand costs less to test than another array to read).
    """
    r = xp.divide(cur, prev)
    r -= 1.0
    return _put_where(xp, prev == 0, r, 0.0)


def _add_sub(xp, s, c, a, na, t, z, e):
    """Adds ``a`` and then ``na`` to the compensated sum ``(s, c)``, in place; ``t``, ``z``, ``e``
    are scratch arrays.

    Each addition is Knuth's TwoSum: ``t = s + a``, ``z = t - s``, ``c += (s - (t - z)) + (a -
    z)``, which recovers the rounding error of ``s + a`` exactly whatever the magnitudes, so ``s +
    c`` carries only the (second-order) rounding of the ``c`` additions.
    """
    xp.add(s, a, out=t)
    xp.subtract(t, s, out=z)
    xp.subtract(t, z, out=e)
    xp.subtract(s, e, out=e)
    xp.subtract(a, z, out=z)
    xp.add(e, z, out=e)
    xp.add(c, e, out=c)
    xp.add(t, na, out=s)
    xp.subtract(s, t, out=z)
    xp.subtract(s, z, out=e)
    xp.subtract(t, e, out=e)
    xp.subtract(na, z, out=z)
    xp.add(e, z, out=e)
    xp.add(c, e, out=c)


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
    """``buf`` with ``x`` written at the flat positions ``flat_idx`` (one per row). In place when
    ``buf`` is contiguous: O(n) a bar, where shifting a window costs O(n * width) and a 2-D fancy
    index is several times slower."""
    flat = buf.reshape(-1)
    flat[flat_idx] = x
    return flat.reshape(buf.shape)


def _next_slot(xp, pos, width: int):
    """``(pos + 1) % width`` for ``0 <= pos < width``, without an integer division."""
    nxt = pos + 1
    return _put_where(xp, nxt == width, nxt, 0)


def _ordered(xp, buf, oldest, width: int):
    """The first ``width`` columns of the ring ``buf`` (m, >= width) as a window, oldest first;
    ``oldest`` is each row's oldest column."""
    cols = (oldest[:, None] + xp.arange(width)[None, :]) % width
    return xp.take_along_axis(buf[:, :width], cols, axis=1)


def _seq_sum(xp, a):
    """Sum along axis 1 added left to right, as TA-Lib's C loops add (``cumsum`` accumulates in
    order; ``sum`` adds pairwise, which rounds differently)."""
    return xp.cumsum(a, axis=1)[:, -1]


def _on_rows(xp, need, fn, into):
    """Runs ``fn(rows)`` for the rows where ``need`` holds and writes its results into the arrays
    ``into`` (one per result, the caller's to overwrite) at those rows; returns ``into``.
    ``rows`` is an index array, or None for every row.

    For rare per-row branches (rebuilding a window's sums): with NumPy only the rows that need it
    are computed (they are on the host, so finding them costs no transfer); on a GPU every row is
    computed and selected, which avoids a device-to-host sync.
    """
    if _host(xp):
        if need.any():
            idx = xp.flatnonzero(need)
            for dst, v in zip(into, fn(idx)):
                dst[idx] = v
        return into
    return [xp.where(need, v, dst) for v, dst in zip(fn(None), into)]


def _cols(xp, a, idx):
    """The columns ``idx`` of ``a`` (all when None), row-major (``a[:, idx]`` would be
    column-major, and a reduction along its rows then runs one column at a time)."""
    return a if idx is None else xp.take(a, idx, axis=1)


def _rows(a, idx):
    """The rows ``idx`` of ``a`` (all when None)."""
    return a if idx is None else a[idx]


def _window_rows(xp, w, idx):
    """The rows ``idx`` (all when None) of the history window ``w`` (a view of the engine's
    time-major buffer) as a row-major (rows, width) array: gathered along the buffer's rows, where
    the values of a row sit next to each other."""
    return xp.ascontiguousarray(_cols(xp, w.T, idx).T)


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


class _PowerSums(Stage):
    """Running compensated power sums ``S_1..S_order`` of the last ``timeperiod`` returns and the
    count of equal neighbouring returns in the window (``timeperiod - 1`` once the window is full:
    a constant window). From order 3 the sums are rebuilt from the window when the largest square
    added since the last rebuild exceeds ``_REBUILD_RATIO`` times the current S_2 (see the
    module's notes).

    Each S_k is advanced on its own and the rebuild test reads only S_2, so the sums up to order 2
    are the same whichever order is kept, and so are those up to order 4 once order >= 3: one
    stage of order 2 serves ret_mean, ret_std and ret_zscore, one of order 4 ret_skew and ret_kurt.
    """

    _REBUILD_RATIO = 1e8

    def __init__(self, timeperiod: int, order: int) -> None:
        super().__init__(timeperiod=timeperiod, order=order)

    def windows(self):
        return {"close": self.params["timeperiod"] + 1}

    def init(self, xp, n):
        # r1 = r_{t-1}, lead = r_{t-p}: this bar's r_t and r_{t-p+1}, carried to the next one.
        s = {"eq": xp.zeros(n, dtype=xp.int32), "r1": xp.full(n, NAN), "lead": xp.full(n, NAN)}
        for k in range(1, self.params["order"] + 1):
            s[f"s{k}"] = xp.zeros(n)
            s[f"c{k}"] = xp.zeros(n)
        if self.params["order"] >= 3:
            s["big"] = xp.zeros(n)
        return s

    def step(self, xp, s, b):
        """Advances the sums; returns (latest return, [(S_k, its compensation) for k = 1..order],
        constant-window flag). The flag is meaningful once the window is full (t >= timeperiod:
        the outputs before that are masked). All shared: a reader adds each pair into an array of
        its own."""
        p, order = self.params["timeperiod"], self.params["order"]
        w = b.window("close", p + 1)  # close_{t-p} .. close_t
        r = _ret(xp, w[:, -1], w[:, -2])     # r_t
        lead = _ret(xp, w[:, 1], w[:, 0])    # r_{t-p+1}, the oldest return kept
        r_prev, r_old = s["r1"], s["lead"]   # r_{t-1}; r_{t-p}, the return leaving
        s["r1"], s["lead"] = r, lead
        # Equal pairs (r_{k-1}, r_k) in the window, k = t-p+2..t: a pair enters with r_k and leaves
        # p - 1 bars later, compared again on the same two values. A return from before the row's
        # first bar is NaN, so a pair that reaches back there never counts, entering or leaving.
        eq = s["eq"]
        eq += r == r_prev
        eq -= lead == r_old
        # r_1 is the first return; r_{t-p} leaves once it exists (t >= p + 1): the others are NaN
        # and count as 0.0 (adding 0.0 leaves a sum exact).
        warm = _warm(xp, r_old)
        add, old = _zero_nan(xp, warm, r), _zero_nan(xp, warm, r_old)
        tmp = (xp.empty_like(r), xp.empty_like(r), xp.empty_like(r))
        pa, na, sq = add, -old, None  # na = -old^k, formed as (-old^(k-1)) * old: the same bits
        for k in range(1, order + 1):
            if k > 1:
                pa, na = pa * add, na * old
                sq = pa if k == 2 else sq
            _add_sub(xp, s[f"s{k}"], s[f"c{k}"], pa, na, *tmp)
        if order >= 3:
            big = xp.maximum(s["big"], sq, out=s["big"])
            need = big > self._REBUILD_RATIO * (s["s2"] + s["c2"])
            if not warm:
                need &= lead == lead  # a full window (t >= p): r_{t-p+1} exists
            keys = [f"{x}{k}" for k in range(1, order + 1) for x in "sc"] + ["big"]
            new = _on_rows(xp, need, lambda rows: self._rebuild(xp, _window_rows(xp, w, rows)),
                           [s[k] for k in keys])
            s.update(zip(keys, new))
        return r, [(s[f"s{k}"], s[f"c{k}"]) for k in range(1, order + 1)], eq == p - 1

    def _rebuild(self, xp, w):
        """The compensated sums and the largest square of the window's returns. The rebuilt sums
        must be as exact as the running ones: an ordinary sum's 1e-16 error would stay behind
        after the returns it was computed from have left."""
        r = _ret(xp, w[:, 1:], w[:, :-1])  # r_{t-p+1..t}
        out, pk = [], r
        for k in range(1, self.params["order"] + 1):
            if k > 1:
                pk = pk * r
            out += list(_exact_sum(xp, pk))
        return out + [(r * r).max(axis=1)]


class _RetMoments(_Returns):
    """A kernel on the power sums ``S_1..S_order`` of the last ``timeperiod`` returns, read from
    the `_PowerSums` stage it shares with the other moments of that period."""

    order = 1

    def __init__(self, timeperiod: int = 20) -> None:
        super().__init__(timeperiod)
        self._sums = _PowerSums(timeperiod, 2 if self.order <= 2 else 4)

    def stages(self):
        return (self._sums,)

    def _advance(self, xp, s, b):
        """(latest return, power sums S_1.., constant-window flag, three scratch arrays); the sums
        are fresh arrays the caller may overwrite."""
        r, pairs, const = b.stage(self._sums)
        sums = [sk + ck for sk, ck in pairs[:self.order]]
        return r, sums, const, (xp.empty_like(r), xp.empty_like(r), xp.empty_like(r))


def _sample_std(xp, n: float, sums, out):
    """Sample standard deviation (ddof = 1) from the power sums S1, S2 of ``n`` values, written to
    ``out``: sqrt(max(S2 - S1^2/n, 0) / (n - 1)), a negative rounding residue counting as 0."""
    xp.multiply(sums[0], sums[0], out=out)
    out /= n
    xp.subtract(sums[1], out, out=out)
    xp.maximum(out, 0.0, out=out)
    out /= n - 1.0
    return xp.sqrt(out, out=out)


def _central(xp, n: float, sums, tmp):
    """Mean ``A`` and the biased central moments ``B`` (2nd), ``C`` (3rd), ``D`` (4th) from raw
    power sums, pandas' rolling skew/kurt algebra, as many as ``sums`` allows: ``B = S2/n - A^2``,
    ``C = S3/n - A^3 - 3AB``, ``D = S4/n - A^4 - 6BA^2 - 4CA`` (each evaluated left to right).
    Written over ``sums`` (A over S1, B over S2, ...) with the scratch arrays ``tmp``."""
    u, v, e = tmp
    a = xp.divide(sums[0], n, out=sums[0])
    out = [a]
    if len(sums) >= 2:
        a2 = xp.multiply(a, a, out=u)
        bb = xp.divide(sums[1], n, out=sums[1])
        bb -= a2
        out.append(bb)
    if len(sums) >= 3:
        a3 = xp.multiply(a2, a, out=e)
        cc = xp.divide(sums[2], n, out=sums[2])
        cc -= a3
        xp.multiply(a, 3.0, out=v)
        v *= bb
        cc -= v
        out.append(cc)
    if len(sums) >= 4:
        dd = xp.divide(sums[3], n, out=sums[3])
        dd -= xp.multiply(a3, a, out=v)
        xp.multiply(bb, 6.0, out=v)
        v *= a
        v *= a
        dd -= v
        xp.multiply(cc, 4.0, out=v)
        v *= a
        dd -= v
        out.append(dd)
    return out


def _undefined(xp, bb, const):
    """Rows whose skewness or kurtosis is NaN: a constant window, or ``B`` not positive."""
    bad = bb > 0
    xp.invert(bad, out=bad)
    bad |= const
    return bad


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
        r, sums, const, _ = self._advance(xp, s, b)
        return (_put_where(xp, const, xp.divide(sums[0], float(self.params["timeperiod"]), out=sums[0]), r),)


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
        _, sums, const, tmp = self._advance(xp, s, b)
        return (_put_where(xp, const, _sample_std(xp, p, sums, tmp[0]), 0.0),)


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
        r, sums, const, tmp = self._advance(xp, s, b)
        std = _sample_std(xp, p, sums, tmp[0])
        z = xp.divide(sums[0], p, out=tmp[1])
        xp.subtract(r, z, out=z)
        z /= std
        bad = std == 0
        bad |= const
        return (_put_where(xp, bad, z, NAN),)


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
        _, sums, const, tmp = self._advance(xp, s, b)
        _, bb, cc = _central(xp, n, sums, tmp)
        # sqrt(n(n-1)) * C / ((n - 2) * rr * rr * rr), rr = sqrt(B), left to right
        rr = xp.sqrt(bb, out=tmp[1])
        den = xp.multiply(rr, n - 2.0, out=tmp[2])
        den *= rr
        den *= rr
        out = xp.multiply(cc, (n * (n - 1.0)) ** 0.5, out=cc)
        out /= den
        return (_put_where(xp, _undefined(xp, bb, const), out, NAN),)


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
        _, sums, const, tmp = self._advance(xp, s, b)
        _, bb, _, dd = _central(xp, n, sums, tmp)
        k = xp.multiply(dd, n * n - 1.0, out=dd)
        k /= xp.multiply(bb, bb, out=tmp[1])
        k -= 3.0 * (n - 1.0) ** 2
        k /= (n - 2.0) * (n - 3.0)
        return (_put_where(xp, _undefined(xp, bb, const), k, NAN),)


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
        ext, age = s["ext"], s["age"]
        # ties take the newest return, which stays longest (an equal value: fmin/fmax may keep
        # either, and a return is never -0.0)
        take = r <= ext if self._sign > 0 else r >= ext
        age += 1
        age *= ~take
        (xp.fmin if self._sign > 0 else xp.fmax)(ext, r, out=ext)
        ext, age = _on_rows(xp, age >= p, lambda rows: self._rescan(xp, _cols(xp, w.T, rows)), [ext, age])
        s["ext"], s["age"] = ext, age
        return (ext,)

    def _rescan(self, xp, wt):
        """The extreme of a full window's returns and its age (bars since the newest return equal
        to it), from the closes ``wt`` (timeperiod + 1, rows), time-major as the engine keeps them:
        the reductions run along the outer axis, over contiguous rows."""
        r = _ret(xp, wt[1:], wt[:-1])  # r_{t-p+1} .. r_t
        ext = r.min(axis=0) if self._sign > 0 else r.max(axis=0)
        return ext, (r == ext)[::-1].argmax(axis=0)


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
        # The last n returns in ring order (order does not matter to a count), NaN until written,
        # column-major so that a ring slot of every row is one contiguous run; slot = t % n.
        p = self.params["timeperiod"]
        return {"ring": xp.full((n, p), NAN, order="F"), "slot": xp.zeros(n, dtype=xp.int64)}

    def step(self, xp, s, b):
        p = self.params["timeperiod"]
        w = b.window("close", 2)
        r = _ret(xp, w[:, 1], w[:, 0])
        ring, slot = s["ring"], s["slot"]
        if not ring.flags.f_contiguous:  # the engine's copies (a step of some rows, a restore)
            ring = xp.asfortranarray(ring)
        ring_t = _ring_put(ring.T, slot * b.n + xp.arange(b.n), r)  # (p, n)
        s["ring"], s["slot"] = ring_t.T, _next_slot(xp, slot, p)
        # the count as a sum of bytes over the slots: no conversion of the (p, n) comparisons
        below = xp.less_equal(ring_t, r).view(xp.uint8).sum(axis=0, dtype=xp.uint8 if p < 256 else xp.int64)
        return (xp.divide(below, float(p), dtype=xp.float64),)


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
        q = xp.divide(w[:, -1], w[:, 0])
        return (xp.log(q, out=q),)


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
        return {"close": max(self.params["timeperiod"] + 1, self.params["lag"] + 2)}

    # The x side's sum, variance term and definedness, and the return leaving x's window, kept for
    # lag bars (a ring of lag slots per row, slot t % lag), where they are the y side's: y's window
    # is x's of lag bars before.
    _X = ("hsx", "hvx", "hok", "hro")

    def init(self, xp, n):
        lag = self.params["lag"]
        s = {k: xp.zeros(n) for k in ("sx", "cx", "sxx", "cxx", "sxy", "cxy")}
        s.update(ex=xp.zeros(n, dtype=xp.int32), r1=xp.full(n, NAN), lead=xp.full(n, NAN),
                 hsx=xp.zeros((n, lag)), hvx=xp.zeros((n, lag)), hok=xp.zeros((n, lag), dtype=bool),
                 hro=xp.full((n, lag), NAN))
        return s

    def step(self, xp, s, b):
        p, lag = self.params["timeperiod"], self.params["lag"]
        n = float(p)
        w = b.window("close", max(p + 1, lag + 2))  # .. close_{t-p} .. close_t
        r = _ret(xp, w[:, -1], w[:, -2])             # r_t
        lead = _ret(xp, w[:, -p], w[:, -p - 1])      # r_{t-p+1}
        r_prev, r_old = s["r1"], s["lead"]           # r_{t-1}; r_{t-p}, leaving
        s["r1"], s["lead"] = r, lead
        r_lag = r_prev if lag == 1 else _ret(xp, w[:, -1 - lag], w[:, -2 - lag])  # r_{t-lag}
        # y side = x side lag bars ago (its sum, variance term, definedness, and r_{t-p-lag}, the
        # return leaving y's window)
        if lag == 1:
            ys = [s[k][:, 0] for k in self._X]
        else:
            idx = xp.arange(b.n) * lag + b.t % lag
            ys = [s[k].reshape(-1)[idx] for k in self._X]
        sy, vy, oky, r_lag_old = ys
        # equal neighbouring returns in x's window (as _RetMoments): p - 1 of them is a constant side
        ex = s["ex"]
        ex += r == r_prev
        ex -= lead == r_old
        # Terms that reach back before the row's first bar (a NaN return: t < 1, t < p + 1, t < lag
        # + 1, t < p + lag + 1) are 0.0 (their negations -0.0); -(old * r_lag_old) is formed as
        # (-old) * r_lag_old, the same bits.
        warm = _warm(xp, r_lag_old)
        add, old = _zero_nan(xp, warm, r), _zero_nan(xp, warm, r_old)
        neg = -old
        add_xy = _zero_nan(xp, warm, add * r_lag, r_lag)
        neg_xy = _zero_nan(xp, warm, neg * r_lag_old, r_lag_old, -0.0)
        tmp = (xp.empty_like(r), xp.empty_like(r), xp.empty_like(r))
        _add_sub(xp, s["sx"], s["cx"], add, neg, *tmp)
        _add_sub(xp, s["sxx"], s["cxx"], add * add, neg * old, *tmp)
        _add_sub(xp, s["sxy"], s["cxy"], add_xy, neg_xy, *tmp)
        sx, vx, sxy = s["sx"] + s["cx"], s["sxx"] + s["cxx"], s["sxy"] + s["cxy"]
        u = tmp[0]
        vx -= xp.divide(xp.multiply(sx, sx, out=u), n, out=u)  # Sxx - Sx^2/n
        okx = ex < p - 1
        okx &= vx > 0
        for k, v in zip(self._X, (sx, vx, okx, r_old)):
            s[k] = v[:, None] if lag == 1 else _ring_put(s[k], idx, v)
        cov = xp.subtract(sxy, xp.divide(xp.multiply(sx, sy, out=u), n, out=u), out=sxy)  # Sxy - Sx*Sy/n
        den = xp.multiply(vx, vy, out=tmp[1])
        cov /= xp.sqrt(den, out=den)
        rho = xp.clip(cov, -1.0, 1.0, out=cov)
        bad = okx & oky
        xp.invert(bad, out=bad)
        return (_put_where(xp, bad, rho, NAN),)


# ------------------------------------------------------------------- against a reference


class _Paired(Kernel):
    """TA-Lib's two-input running sums, advanced only on bars with a finite ``ref_close``.

    State: ``c`` pairs seen (bars with a reference), the anchors ``kx``/``ky``, the sums of the
    anchored values, the squares of the last removed terms, TA-Lib's countdown to a rebuild, and
    a ring of the window's ``timeperiod`` (x, y) pairs (plus a scratch column that bars without a
    reference write to, so a write never needs to read first) with ``pos``, the column this bar's
    pair goes to (``(c + _POS) % timeperiod``, kept so as to need no integer division).

    The ring holds a pair as one complex number (x + iy: one access reads or writes both) and is
    column-major, so that a column of every row is one contiguous run: rows at the same place in
    their ring (rows that joined together and had the same bars) are read and written as runs.
    """

    family = "stats"
    inputs = ("close", "ref_close")
    _SUMS = ("sx", "sxx", "sy", "syy", "sxy")
    _POS = 0

    def __init__(self, timeperiod: int) -> None:
        super().__init__(timeperiod=timeperiod)

    def init(self, xp, n):
        p = self.params["timeperiod"]
        s = {k: xp.zeros(n) for k in self._SUMS}
        s.update(c=xp.zeros(n, dtype=xp.int64), cnt=xp.full(n, 32 * p, dtype=xp.int64),
                 kx=xp.zeros(n), ky=xp.zeros(n), tx2=xp.zeros(n), ty2=xp.zeros(n),
                 ring=xp.zeros((n, p + 1), dtype=xp.complex128, order="F"),
                 pos=xp.full(n, self._POS % p, dtype=xp.int64))
        return s

    def _phases(self, xp, ok, c, steady_from: int, main_from: int):
        """(live, main) masks: rows that advance (a finite reference), and those of them in
        TA-Lib's main loop (``c >= main_from``). Both are None, as is the first-pair mask the
        caller derives, when every row has a reference and ``c >= steady_from`` (NumPy only)."""
        if _host(xp) and c.shape[0] and bool(ok.all()) and int(c.min()) >= steady_from:
            return None, None
        return ok, ok & (c >= main_from)

    def _store(self, xp, s, b, write, live, x, y):
        """Writes ``x``/``y`` to the rings at ``pos`` for ``write`` rows (others: scratch column)
        and moves ``pos`` on for ``live`` rows (None: every row); returns the flat index of each
        row's position in a ring column and each row's column after ``pos`` (where the window's
        oldest value sits once this bar's is in)."""
        p = self.params["timeperiod"]
        ring = s["ring"]
        if not ring.flags.f_contiguous:  # the engine's copies (a step of some rows, a restore)
            ring = xp.asfortranarray(ring)
        rows = xp.arange(b.n)
        pos = s["pos"]
        pair = xp.empty(b.n, dtype=xp.complex128)
        pair.real[...] = x
        pair.imag[...] = y
        s["ring"] = _ring_put(ring.T, _sel(xp, write, pos, p) * b.n + rows, pair).T
        nxt = _next_slot(xp, pos, p)
        s["pos"] = _sel(xp, live, nxt, pos)
        return rows, nxt

    def _trailing(self, xp, s, rows, oldest, kx, ky, main):
        """The window's oldest values minus the anchors: the terms TA-Lib removes after this bar's
        output (zero outside the main phase)."""
        pair = s["ring"].T.reshape(-1)[oldest * rows.shape[0] + rows]
        tx, ty = pair.real - kx, pair.imag - ky
        return _sel(xp, main, tx, 0.0), _sel(xp, main, ty, 0.0)

    def _finish(self, xp, s, upd, main, sums, tx, ty, cnt, kx, ky):
        """Removes the trailing terms and stores the sums of the ``upd`` rows (those that fed a
        value to the sums; None: every row)."""
        sx, sxx, sy, syy, sxy = sums
        tx2, ty2 = tx * tx, ty * ty
        sx -= tx
        sxx -= tx2
        sy -= ty
        syy -= ty2
        sxy -= xp.multiply(tx, ty, out=tx)
        for k, v in zip(self._SUMS, sums):
            s[k] = _sel(xp, upd, v, s[k])
        s["tx2"] = _sel(xp, upd, tx2, s["tx2"])
        s["ty2"] = _sel(xp, upd, ty2, s["ty2"])
        s["cnt"] = _sel(xp, main, cnt, s["cnt"])
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
    # Return m (pair m >= 1) goes to ring column (m - 1) % p: pos = (c - 1) % p, and the oldest of
    # the window then sits in column c % p.
    _POS = -1

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
        live, main = self._phases(xp, ok, c, max(p, 2), p)
        px, py = s["px"], s["py"]
        rx = xp.subtract(x, px)
        rx /= px
        rx = _put_where(xp, px == 0, rx, 0.0)
        ry = xp.subtract(y, py)
        ry /= py
        ry = _put_where(xp, py == 0, ry, 0.0)
        if live is None:
            px[...] = x
            py[...] = y
        else:
            s["px"], s["py"] = xp.where(ok, x, px), xp.where(ok, y, py)
        has_ret = None if live is None else ok & (c >= 1)
        rows, oldest = self._store(xp, s, b, has_ret, live, rx, ry)
        if live is None:
            kx, ky = s["kx"], s["ky"]
        else:
            first = ok & (c == 1)
            kx, ky = xp.where(first, rx, s["kx"]), xp.where(first, ry, s["ky"])
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
        need = 1e-6 * nsxx > den
        need |= s["tx2"] > 1000.0 * sxx
        need |= s["ty2"] > 1000.0 * syy
        need |= cnt == 0
        if main is not None:
            need &= main
        kx, ky, sx, sxx, sy, syy, sxy, nsxx, den = _on_rows(
            xp, need, lambda idx: self._rebuild(xp, _rows(s["ring"], idx), _rows(oldest, idx)),
            [kx, ky, sx, sxx, sy, syy, sxy, nsxx, den])
        cnt = _put_where(xp, need, cnt, 32 * p)
        tx, ty = self._trailing(xp, s, rows, oldest, kx, ky, main)
        out = xp.multiply(sxy, n)
        out -= xp.multiply(sx, sy, out=dx)
        out /= den
        out = _put_where(xp, ~(den > 1e-14 * nsxx), out, 0.0)
        self._finish(xp, s, has_ret, main, (sx, sxx, sy, syy, sxy), tx, ty, cnt, kx, ky)
        if live is None:
            c += 1
        else:
            s["c"] = c + ok
        return (_sel(xp, main, out, NAN),)

    def _rebuild(self, xp, ring, oldest):
        """TA-Lib's rebuild of the sums from the window's ``p`` returns (rows given)."""
        p = self.params["timeperiod"]
        n = float(p)
        wx, wy = _ordered(xp, ring.real, oldest, p), _ordered(xp, ring.imag, oldest, p)
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
    # Pair m goes to ring column m % p (pos = c % p); the window's oldest then sits in column
    # (m + 1) % p.

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
        live, main = self._phases(xp, ok, c, max(p - 1, 1), p - 1)
        rows, oldest = self._store(xp, s, b, live, live, x, y)
        if live is None:
            kx, ky = s["kx"], s["ky"]
        else:
            first = ok & (c == 0)
            kx, ky = xp.where(first, x, s["kx"]), xp.where(first, y, s["ky"])
        dx, dy = x - kx, y - ky
        sx = s["sx"] + dx
        sxx = s["sxx"] + dx * dx
        sy = s["sy"] + dy
        syy = s["syy"] + dy * dy
        sxy = dx * dy + s["sxy"]
        # TA-Lib's tests, in its order; any of them rebuilds every sum from the window.
        varx = xp.multiply(sx, sx, out=dx)
        varx *= inv_n
        xp.subtract(sxx, varx, out=varx)   # Sxx - Sx^2 / n
        vary = xp.multiply(sy, sy, out=dy)
        vary *= inv_n
        xp.subtract(syy, vary, out=vary)
        cnt = s["cnt"] - 1
        need = 1e-6 * sxx > varx
        need |= 1e-6 * syy > vary
        need |= s["tx2"] > 1e6 * sxx
        need |= s["ty2"] > 1e6 * syy
        need |= cnt == 0
        if main is not None:
            need &= main
        cov = xp.multiply(sx, sy)
        cov *= inv_n
        xp.subtract(sxy, cov, out=cov)
        kx, ky, sx, sxx, sy, syy, sxy, varx, vary, cov = _on_rows(
            xp, need, lambda idx: self._rebuild(xp, _rows(s["ring"], idx), _rows(oldest, idx)),
            [kx, ky, sx, sxx, sy, syy, sxy, varx, vary, cov])
        cnt = _put_where(xp, need, cnt, 32 * p)
        tx, ty = self._trailing(xp, s, rows, oldest, kx, ky, main)
        # r = cov / sqrt(varx * vary) where both variance sums are above TA-Lib's zero test, else 0
        # (the other rows' quotient, whatever it is, is replaced)
        defined = varx > 1e-14 * sxx
        defined &= vary > 1e-14 * syy
        prod = varx * vary
        defined &= prod > 0
        cov /= xp.sqrt(prod, out=prod)
        out = xp.clip(cov, -1.0, 1.0, out=cov)
        xp.invert(defined, out=defined)
        out = _put_where(xp, defined, out, 0.0)
        self._finish(xp, s, live, main, (sx, sxx, sy, syy, sxy), tx, ty, cnt, kx, ky)
        if live is None:
            c += 1
        else:
            s["c"] = c + ok
        return (_sel(xp, main, out, NAN),)

    def _rebuild(self, xp, ring, oldest):
        """TA-Lib's rebuild of the sums from the window's ``p`` values (rows given)."""
        p = self.params["timeperiod"]
        inv_n = 1.0 / float(p)
        wx, wy = _ordered(xp, ring.real, oldest, p), _ordered(xp, ring.imag, oldest, p)
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
