"""The decision stage: feature vectors and the predictions made for them → signals.

One object, used the same way live and in a replay, so that a replay of the same inputs gives the
same signals. For the vectors of one call (one per series: a bar close as `core.closes.BarCloses`
groups them, which the live worker and the backtest both use), all at once: the paper portfolio
is marked at the bars' closes and positions whose stop-loss or take-profit the close crossed are
closed, the `core.decision.DecisionEngine` votes (rules + forecast, anomaly veto, regime size),
`core.risk` turns the action into ATR stops, risk-reward, Kelly and a position size within the
limits, the paper portfolio takes the order as a fill (its stop and take-profit guard the
position from then on), and one `core.schema.Signal` per vector records all of it with the
evidence (contributions, top features, model versions).

Each (venue, symbol, timeframe) is its own paper book (a 1m and a 1h signal on the same symbol
do not trade one position).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import msgspec
import numpy as np

from core.decision import RULE_FEATURES, SOURCES, VETO_REASONS, Calibration, DecisionEngine, DecisionSettings
from core.errors import SchemaError
from core.portfolio import Portfolio
from core.risk import VETO_NAMES, RiskSettings, size, stops
from core.schema import FeatureVector, Prediction, Signal, sig_id

__all__ = ["DecisionStage", "Feedback", "feedback_key", "Execution", "execution_key"]

_ACTIONS = {1: "BUY", -1: "SELL", 0: "HOLD"}
_RULES = [s for s in SOURCES if s in RULE_FEATURES]


def _dicts(keys: Sequence[str], present: np.ndarray, values: np.ndarray) -> list[dict[str, float]]:
    """Per row, ``{key: value}`` over the keys ``present`` in that row, one pattern at a time."""
    code = present.astype(np.int64) @ (1 << np.arange(present.shape[1], dtype=np.int64))
    out: list = [None] * len(code)
    for c in np.unique(code).tolist():
        cols = [j for j in range(len(keys)) if c >> j & 1]
        names = [keys[j] for j in cols]
        rows = np.flatnonzero(code == c)
        for i, row in zip(rows.tolist(), values[np.ix_(rows, cols)].tolist()):
            out[i] = dict(zip(names, row))
    return out


def _evidence(predictions: Sequence[Mapping[str, Prediction]]) -> tuple[np.ndarray, ...]:
    """Per vector, from its predictions: the forecast's P(up), mean and std at the first horizon
    (NaN without one), the anomaly flag, and the regime label (1, normal, when unknown)."""
    none = (np.nan, np.nan, np.nan)
    forecast, flag, label = [], [], []
    for p in predictions:  # plain lists: assigning into NumPy rows one by one costs more
        f = p.get("forecast") if p else None
        forecast.append(none if f is None else (_first(f, "P_UP"), _first(f, "MEAN"), _first(f, "STD")))
        flag.append(_first(p.get("anomaly"), "FLAG", 0.0) if p else 0.0)
        label.append(_first(p.get("regime"), "LABEL", 1.0) if p else 1.0)
    fc = np.array(forecast, dtype=np.float64).reshape(len(predictions), 3)
    regime = np.nan_to_num(np.array(label, dtype=np.float64), nan=1.0).astype(np.int64)
    return fc[:, 0], fc[:, 1], fc[:, 2], np.array(flag, dtype=np.float64) > 0.5, regime


def _first(p: Prediction | None, name: str, default: float = np.nan) -> float:
    if p is None or name not in p.outputs or not p.outputs[name]:
        return default
    return float(p.outputs[name][0])


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    """A user's verdict on one signal: ``executed`` (agreed), ``dismissed`` (disagreed) or ``note``.

    Stored by the API (ClickHouse ``feedback``, the audit trail) and put in the state bucket under
    `feedback_key`, where inference workers pick it up and move the voting sources' hit rates on
    that series (`DecisionStage.feedback`).
    """

    id: str
    venue: str
    symbol: str
    tf: str
    action: str
    kind: str
    note: str = ""
    contributions: dict[str, float] = {}
    received_ns: int = 0


def feedback_key(signal_id: str) -> str:
    """State-bucket key of a signal's latest feedback (ids hold characters keys may not)."""
    return "feedback." + hashlib.blake2b(signal_id.encode(), digest_size=12).hexdigest()


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """A fill the user executed, recorded into the paper book of one series (``qty`` signed:
    + bought, - sold; ``px`` in the quote currency). ``id`` makes it count once."""

    id: str
    venue: str
    symbol: str
    tf: str
    qty: float
    px: float
    ts_ns: int
    fee: float = 0.0
    note: str = ""


def execution_key(execution_id: str) -> str:
    """State-bucket key of an execution (the API puts it, inference workers apply it)."""
    return "execution." + hashlib.blake2b(execution_id.encode(), digest_size=12).hexdigest()


