"""The decision engine: named rules over features and the models' outputs, combined by weighted
voting whose weights follow each source's realized accuracy.

Every step takes one bar close for many symbols at once (rows of NumPy arrays); nothing loops
over symbols. Each *source* votes a score in [-1, 1] per row (+1 strongly up, -1 strongly down,
0 no view; NaN when its inputs are missing, which leaves it out of that row's vote):

- ``trend``: the sign of EMA(12) − EMA(26), gated by trend strength: × clip((ADX(14) − 20) / 20, 0, 1).
- ``momentum``: clip((RSI(14) − 50) / 20, −1, 1).
- ``mean_reversion``: outside the Bollinger bands (20, 2): %b = (price − lower) / (upper − lower);
  below the lower band +clip(−4 %b, 0, 1), above the upper −clip(4 (%b − 1), 0, 1), else 0.
- ``breakout``: +1 at a new 20-bar high (price ≥ Donchian upper), −1 at a new low, else 0.
- ``forecast``: 2 P(up) − 1 of the forecast model's first horizon.
- ``sentiment``: P(positive) − P(negative) of the symbol's recent news, when there is any.

The vote is S = Σ wᵢ sᵢ / Σ wᵢ over the sources with a view (finite score); BUY when
S ≥ ``threshold``, SELL when S ≤ −``threshold``, else HOLD. A source's contribution is
wᵢ sᵢ / Σ wᵢ. Two inputs are not directional and act on the decision instead: an anomaly vetoes
a new position (HOLD, reason "anomaly"), and the regime scales the position size
(``regime_size``: calm 1, normal 1, turbulent 0.5).

The anomaly veto is relative to each series' own history, so that it means "unusual for this
market", not "unlike the model's training data" (the shipped model, trained on synthetic 1m bars,
flags 99.85 % of GOOG's daily windows). A window is vetoed when the model flags it AND its SCORE
is above the series' own τ-quantile (``anomaly_quantile``, 0.99) of its past scores. That quantile
is tracked online with O(1) state per series (`DecisionEngine.observe_scores`), vectorized across
rows, and updated after the decision, so a bar is judged against the past only:

- The first N = ⌈1 / (1 − τ)⌉ scores (100 at 0.99): q is their running maximum (the maximum of N
  draws sits near their 1 − 1/N quantile), a start that needs no knowledge of the score's scale.
- Then the stochastic-approximation quantile q ← q + η (τ − 1[x ≤ q]) with η = ``anomaly_step``
  (0.1) × the series' spread: the mean absolute deviation of its scores from their mean, both
  exponentially weighted with memory N scores (the running mean and deviation before that). In
  equilibrium P(x > q) = 1 − τ whatever the score's distribution (also when many scores tie at
  1.0: q then hovers just above the tie), and the step in the series' own units makes a series
  whose scores all lie in [0.97, 1] converge as fast as one spread over [0, 1].
- Until a series has ``anomaly_min_scores`` (100) scores, q is not trusted and the anomaly does
  not veto (``anomaly_warmup_veto = true``: the model's flag alone vetoes until then, as before).
  The flag is the very thing that is wrong off the model's home market: on GOOG daily it would
  keep the series out for its first 100 scored bars (five months), and again after every restart
  from a snapshot without the quantiles. On the home market the flag and the relative rule differ
  little (BTC 1m, first 4,000 bars: 16 and 6 of 1,541 views vetoed), and the risk limits still
  guard every new position.
- A prediction without a SCORE, or a degraded one (the rule-based fallback's |z| / 6, whose flag
  is already relative to the series' recent volatility and whose scores are on another scale), is
  judged by its flag alone and does not move q.

Confidence (0–100) is the probability that the action is right, read from a calibration table
(`Calibration`) fitted on a replay: |S| in bins → the hit rate observed there. Until one is
fitted the mapping is the uncalibrated 50 + 50 |S|, and the signal says so. ``tickmesh backtest
--fit-calibration FILE`` fits one on the BUY/SELL signals of a replay (a BUY/SELL is right when
the next bar's return has its sign) and saves it as JSON with its provenance; ``[decision]
calibration`` names the file the live worker loads (`core.config.Config.load_calibration`), and
``[decision] calibrations`` one file per series pattern (`CalibrationMap`: a table fitted on one
market says nothing about another). Each row's table is resolved once, when its series is bound
to it (`DecisionEngine.bind`); a step then maps each group of rows that shares a table at once.

Weights (documented update rule, bounded, persisted): each source keeps, per series (symbol and
timeframe), an exponentially weighted hit rate aᵢ (start 0.5) of its non-zero votes against the
sign of the next bar's log return: after each scored vote aᵢ ← aᵢ + λ (hit − aᵢ), λ =
``learning_rate`` (0.02). The weight is wᵢ = base_i · clip(1 + 4 (aᵢ − 0.5), ``weight_min``,
``weight_max``): a source right 60% of the time on that series gets 1.4, one right 40% gets 0.6, a
coin gets 1. Per series, because a rule that works on one market may fail on another, and
because then every series' state depends on its own bars alone: the same bars give the same
signals however a stream is cut into chunks (live equals replay). User feedback on a signal
moves its series' aᵢ the same way (`DecisionEngine.feedback`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Iterable, Mapping, Sequence

import msgspec
import numpy as np

from core.errors import ConfigError, SchemaError

__all__ = [
    "SOURCES",
    "RULE_FEATURES",
    "VETO_REASONS",
    "DecisionSettings",
    "CalibrationProvenance",
    "Calibration",
    "CalibrationMap",
    "calibration_patterns",
    "Decisions",
    "DecisionEngine",
    "BUY",
    "SELL",
    "HOLD",
]

BUY, SELL, HOLD = 1, -1, 0
SOURCES: tuple[str, ...] = ("trend", "momentum", "mean_reversion", "breakout", "forecast", "sentiment")
# The features each rule reads (the evidence a signal cites).
RULE_FEATURES: dict[str, tuple[str, ...]] = {
    "trend": ("ema_12", "ema_26", "adx_14"),
    "momentum": ("rsi_14",),
    "mean_reversion": ("bbands_20_2_2_0.upperband", "bbands_20_2_2_0.lowerband"),
    "breakout": ("donchian_20.upper", "donchian_20.lower"),
}
_REGIMES = ("calm", "normal", "turbulent")
VETO_REASONS: tuple[str, ...] = ("", "no view", "anomaly")
# 1: [hit rates, pending votes, pending prices]; 2: [2, the same three, the anomaly score state].
_SNAPSHOT_VERSION = 2


class DecisionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How votes become actions.

    Attributes:
        threshold: |S| needed for BUY or SELL.
        learning_rate: λ of the hit-rate update, per scored vote.
        weight_min, weight_max: bounds of every weight.
        base_weights: starting multiplier per source (1 when absent); 0 turns a source off.
        regime_size: position-size factor per regime label.
        anomaly_veto: an anomaly turns the action into HOLD (the rule: see the module docstring).
        anomaly_quantile: τ, the quantile of a series' own past anomaly scores that a flagged
            window's score must exceed to veto.
        anomaly_min_scores: scores a series needs before its quantile is trusted.
        anomaly_step: the quantile's step, as a fraction of the series' score spread.
        anomaly_warmup_veto: before ``anomaly_min_scores``, the model's flag alone vetoes (False,
            the default: no anomaly veto until then).
        calibration: path of a fitted confidence calibration (`Calibration.save`, JSON); "" =
            uncalibrated. Relative to the working directory, as ``data_dir`` is. The engine never
            reads it: the entry point loads it once (`core.config.Config.load_calibration`).
            With ``calibrations``, the table of the series that no pattern matches.
        calibrations: series pattern ``venue/symbol/timeframe`` (each part a literal or ``*``) →
            calibration file, so that each market gets its own table; the rule that picks a
            series' table is `CalibrationMap`'s. Loaded, and the patterns checked, at the same
            time as ``calibration``.
    """

    threshold: float = 0.15
    learning_rate: float = 0.02
    weight_min: float = 0.25
    weight_max: float = 2.0
    base_weights: dict[str, float] = {}
    regime_size: dict[str, float] = msgspec.field(default_factory=lambda: {"calm": 1.0, "normal": 1.0,
                                                                           "turbulent": 0.5})
    anomaly_veto: bool = True
    anomaly_quantile: Annotated[float, msgspec.Meta(
        gt=0, lt=1, description="Quantile of a series' own past anomaly scores that a flagged window's score "
                                "must exceed to veto a new position.")] = 0.99
    anomaly_min_scores: Annotated[int, msgspec.Meta(
        ge=1, description="Anomaly scores a series needs before its own quantile is used; before that "
                          "anomaly_warmup_veto decides.")] = 100
    anomaly_step: Annotated[float, msgspec.Meta(
        gt=0, le=1, description="Step of the online quantile, as a fraction of the series' score spread "
                                "(mean absolute deviation).")] = 0.1
    anomaly_warmup_veto: Annotated[bool, msgspec.Meta(
        description="Before a series has anomaly_min_scores scores, the model's flag alone vetoes "
                    "(false: no anomaly veto until then).")] = False
    calibration: str = ""
    calibrations: dict[str, str] = {}


