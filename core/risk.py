"""Risk rules for the decision engine: stops, risk-reward, Kelly sizing, limits and vetoes.

Pure functions over NumPy arrays, one row per symbol, so one call sizes every signal of a bar
close (10k symbols) without a Python loop over symbols. Actions are int8 codes: ``+1`` BUY,
``-1`` SELL, ``0`` HOLD. Prices and notionals are in the quote currency of the paper account;
fractions are of current equity.

Sizing rules (:func:`size`), applied in this order:

1. **Inputs.** ``b = risk_reward(price, stop, take_profit)`` (the reward of a take-profit hit in
   units of the loss of a stop hit) and ``p_win``, the probability that the price reaches the
   take-profit before the stop (:func:`p_take_profit_first`, model below). ``confidence_pct / 100``
   is the chance that the *next bar* moves the signal's way; it sets the drift of that model, it is
   not ``p_win``.
2. **Kelly.** ``fraction = kelly_fraction * kelly(p_win, b)``, capped by
   ``max_position_fraction`` and by ``max_risk_fraction / (|price - stop| / price)``, the
   largest position whose stop-out loses at most ``max_risk_fraction`` of equity.
3. **Drawdown downsizing.** ``fraction *= drawdown_factor(drawdown)``: 1 up to
   ``downsize_drawdown``, falling linearly to 0 at ``max_drawdown``.
4. **Vetoes** set the fraction to 0. A row gets the first that applies, in this order (also the
   order of the :class:`Veto` codes): ``hold`` (action 0); ``invalid_input`` (confidence outside
   0..100, or a price, stop, take-profit or position that is not finite, a price <= 0, a stop on
   the wrong side of the price or a take-profit behind it: e.g. ATR not warmed up);
   ``low_confidence`` (confidence < ``min_confidence``); ``low_risk_reward`` (``b <
   min_risk_reward``); ``non_positive_kelly`` (no edge); ``max_drawdown`` (drawdown >=
   ``max_drawdown``, or equity <= 0); ``daily_loss`` (daily loss >= ``daily_loss_limit``).
5. **Per-symbol limit.** ``|position + order|`` may not exceed ``max_position_fraction *
   equity``: the order is cut to the room left, and vetoed (``position_limit``) when none is left.
6. **Total exposure limit.** Gross exposure after the orders may not exceed
   ``max_exposure_fraction * equity``. The room left is shared by the rows of one call: rows are
   served by expected value, best first (ties in row order), each cut to what is left, and vetoed
   (``exposure_limit``) when nothing is left. The part of an order that only reduces or flips an
   opposite position to at most its current size adds no gross exposure and always passes.

**The take-profit-first model** (why ``p_win`` is not the confidence). Let ``X_t = direction *
(P_t - price)`` be the price move in the signal's favour after entry, ``t`` in bars, with the
take-profit at ``X = a = |take_profit - price|`` and the stop at ``X = -c``, ``c = |price - stop|``
(so ``b = a / c``). ``X`` is Brownian motion with drift ``mu`` and volatility ``sigma`` per bar,
in price units, over the life of the trade:

- ``sigma``: ``bar_std`` per row, the largest of the 1-bar std estimates the signal has
  (`bar_std`): the forecast's 1-bar ``STD`` and the realized ``ret_std_20`` (log returns, times the
  price), and ``sqrt(pi/8) * ATR``: a bar of Brownian motion that opens at the previous close has a
  true range equal to its high - low, whose mean is ``sqrt(8/pi) * sigma`` (Feller's expected
  range), and ATR is the mean true range. Each estimate fails low somewhere, and a ``sigma`` too
  small overstates the edge while one too large pulls ``p_win`` towards no edge, so the largest.
  Without ``bar_std``, ``sqrt(pi/8) * ATR`` with the ATR the stops were set from.
- ``mu``: from the signal's own direction probability ``p = confidence_pct / 100`` (calibrated
  when a calibration is loaded). Under the model the next bar moves the signal's way with
  probability ``P(X_1 > 0) = Phi(mu / sigma)``, so ``mu = sigma * Phi^-1(p)``: the signal and its
  sizing read the same number. ``p = 0.5`` is no drift.

Then (derivation in :func:`p_take_profit_first`) with ``nu = 2 mu / sigma**2 = 2 Phi^-1(p) /
sigma``::

    p_win = (1 - exp(nu c)) / (exp(-nu a) - exp(nu c)),   -> c / (a + c) as mu -> 0.

Only the distances in units of ``sigma`` matter (``nu a = 2 Phi^-1(p) a / sigma``). With ATR-based
``sigma`` and stops at 2x/3x ATR they are fixed (``a / sigma = 4.79``, ``c / sigma = 3.19``), so
``p_win`` depends on ``p`` alone: 0.47 -> 0.265, 0.50 -> 0.400, 0.52 -> 0.497, 0.55 -> 0.637,
0.60 -> 0.816.

- **No edge, no position.** At ``p = 0.5`` (no drift) ``p_win = c / (a + c) = 1 / (1 + b)``, so
  Kelly ``p_win - (1 - p_win) / b = 0`` exactly: ``non_positive_kelly``. Any ``p < 0.5`` gives a
  negative Kelly. That holds for every ``b`` and every ``sigma``: with no drift ``X`` is a
  martingale and optional stopping gives ``p_win * a = (1 - p_win) * c`` whatever the path.
- **Price, not log price.** In log coordinates "no drift" is not "no edge": a log price without
  drift has a price drift of ``+sigma**2 / 2``, which would give a p = 0.5 long a positive Kelly of
  about ``ATR / price`` (and the short a negative one). Over the few ATRs to a level the two models
  differ by that order only, and the price model keeps longs and shorts symmetric.
- **An edge is amplified.** The model lets the one-bar drift persist until a level is hit (about
  ``a c / sigma**2``, 15 bars, at no drift). A small per-bar edge then decides most trades: 0.55
  becomes 0.637. An overstated confidence is overstated more in ``p_win``, so sizes are only as good
  as the calibration (uncalibrated confidence is at least 57.5 %, which this model reads as a
  ``p_win`` of 0.74 or more with ATR-based ``sigma``: the caps then decide the size, as they did
  before).

A row is ``downsized`` when step 3, 5 or 6 made it smaller without vetoing it. Sizing one row at a
time in that priority order, each call seeing the exposure the previous rows added, gives the
same result as one vectorized call.

Vetoes only block *new* risk: closing or cutting a position after a veto is left to the caller.

Thresholds compare with a tolerance (``_REL_TOL`` relative for risk-reward, ``_ABS_TOL`` absolute
for Kelly, drawdown and daily loss) so that rounding cannot flip a rule: with ATR multiples 2 and
3, ``(price + 3*atr - price) / (price - (price - 2*atr))`` comes out below 1.5 for about a third of
prices, a 20% loss computed as ``1 - 80_000/100_000`` is 0.19999999999999996, and Kelly at
``p = 0.4, b = 1.5`` is 5.6e-17 rather than 0; each must land on the rule's side of its threshold.
Account values that are NaN veto everything (fail safe).

Example:
    >>> s = RiskSettings()
    >>> act = np.array([1, -1, 0], np.int8)
    >>> px = np.array([100.0, 50.0, 10.0])
    >>> stop, tp = stops(act, px, np.array([1.0, 0.5, 0.1]), s)
    >>> z = size(act, np.array([60.0, 60.0, 90.0]), px, stop, tp, equity=100_000.0, drawdown=0.0,
    ...          daily_loss=0.0, exposure=0.0, position_notional=np.zeros(3), settings=s)
    >>> z.notional.tolist(), [Veto(v).name for v in z.veto]
    ([10000.0, -10000.0, 0.0], ['NONE', 'NONE', 'HOLD'])
"""