class DecisionStage:
    """Signals for feature vectors, with state (weights, pending votes, paper portfolio) that
    survives restarts through `snapshot`/`restore`.

    Args:
        names: the feature layout of the vectors.
        settings: voting settings.
        risk: risk settings (the paper account starts with ``risk.equity_start``).
        calibration: a fitted confidence table (None: uncalibrated).
    """

    def __init__(self, names: Sequence[str], settings: DecisionSettings | None = None,
                 risk: RiskSettings | None = None, calibration: Calibration | None = None) -> None:
        self.names = list(names)
        self.engine = DecisionEngine(self.names, settings, calibration)
        self.risk = risk or RiskSettings()
        self.portfolio = Portfolio(self.risk.equity_start)
        self._rows: dict[tuple[str, str, str], int] = {}
        rule_names = [n for s in _RULES for n in RULE_FEATURES[s]]
        missing = [n for n in ["atr_14", *rule_names] if n not in self.names]
        if missing:
            raise SchemaError(f"the feature layout lacks {missing}, which the rules and stops read")
        self._atr = self.names.index("atr_14")
        # Per pair of strongest rules (indices into _RULES, -1: none): the features they cite
        # and where those sit in a vector.
        self._cited = {}
        for a in range(-1, len(_RULES)):
            for b in range(-1, len(_RULES)):
                cited = [f for r in (a, b) if r >= 0 for f in RULE_FEATURES[_RULES[r]]]
                self._cited[(a, b)] = cited, [self.names.index(f) for f in cited]

    def _row_ids(self, keys: list[tuple[str, str, str]]) -> np.ndarray:
        new = [k for k in dict.fromkeys(keys) if k not in self._rows]
        if new:
            for k, r in zip(new, self.engine.grow(len(new)).tolist()):
                self._rows[k] = r
        return np.array([self._rows[k] for k in keys], dtype=np.int64)

    def decide(self, vectors: Sequence[FeatureVector],
               predictions: Sequence[Mapping[str, Prediction]]) -> list[Signal]:
        """One signal per vector (one vector per series in a call).

        Args:
            vectors: feature vectors of one bar close, each with its ``close``.
            predictions: per vector, model name → the prediction made for it (may be empty).

        Raises:
            SchemaError: a vector of another feature layout.
        """
        if not vectors:
            return []
        width = 8 * len(self.names)
        for v in vectors:
            # Equal lists compare in C without a copy; anything else (a tuple) once more as a list.
            if v.names is not self.names and v.names != self.names and list(v.names) != self.names:
                raise SchemaError(f"{v.venue}/{v.symbol}: feature layout differs from the decision stage's")
            if len(v.values) != width:
                raise SchemaError(f"{v.venue}/{v.symbol}: {len(v.values)} value bytes for {len(v.names)} names")
        keys = [(v.tf, v.venue, v.symbol) for v in vectors]
        books = [(v.venue, f"{v.symbol}/{v.tf}") for v in vectors]
        rows = self._row_ids(keys)
        features = np.frombuffer(b"".join([v.values for v in vectors]), dtype="<f8").reshape(len(vectors), -1)
        price = np.array([v.close for v in vectors], dtype=np.float64)
        ts = np.array([v.start_ns for v in vectors], dtype=np.int64)
        p_up, mean, std, anomaly, regime = _evidence(predictions)
        pf = self.portfolio
        ok_px = np.isfinite(price) & (price > 0)
        if ok_px.any():
            sel = np.flatnonzero(ok_px)
            priced = [books[i] for i in sel.tolist()]
            pf.mark(priced, price[sel], ts[sel])
            # Stops and take-profits crossed at this close exit first, so the decision below is
            # sized against the book after them. The id ties an exit to this bar (once only) and
            # says why: exit.<stop_loss|take_profit>.<signal id>.
            ex = pf.exits(priced, price[sel], ts[sel]) if self.risk.exits else None
            if ex is not None and ex.keys:
                pf.apply_fills(ex.keys, ex.qty, ex.px, ex.ts_ns, "signal",
                               ids=[f"exit.{why}.{sig_id(*keys[i], int(ts[i]))}"
                                    for i, why in zip(sel[ex.index].tolist(), ex.reason)])
        d = self.engine.step(rows, features, price, p_up=p_up if np.isfinite(p_up).any() else None,
                             anomaly=anomaly, regime=regime)
        stop, take = stops(d.action, price, features[:, self._atr], self.risk)
        z = size(d.action, d.confidence, price, stop, take, equity=pf.equity, drawdown=pf.drawdown,
                 daily_loss=pf.daily_loss, exposure=pf.gross_exposure,
                 position_notional=pf.position_notional(books), settings=self.risk)
        fraction, notional, qty = z.fraction * d.size_factor, z.notional * d.size_factor, z.qty * d.size_factor
        trade = np.flatnonzero(qty != 0)
        if trade.size:
            traded = [books[i] for i in trade.tolist()]
            pf.apply_fills(traded, qty[trade], price[trade], ts[trade], "signal",
                           ids=[sig_id(*keys[i], int(ts[i])) for i in trade.tolist()])
            # The newest signal's levels guard a position now on its side (opened, added to or
            # flipped); an order that only cut an opposite position leaves that one's levels.
            # size() trades only with finite levels on the right sides, so set_exits accepts them.
            mine = np.flatnonzero(np.sign(pf.position_notional(traded)) == np.sign(qty[trade]))
            if mine.size and self.risk.exits:
                pf.set_exits([traded[j] for j in mine.tolist()], stop[trade[mine]], take[trade[mine]])
        return self._signals(vectors, predictions, d, z, fraction, notional, qty, stop, take, price, features,
                             mean, std)

    def _signals(self, vectors, predictions, d, z, fraction, notional, qty, stop, take, price,
                 features, mean, std) -> list[Signal]:
        # Everything that can be is computed for all rows at once; what is left per row is
        # building the dicts and the Signal from plain Python values (indexing NumPy arrays
        # element by element would cost more than everything else the stage does).
        n = len(vectors)
        has = np.isfinite(d.votes)
        contributions = _dicts(SOURCES, has, d.contributions)
        # The features of the (up to) two strongest rules with a view, strongest first.
        rule_cols = [SOURCES.index(r) for r in _RULES]
        strength = np.where(has[:, rule_cols], np.abs(d.contributions[:, rule_cols]), -1.0)
        order = np.argsort(-strength, axis=1, kind="stable")[:, :2]
        ranked = np.take_along_axis(strength, order, axis=1) >= 0
        top_rules = np.where(ranked, order, -1)  # -1: fewer than two rules had a view
        tops = self._top_features(top_rules, features)
        # The engine's veto, else the risk rules' when they kept a BUY/SELL at size 0.
        veto_names = [VETO_REASONS[v] or (VETO_NAMES[zv] if a and zv else "")
                      for v, zv, a in zip(d.veto.tolist(), z.veto.tolist(), d.action.tolist())]
        calibrated = d.calibrated
        rows = zip(vectors, predictions, d.action.tolist(), d.confidence.tolist(), d.score.tolist(),
                   z.risk_reward.tolist(), z.expected_value.tolist(), z.kelly.tolist(), fraction.tolist(),
                   notional.tolist(), qty.tolist(), stop.tolist(), take.tolist(), price.tolist(), veto_names,
                   contributions, tops, mean.tolist(), std.tolist())
        out = [None] * n
        for i, (v, preds, action, conf, score, rr, ev, kel, frac, notion, q, sl, tp, px, vet, contrib, top, mu,
                sd) in enumerate(rows):
            out[i] = Signal(
                id=sig_id(v.tf, v.venue, v.symbol, v.start_ns), venue=v.venue, symbol=v.symbol, tf=v.tf,
                start_ns=v.start_ns, action=_ACTIONS[action], price=px, confidence=conf, score=score,
                expected_return=mu, uncertainty=sd, risk_reward=rr, expected_value=ev, kelly_fraction=kel,
                position_fraction=frac, position_size=notion, qty=q, stop_loss=sl, take_profit=tp,
                contributions=contrib, top_features=top,
                model_versions={m: p.version for m, p in preds.items()} if preds else {},
                degraded=any(p.degraded for p in preds.values()) if preds else False, veto=vet,
                calibrated=calibrated)
        return out

    def _top_features(self, top_rules: np.ndarray, features: np.ndarray) -> list[dict[str, float]]:
        """Per row, the values of the features behind its strongest rules (``top_rules``: (n, 2)
        indices into the rules, -1 for none), one gather per distinct pair of rules."""
        base = len(_RULES) + 1
        pair = (top_rules[:, 0] + 1) * base + (top_rules[:, 1] + 1)
        out: list = [None] * len(pair)
        for code in np.unique(pair).tolist():
            names, cols = self._cited[(code // base - 1, code % base - 1)]
            rows = np.flatnonzero(pair == code)
            for i, values in zip(rows.tolist(), features[np.ix_(rows, cols)].tolist()):
                out[i] = dict(zip(names, values))
        return out

    def feedback(self, fb: Feedback) -> bool:
        """Applies a verdict to the series it concerns; False when there is nothing to learn
        (a note, a HOLD, or a series this stage has not seen)."""
        row = self._rows.get((fb.tf, fb.venue, fb.symbol))
        action = {"BUY": 1, "SELL": -1}.get(fb.action, 0)
        if row is None or not action or fb.kind not in ("executed", "dismissed"):
            return False
        votes = np.array([fb.contributions.get(s, np.nan) for s in SOURCES])  # same signs as the votes
        self.engine.feedback(row, votes, action, agreed=fb.kind == "executed")
        return True

    def execute(self, ex: Execution) -> bool:
        """Records a user's fill in its series' paper book; False when that id was applied before.

        Raises:
            core.errors.ValidationError: a zero or non-finite quantity, or a price that is not > 0.
        """
        return self.portfolio.apply_fills([(ex.venue, f"{ex.symbol}/{ex.tf}")], [ex.qty], [ex.px], [ex.ts_ns],
                                          "execution", fee=ex.fee, ids=[ex.id]) == 1

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode([self.engine.snapshot(), self.portfolio.to_bytes(),
                                       [[list(k), r] for k, r in self._rows.items()]])

    def restore(self, data: bytes) -> None:
        engine, portfolio, rows = msgspec.msgpack.decode(data)
        self.engine.restore(engine)
        self.portfolio = Portfolio.from_bytes(portfolio)
        self._rows = {tuple(k): r for k, r in rows}