class CalibrationProvenance(msgspec.Struct, frozen=True, kw_only=True):
    """What a `Calibration` was fitted on.

    Attributes:
        data: the bar file, or "venue/symbol" of stored history.
        tf: the timeframe of the bars.
        start_ns, end_ns: the bar times of the first and last signal fitted on (inclusive).
        signals: the scored BUY/SELL signals fitted on.
        holdout: the share of the scored signals left out of the fit (the latest ones).
        fitted_at: when, ISO-8601 UTC.
        command: the tickmesh command that fitted it.
    """

    data: str
    tf: str
    start_ns: int
    end_ns: int
    signals: int
    holdout: float = 0.0
    fitted_at: str = ""
    command: str = ""


class Calibration(msgspec.Struct, frozen=True):
    """|S| bin edges and the hit rate (0..1) observed in each bin on a replay, with where that
    replay came from (`save`/`load` keep both in a JSON file)."""

    edges: list[float]
    hit_rate: list[float]
    counts: list[int]
    provenance: CalibrationProvenance | None = None

    @classmethod
    def fit(cls, strength: np.ndarray, hit: np.ndarray, bins: int = 10, min_count: int = 20) -> "Calibration":
        """Hit rate per quantile bin of |S|, made non-decreasing (pool-adjacent-violators), so a
        stronger vote never reads as less confident."""
        strength, hit = np.asarray(strength, dtype=np.float64), np.asarray(hit, dtype=np.float64)
        if strength.size < min_count:
            raise ConfigError(f"{strength.size} scored signals are too few to calibrate (need {min_count})")
        edges = np.unique(np.quantile(strength, np.linspace(0, 1, bins + 1)))
        idx = np.clip(np.searchsorted(edges, strength, side="right") - 1, 0, len(edges) - 2)
        counts = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
        rate = np.bincount(idx, weights=hit, minlength=len(edges) - 1) / np.maximum(counts, 1)
        # Pool adjacent violators: merge bins until the rates do not decrease.
        blocks = [[r, c, 1] for r, c in zip(rate, counts)]
        merged: list[list[float]] = []
        for b in blocks:
            merged.append(b)
            while len(merged) > 1 and merged[-2][0] > merged[-1][0]:
                r2, c2, k2 = merged.pop()
                r1, c1, k1 = merged.pop()
                c = c1 + c2
                merged.append([(r1 * c1 + r2 * c2) / c if c else (r1 + r2) / 2, c, k1 + k2])
        rate_mono = np.concatenate([[r] * int(k) for r, _, k in merged])
        return cls(edges.tolist(), rate_mono.tolist(), counts.astype(int).tolist())

    def __call__(self, strength: np.ndarray) -> np.ndarray:
        edges = np.asarray(self.edges)
        idx = np.clip(np.searchsorted(edges, strength, side="right") - 1, 0, len(self.hit_rate) - 1)
        return np.asarray(self.hit_rate)[idx]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table and its provenance as indented JSON."""
        Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        """Reads a file written by `save`.

        Raises:
            ConfigError: the file is missing or unreadable, or not a usable calibration (the
                message names the file).
        """
        try:
            cal = msgspec.json.decode(Path(path).read_bytes(), type=cls)
        except FileNotFoundError:
            raise ConfigError(f"calibration file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"calibration file {path}: {exc.strerror or exc}") from None
        except msgspec.DecodeError as exc:  # ValidationError included
            raise ConfigError(f"calibration file {path} is not a calibration: {exc}") from None
        edges, rate = np.asarray(cal.edges, dtype=np.float64), np.asarray(cal.hit_rate, dtype=np.float64)
        if (len(edges) < 2 or len(rate) != len(edges) - 1 or len(cal.counts) != len(rate)
                or not np.all(np.diff(edges) > 0) or not np.all((rate >= 0) & (rate <= 1))):
            raise ConfigError(f"calibration file {path} is not a calibration: it needs increasing edges, "
                              f"one hit rate in [0, 1] and one count per bin")
        return cal


def calibration_patterns(patterns: Iterable[str]) -> list[tuple[tuple[str, str, str], str]]:
    """Parses and checks series patterns ``venue/symbol/timeframe`` (each part a literal, matched
    exactly, case included, or ``*``, any): (venue, symbol, timeframe) parts and the pattern, most
    specific first (the rule is `CalibrationMap`'s).

    Raises:
        ConfigError: a pattern without three non-empty parts, or with a part that mixes ``*``
            with other text or holds whitespace; two equally specific patterns that overlap (the
            message names them).
    """
    parsed: list[tuple[tuple[str, str, str], str]] = []
    for name in patterns:
        parts = name.split("/")
        if len(parts) != 3 or any(not p or (p != "*" and "*" in p) or p != "".join(p.split()) for p in parts):
            raise ConfigError(f"calibration pattern {name!r} is not venue/symbol/timeframe with each part a "
                              f"name or '*' (e.g. 'binance/BTC-USDT/1m', '*/*/1h')")
        a = (parts[0], parts[1], parts[2])
        for b, other in parsed:
            if _literals(a) == _literals(b) and all(x == y or "*" in (x, y) for x, y in zip(a, b)):
                both = "/".join(y if x == "*" else x for x, y in zip(a, b))
                raise ConfigError(f"calibration patterns {other!r} and {name!r} are equally specific and both "
                                  f"match {both!r}: make one of them more specific")
        parsed.append((a, name))
    # Most literal parts first; the overlap check makes the order among equals irrelevant.
    return sorted(parsed, key=lambda x: -_literals(x[0]))


class CalibrationMap:
    """Confidence tables per series pattern, and the table of the series none matches.

    A series takes the table of the most specific pattern that matches it: the one with the most
    literal (non-``*``) parts. Two patterns equally specific that could match the same series
    (e.g. ``binance/*/1m`` and ``*/BTC-USDT/1m``) are refused here rather than ordered, so that
    the choice never depends on the order of a TOML table or of environment overrides. A series
    no pattern matches takes ``fallback``; with no fallback it is uncalibrated.

    Args:
        tables: pattern (`calibration_patterns`) → its table.
        fallback: the table of every other series (None: uncalibrated).

    Raises:
        ConfigError: a malformed pattern, or two equally specific patterns that overlap
            (`calibration_patterns`).
    """

    def __init__(self, tables: Mapping[str, Calibration] | None = None, fallback: Calibration | None = None) -> None:
        tables = dict(tables or {})
        self._patterns = [(parts, name, tables[name]) for parts, name in calibration_patterns(tables)]
        self.fallback = fallback

    @property
    def tables(self) -> dict[str, Calibration]:
        """Pattern → table, most specific first."""
        return {name: cal for _, name, cal in self._patterns}

    def match(self, venue: str, symbol: str, tf: str) -> str | None:
        """The pattern that decides the series' table; None when none matches (the fallback's)."""
        key = (venue, symbol, tf)
        for parts, name, _ in self._patterns:
            if all(p == "*" or p == k for p, k in zip(parts, key)):
                return name
        return None

    def resolve(self, venue: str, symbol: str, tf: str) -> Calibration | None:
        """The table of a series (None: uncalibrated)."""
        name = self.match(venue, symbol, tf)
        return self.fallback if name is None else self.tables[name]

    def __repr__(self) -> str:
        return f"CalibrationMap(patterns={list(self.tables)}, fallback={self.fallback is not None})"


def _literals(parts: tuple[str, str, str]) -> int:
    return sum(p != "*" for p in parts)


class Decisions(msgspec.Struct, kw_only=True):
    """One step's result, one entry per row.

    Attributes:
        action: int8, BUY 1, SELL -1, HOLD 0.
        score: S, the weighted vote in [-1, 1] (NaN when no source had a view).
        confidence: 0..100, the calibrated probability that the action is right.
        votes: (n, len(SOURCES)) each source's score (NaN: no view).
        contributions: (n, len(SOURCES)) wᵢ sᵢ / Σ wᵢ.
        veto: int8 per row, an index into `VETO_REASONS`: why the action is HOLD (0: no veto).
        size_factor: regime's size multiplier.
        calibrated: whether every row's confidence came from a fitted table.
        calibrated_rows: bool per row, whether its confidence came from a fitted table (its
            series' table, `DecisionEngine.bind`).
    """

    action: np.ndarray
    score: np.ndarray
    confidence: np.ndarray
    votes: np.ndarray
    contributions: np.ndarray
    veto: np.ndarray
    size_factor: np.ndarray
    calibrated: bool
    calibrated_rows: np.ndarray | None = None


def _col(features: np.ndarray, index: Mapping[str, int], name: str) -> np.ndarray:
    j = index.get(name)
    return features[:, j] if j is not None else np.full(features.shape[0], np.nan)


class DecisionEngine:
    """Votes for many symbols per bar close; learns each source's weight from realized returns.

    Args:
        names: the feature layout of the ``features`` arrays (`core.features.featureset.FeatureSet.names`).
        settings: thresholds, learning rate, bounds.
        calibration: a fitted `Calibration` for every series, or a `CalibrationMap` whose table for
            each series `bind` resolves (None: the uncalibrated mapping).
    """

    def __init__(self, names: Sequence[str], settings: DecisionSettings | None = None,
                 calibration: Calibration | CalibrationMap | None = None) -> None:
        self.settings = settings or DecisionSettings()
        unknown = sorted(set(self.settings.base_weights) - set(SOURCES))
        if unknown:
            raise ConfigError(f"base_weights for unknown sources {unknown}; sources: {list(SOURCES)}")
        self.index = {n: i for i, n in enumerate(names)}
        self.calibration = calibration
        self._calibrations = (calibration if isinstance(calibration, CalibrationMap)
                              else CalibrationMap(fallback=calibration))
        # The distinct tables rows use, and per row the index of its table there (-1: uncalibrated).
        self._tables: list[Calibration] = []
        self._fallback = self._table_index(self._calibrations.fallback)
        self._row_table = np.full(0, -1, dtype=np.int64)
        self.base = np.array([self.settings.base_weights.get(s, 1.0) for s in SOURCES])
        # Per row (a symbol's series): the last bar's votes and price, scored when its next bar
        # arrives. Rows are allocated by `grow`, as the feature engine's are.
        self._prev_votes = np.full((0, len(SOURCES)), np.nan)
        self._prev_price = np.full(0, np.nan)
        self.hit_rate = np.full((0, len(SOURCES)), 0.5)  # (rows, sources)
        # Per row, its anomaly scores so far: how many, their mean and spread, and the quantile q.
        self._score_n = np.zeros(0, dtype=np.int64)
        self._score_mean = np.zeros(0)
        self._score_spread = np.zeros(0)
        self._score_q = np.full(0, np.nan)
        s = self.settings
        if not (0 < s.anomaly_quantile < 1 and s.anomaly_min_scores >= 1 and 0 < s.anomaly_step <= 1):
            raise ConfigError("anomaly_quantile must be in (0, 1), anomaly_min_scores >= 1 and anomaly_step in (0, 1]")
        # Scores of the running-maximum start, and the memory of the spread (see the module docstring).
        self._score_start = int(np.ceil(1.0 / (1.0 - s.anomaly_quantile) - 1e-9))

    @property
    def rows(self) -> int:
        return int(self._prev_price.shape[0])

    def grow(self, n: int) -> np.ndarray:
        """Adds ``n`` rows (new series) and returns their indices."""
        start = self.rows
        self._prev_votes = np.concatenate([self._prev_votes, np.full((n, len(SOURCES)), np.nan)])
        self._prev_price = np.concatenate([self._prev_price, np.full(n, np.nan)])
        self.hit_rate = np.concatenate([self.hit_rate, np.full((n, len(SOURCES)), 0.5)])
        self._score_n = np.concatenate([self._score_n, np.zeros(n, dtype=np.int64)])
        self._score_mean = np.concatenate([self._score_mean, np.zeros(n)])
        self._score_spread = np.concatenate([self._score_spread, np.zeros(n)])
        self._score_q = np.concatenate([self._score_q, np.full(n, np.nan)])
        self._row_table = np.concatenate([self._row_table, np.full(n, self._fallback, dtype=np.int64)])
        return np.arange(start, start + n)

    def _table_index(self, cal: Calibration | None) -> int:
        if cal is None:
            return -1
        for i, t in enumerate(self._tables):
            if t is cal:
                return i
        self._tables.append(cal)
        return len(self._tables) - 1

    def bind(self, rows: np.ndarray, series: Sequence[tuple[str, str, str]]) -> None:
        """Gives each row the confidence table of its series, resolved now, once per series: a row
        not bound keeps the fallback table (the single `Calibration`, or the map's fallback).

        Args:
            rows: row indices from `grow`.
            series: per row, its (venue, symbol, timeframe).
        """
        resolve = self._calibrations.resolve
        for r, (venue, symbol, tf) in zip(np.asarray(rows, dtype=np.int64).tolist(), series):
            self._row_table[r] = self._table_index(resolve(venue, symbol, tf))

    def table(self, row: int) -> Calibration | None:
        """The confidence table of a row (None: uncalibrated)."""
        i = int(self._row_table[row])
        return self._tables[i] if i >= 0 else None

    def confidence(self, rows: np.ndarray, strength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(confidence 0..100, calibrated) per row: |S| through each row's table, one call per
        table for the rows that share it; 50 + 50 |S| for an uncalibrated row."""
        ix = self._row_table[rows]
        calibrated = ix >= 0
        first = int(ix[0]) if ix.size else -1
        if ix.size and (ix == first).all():  # one table (or none) for the whole close: the usual case
            p = self._tables[first](strength) if first >= 0 else 0.5 + 0.5 * strength
        else:
            p = 0.5 + 0.5 * strength
            for t in np.unique(ix[calibrated]).tolist():
                sel = ix == t
                p[sel] = self._tables[t](strength[sel])
        return p * 100.0, calibrated

    def __repr__(self) -> str:
        mean = self.weights(np.arange(self.rows)).mean(axis=0) if self.rows else self.base
        w = ", ".join(f"{s}={x:.2f}" for s, x in zip(SOURCES, mean))
        return f"DecisionEngine(threshold={self.settings.threshold}, rows={self.rows}, mean weights=({w}))"

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), sources) current weights of those series."""
        s = self.settings
        return self.base * np.clip(1.0 + 4.0 * (self.hit_rate[rows] - 0.5), s.weight_min, s.weight_max)

    def votes(self, features: np.ndarray, price: np.ndarray, p_up: np.ndarray | None = None,
              sentiment: np.ndarray | None = None) -> np.ndarray:
        """Each source's score per row, (n, len(SOURCES)); NaN where it has no view."""
        f, ix = features, self.index
        n = f.shape[0]
        out = np.full((n, len(SOURCES)), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            ema_fast, ema_slow, adx = (_col(f, ix, c) for c in RULE_FEATURES["trend"])
            out[:, 0] = np.sign(ema_fast - ema_slow) * np.clip((adx - 20.0) / 20.0, 0.0, 1.0)
            out[:, 1] = np.clip((_col(f, ix, "rsi_14") - 50.0) / 20.0, -1.0, 1.0)
            upper, lower = (_col(f, ix, c) for c in RULE_FEATURES["mean_reversion"])
            width = upper - lower
            pb = (price - lower) / np.where(width > 0, width, np.nan)
            out[:, 2] = np.where(pb < 0, np.clip(-4.0 * pb, 0.0, 1.0),
                                 np.where(pb > 1, -np.clip(4.0 * (pb - 1.0), 0.0, 1.0), np.where(np.isnan(pb), np.nan, 0.0)))
            hi, lo = (_col(f, ix, c) for c in RULE_FEATURES["breakout"])
            out[:, 3] = np.where(price >= hi, 1.0, np.where(price <= lo, -1.0, 0.0))
            out[:, 3] = np.where(np.isfinite(hi) & np.isfinite(lo) & np.isfinite(price), out[:, 3], np.nan)
        if p_up is not None:
            out[:, 4] = 2.0 * np.asarray(p_up, dtype=np.float64) - 1.0
        if sentiment is not None:  # (n, 3): negative, neutral, positive
            s = np.asarray(sentiment, dtype=np.float64)
            out[:, 5] = s[:, 2] - s[:, 0]
        out[:, self.base == 0] = np.nan
        return out

    def score_quantile(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) each series' current τ-quantile of its anomaly scores; NaN until it has
        ``anomaly_min_scores`` of them."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(self._score_n[rows] >= self.settings.anomaly_min_scores, self._score_q[rows], np.nan)

    def anomalous(self, rows: np.ndarray, flag: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
        """(len(rows),) bool: which windows the anomaly veto calls unusual for their series: flagged
        by the model and scored above the series' own quantile (`score_quantile`); by the flag
        alone where the score is NaN (none, or degraded) and, with ``anomaly_warmup_veto``, before
        the quantile is trusted."""
        flag = np.asarray(flag, dtype=bool)
        if score is None:
            return flag.copy()
        score = np.asarray(score, dtype=np.float64)
        q = self.score_quantile(rows)
        warming = np.isnan(q) & np.isfinite(score)
        with np.errstate(invalid="ignore"):
            above = np.where(np.isfinite(score), score > q, True)  # no score: the flag decides
        if self.settings.anomaly_warmup_veto:
            above |= warming
        return flag & above

    def observe_scores(self, rows: np.ndarray, score: np.ndarray) -> None:
        """Adds one anomaly score per row (NaN: none, the row's state is kept) to each series'
        quantile state; the update rule is in the module docstring."""
        rows = np.asarray(rows, dtype=np.int64)
        score = np.asarray(score, dtype=np.float64)
        has = np.isfinite(score)
        if not has.any():
            return
        r, x = rows[has], score[has]
        s = self.settings
        n = self._score_n[r] + 1
        first = n == 1
        a = 1.0 / np.minimum(n, self._score_start)  # running mean and deviation, then EW
        mean, spread, q = self._score_mean[r], self._score_spread[r], self._score_q[r]
        d = x - mean
        mean = np.where(first, x, mean + a * d)
        spread = np.where(first, 0.0, spread + a * (np.abs(d) - spread))
        with np.errstate(invalid="ignore"):
            sa = q + s.anomaly_step * spread * (s.anomaly_quantile - (x <= q))
        q = np.where(first, x, np.where(n <= self._score_start, np.fmax(q, x), sa))
        self._score_n[r], self._score_mean[r], self._score_spread[r], self._score_q[r] = n, mean, spread, q

    def step(self, rows: np.ndarray, features: np.ndarray, price: np.ndarray, *,
             p_up: np.ndarray | None = None, sentiment: np.ndarray | None = None,
             anomaly: np.ndarray | None = None, regime: np.ndarray | None = None,
             anomaly_score: np.ndarray | None = None) -> Decisions:
        """One bar close for ``rows`` (indices from `grow`, each row one symbol's series).

        The previous bar's votes of each row are scored against this bar's price first (the
        weight update), then this bar's votes are taken, then the anomaly veto judges each window
        against its series' past scores, and only then do this bar's scores join them.

        Args:
            rows: (n,) row indices, distinct, in the order of the arrays.
            features: (n, len(names)) feature values.
            price: (n,) close prices.
            p_up: (n,) forecast P(up) at the first horizon (None: no forecast).
            sentiment: (n, 3) sentiment probabilities (None: no news).
            anomaly: (n,) bool anomaly flags (None: none).
            regime: (n,) int regime labels 0 calm, 1 normal, 2 turbulent (None: size factor 1).
            anomaly_score: (n,) the anomaly model's SCORE (NaN: none, or not to be tracked;
                None: no scores, the flags veto alone).
        """
        price = np.asarray(price, dtype=np.float64)
        rows = np.asarray(rows, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.learn(rows, self._prev_votes[rows], np.log(price / self._prev_price[rows]))
        v = self.votes(np.asarray(features, dtype=np.float64), price, p_up, sentiment)
        w = self.weights(rows)
        has = np.isfinite(v)
        wsum = (has * w).sum(axis=1)
        contrib = np.where(has, v * w, 0.0) / np.where(wsum > 0, wsum, np.nan)[:, None]
        score = contrib.sum(axis=1)
        score = np.where(wsum > 0, score, np.nan)
        t = self.settings.threshold
        action = np.where(score >= t, BUY, np.where(score <= -t, SELL, HOLD)).astype(np.int8)
        veto = np.where(np.isfinite(score), 0, VETO_REASONS.index("no view")).astype(np.int8)
        if anomaly is not None and self.settings.anomaly_veto:
            flagged = self.anomalous(rows, anomaly, anomaly_score) & (action != HOLD)
            action[flagged] = HOLD
            veto[flagged] = VETO_REASONS.index("anomaly")
        if anomaly_score is not None:
            self.observe_scores(rows, anomaly_score)  # after the veto: a bar is judged by the past only
        strength = np.abs(np.nan_to_num(score))
        conf, calibrated = self.confidence(rows, strength)
        size = np.ones(len(price))
        if regime is not None:
            factors = np.array([self.settings.regime_size.get(r, 1.0) for r in _REGIMES])
            size = factors[np.clip(np.asarray(regime, dtype=np.int64), 0, len(_REGIMES) - 1)]
        self._prev_votes[rows] = v
        self._prev_price[rows] = price
        return Decisions(action=action, score=score, confidence=conf, votes=v, contributions=np.nan_to_num(contrib),
                         veto=veto, size_factor=size,
                         calibrated=bool(calibrated.all()) if calibrated.size else self._fallback >= 0,
                         calibrated_rows=calibrated)

    def learn(self, rows: np.ndarray, votes: np.ndarray, realized: np.ndarray) -> None:
        """Scores one vote per row: votes (len(rows), sources) against the log return that
        followed (len(rows),). Only non-zero finite votes against a non-zero finite return count."""
        direction = np.sign(realized)[:, None]
        scored = np.isfinite(votes) & (votes != 0) & np.isfinite(direction) & (direction != 0)
        hit = (np.sign(votes) == direction).astype(np.float64)
        a = self.hit_rate[rows]
        self.hit_rate[rows] = np.where(scored, a + self.settings.learning_rate * (hit - a), a)

    def feedback(self, row: int, votes: np.ndarray, action: int, agreed: bool) -> None:
        """A user's verdict on one signal of series ``row``: ``agreed`` (executed it) counts as the
        market moving the signal's way, dismissing it as the market moving against; each voting
        source's hit rate moves as `learn` moves it for one scored bar."""
        direction = float(action) if agreed else -float(action)
        if direction:
            self.learn(np.array([row]), np.asarray(votes, dtype=np.float64)[None, :], np.array([direction]))

    def snapshot(self) -> bytes:
        """Hit rates, each row's pending votes and its anomaly score state, to survive a restart."""
        return msgspec.msgpack.encode([_SNAPSHOT_VERSION, self.hit_rate.tobytes(), self._prev_votes.tobytes(),
                                       self._prev_price.tobytes(),
                                       [self._score_n.astype("<i8").tobytes(), self._score_mean.tobytes(),
                                        self._score_spread.tobytes(), self._score_q.tobytes()]])

    def restore(self, data: bytes) -> None:
        """Loads a `snapshot`; one of version 1 (before the anomaly state) starts the anomaly
        quantiles fresh.

        Raises:
            SchemaError: not a decision engine snapshot of a known version.
        """
        parts = msgspec.msgpack.decode(data)
        if len(parts) == 3 and all(isinstance(p, bytes) for p in parts):  # version 1
            hit, votes, price = parts
            scores = None
        elif len(parts) == 5 and parts[0] == _SNAPSHOT_VERSION:
            _, hit, votes, price, scores = parts
        else:
            raise SchemaError(f"decision engine snapshot of an unknown version (expected {_SNAPSHOT_VERSION} or 1)")
        self.hit_rate = np.frombuffer(hit, dtype=np.float64).reshape(-1, len(SOURCES)).copy()
        self._prev_price = np.frombuffer(price, dtype=np.float64).copy()
        self._prev_votes = np.frombuffer(votes, dtype=np.float64).reshape(-1, len(SOURCES)).copy()
        rows = self._prev_price.shape[0]
        if scores is None:
            self._score_n = np.zeros(rows, dtype=np.int64)
            self._score_mean, self._score_spread = np.zeros(rows), np.zeros(rows)
            self._score_q = np.full(rows, np.nan)
        else:
            n, mean, spread, q = scores
            self._score_n = np.frombuffer(n, dtype="<i8").astype(np.int64)
            self._score_mean, self._score_spread, self._score_q = (
                np.frombuffer(b, dtype=np.float64).copy() for b in (mean, spread, q))
            if not all(len(a) == rows for a in (self._score_n, self._score_mean, self._score_spread, self._score_q)):
                raise SchemaError("decision engine snapshot: anomaly state of another row count")
        # Tables are configuration, not state: every row takes the fallback until `bind` resolves its series.
        self._row_table = np.full(rows, self._fallback, dtype=np.int64)