from __future__ import annotations

import enum
from typing import Annotated, NamedTuple

import msgspec
import numpy as np

from core.errors import ValidationError

__all__ = [
    "RiskSettings",
    "Veto",
    "VETO_NAMES",
    "Sizing",
    "stops",
    "risk_reward",
    "ATR_TO_STD",
    "bar_std",
    "p_take_profit_first",
    "kelly",
    "expected_value",
    "drawdown_factor",
    "size",
]

# Rounding guards, see the module docstring.
_REL_TOL = 1e-9
_ABS_TOL = 1e-12
# Orders and rooms below this fraction of equity are nothing (float dust from subtractions).
_DUST_FRACTION = 1e-9
#: One bar's std of the price change per unit of ATR: sqrt(pi/8) (see the module docstring).
ATR_TO_STD = float(np.sqrt(np.pi / 8.0))
# Below this |nu * (a + c)| p_take_profit_first uses its first-order series (error < 1e-19).
_SMALL_NU = 1e-9


class RiskSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Risk rules of the paper account, applied by :func:`size`.

    Fractions are of current equity unless a field says otherwise. ``downsize_drawdown`` must not
    exceed ``max_drawdown``.
    """

    equity_start: Annotated[float, msgspec.Meta(
        gt=0, description="Equity of the paper account at start, in its quote currency.")] = 100_000.0
    max_position_fraction: Annotated[float, msgspec.Meta(
        gt=0, description="Largest |position| per symbol, as a fraction of equity.")] = 0.10
    max_exposure_fraction: Annotated[float, msgspec.Meta(
        gt=0, description="Largest gross exposure (sum of |position|) of the account, as a fraction of equity.")] = 0.50
    max_drawdown: Annotated[float, msgspec.Meta(
        gt=0, le=1, description="Drawdown from peak equity at or beyond which no new risk is taken.")] = 0.20
    downsize_drawdown: Annotated[float, msgspec.Meta(
        ge=0, le=1, description="Drawdown from which sizes shrink linearly, from 1x here to 0 at max_drawdown.")] = 0.10
    daily_loss_limit: Annotated[float, msgspec.Meta(
        gt=0, le=1, description="Loss since the start of the UTC day, as a fraction of start-of-day equity, "
                                "at or beyond which no new risk is taken.")] = 0.05
    stop_atr: Annotated[float, msgspec.Meta(
        gt=0, description="Stop-loss distance from the entry price, in ATRs.")] = 2.0
    take_profit_atr: Annotated[float, msgspec.Meta(
        gt=0, description="Take-profit distance from the entry price, in ATRs.")] = 3.0
    min_risk_reward: Annotated[float, msgspec.Meta(
        ge=0, description="Smallest reward/risk ratio (take-profit distance / stop distance) traded.")] = 1.5
    kelly_fraction: Annotated[float, msgspec.Meta(
        gt=0, le=1, description="Multiplier of the full Kelly fraction (0.5 = half Kelly).")] = 0.5
    min_confidence: Annotated[float, msgspec.Meta(
        ge=0, le=100, description="Smallest signal confidence traded, in percent (user filter).")] = 0.0
    max_risk_fraction: Annotated[float, msgspec.Meta(
        gt=0, le=1,
        description="Largest loss per trade if its stop is hit, as a fraction of equity (user filter).")] = 0.02
    exits: Annotated[bool, msgspec.Meta(
        description="Close a paper position at the first bar close beyond its stop-loss or take-profit.")] = True

    def __post_init__(self) -> None:
        if self.downsize_drawdown > self.max_drawdown:
            raise ValueError(f"downsize_drawdown ({self.downsize_drawdown}) must not exceed "
                             f"max_drawdown ({self.max_drawdown})")


class Veto(enum.IntEnum):
    """Why a row was not sized; codes in precedence order (a row shows the first that applies)."""

    NONE = 0
    HOLD = 1
    INVALID_INPUT = 2
    LOW_CONFIDENCE = 3
    LOW_RISK_REWARD = 4
    NON_POSITIVE_KELLY = 5
    MAX_DRAWDOWN = 6
    DAILY_LOSS = 7
    POSITION_LIMIT = 8
    EXPOSURE_LIMIT = 9


#: Lower-case veto names indexed by code, e.g. ``np.array(VETO_NAMES)[sizing.veto]``.
VETO_NAMES: tuple[str, ...] = tuple(v.name.lower() for v in Veto)


class Sizing(NamedTuple):
    """The sizing of each row, arrays of the rows' shape.

    Attributes:
        fraction: size of the order as a fraction of equity, >= 0 (0 when vetoed).
        notional: signed order value in the quote currency (+ buys, - sells).
        qty: signed order quantity in base units (``notional / price``).
        kelly: the full Kelly fraction ``kelly(p_win, b)`` before scaling and caps, ``p_win``
            from `p_take_profit_first` (NaN when undefined).
        risk_reward: ``b``, the take-profit distance over the stop distance (NaN when undefined).
        expected_value: ``p_win * b - (1 - p_win)``, per unit risked (NaN when undefined).
        veto: :class:`Veto` codes, uint8.
        downsized: bool, True where drawdown or a limit made a non-vetoed order smaller.
    """

    fraction: np.ndarray
    notional: np.ndarray
    qty: np.ndarray
    kelly: np.ndarray
    risk_reward: np.ndarray
    expected_value: np.ndarray
    veto: np.ndarray
    downsized: np.ndarray


def stops(action, price, atr, settings: RiskSettings) -> tuple[np.ndarray, np.ndarray]:
    """Volatility-scaled stop-loss and take-profit prices.

    BUY: ``stop = price - stop_atr * atr``, ``take_profit = price + take_profit_atr * atr``;
    SELL mirrored. HOLD, an ATR that is not finite or <= 0, or a price that is not finite or <= 0
    give NaN for both.

    Args:
        action: int8 codes (+1 BUY, -1 SELL, 0 HOLD).
        price: entry prices (e.g. bar close).
        atr: average true range per row, in price units.
        settings: the ATR multiples.

    Returns:
        ``(stop, take_profit)`` float64 arrays of the broadcast shape.
    """
    action, price, atr = np.broadcast_arrays(np.asarray(action), np.asarray(price, np.float64),
                                             np.asarray(atr, np.float64))
    direction = action.astype(np.float64)
    valid = ((action == 1) | (action == -1)) & np.isfinite(atr) & (atr > 0) & np.isfinite(price) & (price > 0)
    stop = np.where(valid, price - direction * (settings.stop_atr * atr), np.nan)
    take_profit = np.where(valid, price + direction * (settings.take_profit_atr * atr), np.nan)
    return stop, take_profit


def risk_reward(price, stop, take_profit) -> np.ndarray:
    """Reward per unit of risk: ``|take_profit - price| / |price - stop|``.

    Works for both directions. NaN where an input is not finite, the stop equals the price, or the
    stop and the take-profit are on the same side of the price.
    """
    price = np.asarray(price, np.float64)
    risk = price - np.asarray(stop, np.float64)
    reward = np.asarray(take_profit, np.float64) - price
    with np.errstate(divide="ignore", invalid="ignore"):
        rr = np.abs(reward) / np.abs(risk)
    # A long has its stop below and target above (risk > 0, reward >= 0); a short the mirror.
    ok = np.isfinite(rr) & (risk != 0) & (risk * reward >= 0)
    return np.where(ok, rr, np.nan)


def bar_std(price, atr, *log_return_stds) -> np.ndarray:
    """One bar's standard deviation of the price change, in price units, per row: the largest of
    the estimates a row has.

    The estimates: ``ATR_TO_STD * atr`` (a Brownian bar's mean range is ``sqrt(8/pi)`` stds, and
    ATR is the mean true range), and ``price * s`` for each std ``s`` of the 1-bar return given
    (the forecast's ``STD`` at 1 bar, the realized ``ret_std_20``). One that is NaN, infinite or
    <= 0 is left out; NaN where none is usable.

    Why the largest: each estimate fails low somewhere (the forecast model's STD is an eighth of the
    realized std on GOOG daily bars, out of its training distribution; ATR is a third of it on the
    Kraken 1m bars, a third of which do not move), and a sigma that is too small overstates
    whatever edge the signal claims (`p_take_profit_first` depends on distances in sigmas), while
    one too large only pulls ``p_win`` towards no edge. On the four bar files of docs/SIGNALS.md the
    largest was the closest to the realized next-bar std of all the choices (docs/SIGNALS.md,
    "Kelly").

    Args:
        price: entry price per row.
        atr: average true range per row, price units.
        *log_return_stds: per-row stds of the 1-bar return (log or simple: equal to first order).
    """
    price = np.asarray(price, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        estimates = [ATR_TO_STD * np.asarray(atr, np.float64)]
        estimates += [price * np.asarray(x, np.float64) for x in log_return_stds]
        usable = [np.where(np.isfinite(e) & (e > 0), e, np.nan) for e in np.broadcast_arrays(price, *estimates)[1:]]
    if len(usable) == 1:
        return usable[0].copy()
    stacked = np.stack(usable)
    with np.errstate(invalid="ignore"):
        best = np.max(np.where(np.isnan(stacked), -np.inf, stacked), axis=0)
    return np.where(np.isfinite(best), best, np.nan)


def p_take_profit_first(reward, risk, drift, vol) -> np.ndarray:
    """Probability that Brownian motion with ``drift`` and ``vol`` per unit time, started at 0,
    reaches ``+reward`` before ``-risk``: ``(1 - exp(nu*risk)) / (exp(-nu*reward) - exp(nu*risk))``
    with ``nu = 2 * drift / vol**2``, and ``risk / (reward + risk)`` without drift.

    Derivation: for ``X_t = drift*t + vol*W_t``, ``E exp(theta X_t) = exp(t (theta drift +
    theta**2 vol**2 / 2))``, whose exponent is 0 at ``theta = -nu``; so ``M_t = exp(-nu X_t)`` is a
    martingale. The exit time ``T`` from ``(-risk, reward)`` is finite (vol > 0) and ``M`` is
    bounded before it, so optional stopping gives ``1 = E M_T = P exp(-nu reward) + (1 - P)
    exp(nu risk)``, which is the formula. Sign check: ``drift > 0`` makes ``nu > 0`` and ``P`` larger
    than the driftless ``risk / (reward + risk)`` (there ``X`` itself is the martingale: ``P reward
    - (1 - P) risk = 0``).

    Computed without cancellation or overflow: multiplying through by ``exp(-nu risk)`` gives
    ``P = expm1(-nu risk) / expm1(-nu (reward + risk))`` (used for ``nu > 0``) ``= exp(nu reward)
    expm1(nu risk) / expm1(nu (reward + risk))`` (``nu < 0``): the arguments of ``exp`` are <= 0,
    and ``expm1`` keeps full precision near 0. Where ``|nu (reward + risk)| < 1e-9`` (``nu = 0``
    included) the first-order series ``risk / (reward + risk) * (1 + nu reward / 2)`` is used.

    Args:
        reward: distance to the upper level (take-profit), >= 0.
        risk: distance to the lower level (stop), > 0, in the units of ``reward``.
        drift: drift per unit time, in those units (+inf and -inf allowed: P is 1 and 0).
        vol: volatility per unit time, > 0, in those units.

    Returns:
        float64 array of the broadcast shape; NaN where an input is NaN, ``reward < 0``,
        ``risk <= 0``, ``vol`` is not finite and > 0, or ``reward`` and ``risk`` are infinite.
    """
    reward, risk, drift, vol = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (reward, risk, drift, vol)))
    span = reward + risk
    ok = (reward >= 0) & (risk > 0) & np.isfinite(span) & (vol > 0) & np.isfinite(vol) & ~np.isnan(drift)
    with np.errstate(all="ignore"):
        nu = 2.0 * drift / (vol * vol)
        x = nu * span
        up = np.expm1(-nu * risk) / np.expm1(-x)  # nu > 0 (an infinite nu gives -1 / -1 = 1)
        down = np.exp(nu * reward) * np.expm1(nu * risk) / np.expm1(x)  # nu < 0
        # nu = 0 included; for reward = 0 (already at the target) the series is exactly 1.
        small = risk / span * (1.0 + 0.5 * nu * reward)
        p = np.where(np.abs(x) < _SMALL_NU, small, np.where(nu > 0, up, down))
        # An infinite nu times a zero reward is NaN in `down`: at the target already, P = 1.
        p = np.where(reward == 0, 1.0, p)
    return np.where(ok, np.clip(p, 0.0, 1.0), np.nan)


def _horner(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        out = out * x + c
    return out


# Wichura's AS241 (PPND16), the algorithm of statistics.NormalDist.inv_cdf; highest power first.
_PPF_CENTRAL = ((2.5090809287301226727e+3, 3.3430575583588128105e+4, 6.7265770927008700853e+4,
                 4.5921953931549871457e+4, 1.3731693765509461125e+4, 1.9715909503065514427e+3,
                 1.3314166789178437745e+2, 3.3871328727963666080e+0),
                (5.2264952788528545610e+3, 2.8729085735721942674e+4, 3.9307895800092710610e+4,
                 2.1213794301586595867e+4, 5.3941960214247511077e+3, 6.8718700749205790830e+2,
                 4.2313330701600911252e+1, 1.0))
_PPF_NEAR = ((7.7454501427834140764e-4, 2.2723844989269184583e-2, 2.4178072517745061177e-1,
              1.2704582524523683826e+0, 3.6478483247632046050e+0, 5.7694972214606914055e+0,
              4.6303378461565452959e+0, 1.4234371107496835773e+0),
             (1.0507500716444168432e-9, 5.4759380849953449460e-4, 1.5198666563616457197e-2,
              1.4810397642748007459e-1, 6.8976733498510000455e-1, 1.6763848301838038494e+0,
              2.0531916266377588219e+0, 1.0))
_PPF_FAR = ((2.0103343992922881326e-7, 2.7115555687434875782e-5, 1.2426609473880784386e-3,
             2.6532189526576123093e-2, 2.9656057182850489123e-1, 1.7848265399172913358e+0,
             5.4637849111641143699e+0, 6.6579046435011037772e+0),
            (2.0442631033899397856e-15, 1.4215117583164458887e-7, 1.8463183175100546818e-5,
             7.8686913114561325910e-4, 1.4875361290850614852e-2, 1.3692988092273580531e-1,
             5.9983220655588793769e-1, 1.0))


def _normal_ppf(p) -> np.ndarray:
    """Phi^-1(p), the standard normal quantile, vectorized (Wichura's AS241, about 1e-16
    relative): -inf at 0, +inf at 1, NaN outside [0, 1]."""
    p = np.asarray(p, np.float64)
    q = p - 0.5
    with np.errstate(all="ignore"):
        r = 0.180625 - q * q
        central = q * _horner(_PPF_CENTRAL[0], r) / _horner(_PPF_CENTRAL[1], r)
        t = np.sqrt(-np.log(np.where(q <= 0, p, 1.0 - p)))
        near = _horner(_PPF_NEAR[0], t - 1.6) / _horner(_PPF_NEAR[1], t - 1.6)
        far = _horner(_PPF_FAR[0], t - 5.0) / _horner(_PPF_FAR[1], t - 5.0)
        tail = np.copysign(np.where(t <= 5.0, near, far), q)
    out = np.where(np.abs(q) <= 0.425, central, tail)
    out = np.where(p == 0, -np.inf, np.where(p == 1, np.inf, out))
    return np.where((p >= 0) & (p <= 1), out, np.nan)


def kelly(p_win, b) -> np.ndarray:
    """The full Kelly fraction ``p - (1 - p) / b`` for a win of ``b`` units against a loss of 1.

    Negative when the bet has no edge; -inf for ``b = 0`` (with ``p < 1``); NaN propagates.
    """
    p_win = np.asarray(p_win, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return p_win - (1.0 - p_win) / np.asarray(b, np.float64)


def expected_value(p_win, b) -> np.ndarray:
    """Expected profit per unit risked, ``p * b - (1 - p)``."""
    p_win = np.asarray(p_win, np.float64)
    return p_win * np.asarray(b, np.float64) - (1.0 - p_win)


def drawdown_factor(drawdown: float, settings: RiskSettings) -> float:
    """Size multiplier for the current drawdown: 1 up to ``downsize_drawdown``, linear to 0 at
    ``max_drawdown``, 0 beyond (and for NaN)."""
    drawdown = float(drawdown)
    if not drawdown < settings.max_drawdown - _ABS_TOL:  # NaN lands here too
        return 0.0
    if drawdown <= settings.downsize_drawdown:
        return 1.0
    return (settings.max_drawdown - drawdown) / (settings.max_drawdown - settings.downsize_drawdown)


def size(action, confidence_pct, price, stop, take_profit, equity: float, drawdown: float,
         daily_loss: float, exposure: float, position_notional, settings: RiskSettings, *,
         bar_std=None) -> Sizing:
    """Sizes the orders of one bar close, one row per symbol (rules in the module docstring).

    Args:
        action: int8 codes (+1 BUY, -1 SELL, 0 HOLD); its shape (1-D or scalar) is the rows'.
        confidence_pct: signal confidence per row, 0..100.
        price: entry price per row.
        stop: stop-loss price per row (see :func:`stops`).
        take_profit: take-profit price per row.
        equity: current equity of the account, quote currency (one value for the call).
        drawdown: current drawdown from peak equity, fraction (one value).
        daily_loss: loss since the start of the UTC day, fraction of start-of-day equity (one value).
        exposure: current gross exposure (sum of |position notional|), quote currency (one value).
        position_notional: current signed position value per row, quote currency.
        settings: the risk rules.
        bar_std: one bar's std of the price change per row, price units (`bar_std`), the
            ``sigma`` of the take-profit-first model. None, or NaN or <= 0 in a row: ``ATR_TO_STD
            * |price - stop| / settings.stop_atr``, from the ATR the stops were set from (`stops`).
            Only distances in units of it matter, so its scale must be the price's.

    Returns:
        The :class:`Sizing` of every row, 1-D.

    Raises:
        ValidationError: an action code is not -1, 0 or 1, or a per-row input does not broadcast
            to the actions' shape.
    """
    action = np.atleast_1d(np.asarray(action))
    if action.ndim != 1:
        raise ValidationError(f"actions must be one row per symbol, got shape {action.shape}")
    if action.size and (action.min() < -1 or action.max() > 1):
        raise ValidationError("action codes must be -1 (SELL), 0 (HOLD) or 1 (BUY)")
    try:
        conf, px, stop, tp, pos, sigma = (np.broadcast_to(np.asarray(a, np.float64), action.shape)
                                          for a in (confidence_pct, price, stop, take_profit, position_notional,
                                                    np.nan if bar_std is None else bar_std))
    except ValueError as exc:
        raise ValidationError(f"per-row inputs do not match {action.shape[0]} actions: {exc}") from None
    equity, drawdown, daily_loss, exposure = float(equity), float(drawdown), float(daily_loss), float(exposure)
    s = settings
    direction = action.astype(np.float64)

    # 1-2. Edge and Kelly size, per row: p_win from the take-profit-first model.
    rr = risk_reward(px, stop, tp)
    with np.errstate(invalid="ignore"):
        loss_distance = np.abs(px - stop)
        sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, ATR_TO_STD * loss_distance / s.stop_atr)
        p_win = p_take_profit_first(np.abs(tp - px), loss_distance, sigma * _normal_ppf(conf / 100.0), sigma)
    k = kelly(p_win, rr)
    ev = expected_value(p_win, rr)
    with np.errstate(divide="ignore", invalid="ignore"):
        stop_distance = loss_distance / px  # fraction of the price lost at the stop
        fraction = np.minimum(np.minimum(s.kelly_fraction * k, s.max_position_fraction),
                              s.max_risk_fraction / stop_distance)

    # 3. Drawdown downsizing (account-wide).
    dd_factor = drawdown_factor(drawdown, s)

    # 4. Vetoes, first match wins.
    valid = (np.isfinite(conf) & (conf >= 0) & (conf <= 100) & np.isfinite(px) & (px > 0)
             & np.isfinite(stop) & np.isfinite(tp) & np.isfinite(pos)
             & (direction * (px - stop) > 0) & (direction * (tp - px) >= 0))
    halted_dd = not (drawdown < s.max_drawdown - _ABS_TOL and equity > 0)  # NaN halts
    halted_day = not daily_loss < s.daily_loss_limit - _ABS_TOL
    with np.errstate(invalid="ignore"):
        veto = np.select(
            [action == 0, ~valid, conf < s.min_confidence, ~(rr >= s.min_risk_reward * (1 - _REL_TOL)),
             ~(k > _ABS_TOL), np.full(action.shape, halted_dd), np.full(action.shape, halted_day)],
            [Veto.HOLD, Veto.INVALID_INPUT, Veto.LOW_CONFIDENCE, Veto.LOW_RISK_REWARD,
             Veto.NON_POSITIVE_KELLY, Veto.MAX_DRAWDOWN, Veto.DAILY_LOSS],
            Veto.NONE).astype(np.uint8)
    active = veto == Veto.NONE
    # Vetoed rows may hold NaN sizes; everything below works on zeros there.
    want = np.where(active, fraction * dd_factor * equity, 0.0)  # order value, quote currency
    downsized = active & (dd_factor < 1.0)
    dust = _DUST_FRACTION * equity if equity > 0 else 0.0

    # 5. Per-symbol limit on |position + order|; `held` is the position in the order's direction.
    held = np.where(active, direction * pos, 0.0)
    room = s.max_position_fraction * equity - held
    pos_veto = active & (room <= dust)
    order = np.where(pos_veto, 0.0, np.minimum(want, room))
    downsized |= active & ~pos_veto & (order < want)
    veto[pos_veto] = Veto.POSITION_LIMIT
    active &= ~pos_veto

    # 6. Total gross exposure, shared by the rows in expected-value order.
    free = np.abs(held) - held  # order value that only reduces/flips an opposite position
    added = np.maximum(order - free, 0.0)  # gross exposure this order would add
    left = s.max_exposure_fraction * equity - exposure
    left = left if left > 0 else 0.0  # NaN exposure leaves no room
    priority = np.argsort(np.where(active, -ev, np.inf), kind="stable")
    added_sorted = added[priority]
    before = np.concatenate(([0.0], np.cumsum(added_sorted)[:-1]))
    granted = np.empty_like(added)
    granted[priority] = np.clip(left - before, 0.0, added_sorted)
    granted = np.where(granted <= dust, 0.0, granted)
    capped = order - (added - granted)
    exp_veto = active & (added > 0) & (capped <= dust)
    order = np.where(exp_veto, 0.0, capped)
    downsized |= active & ~exp_veto & (granted < added)
    veto[exp_veto] = Veto.EXPOSURE_LIMIT
    active &= ~exp_veto
    downsized &= active  # a row vetoed by a limit is not "downsized"

    notional = direction * order + 0.0  # + 0.0 turns the -0.0 of empty SELLs into 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        qty = np.where(active, notional / px, 0.0)
        out_fraction = order / equity if equity > 0 else np.zeros_like(order)
    return Sizing(out_fraction, notional, qty, k, rr, ev, veto, downsized)
