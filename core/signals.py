"""The decision stage: feature vectors and the predictions made for them → signals.

One object, used the same way live and in a replay, so that a replay of the same inputs gives the
same signals. For the vectors of one call (one per series; the live worker and the backtest pass
one at a time, in stream order), all at once: the paper portfolio is marked
at the bars' closes, the `core.decision.DecisionEngine` votes (rules + forecast, anomaly veto,
regime size), `core.risk` turns the action into ATR stops, risk-reward, Kelly and a position size
within the limits, the paper portfolio takes the order as a fill, and one `core.schema.Signal`
per vector records all of it with the evidence (contributions, top features, model versions).

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
        self._rule_cols = np.array([self.names.index(n) for n in rule_names], dtype=np.int64)
        self._rule_index = {n: j for j, n in enumerate(rule_names)}

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
        for v in vectors:
            if len(v.names) != len(self.names) or (v.names is not self.names and list(v.names) != self.names):
                raise SchemaError(f"{v.venue}/{v.symbol}: feature layout differs from the decision stage's")
        keys = [(v.tf, v.venue, v.symbol) for v in vectors]
        books = [(v.venue, f"{v.symbol}/{v.tf}") for v in vectors]
        rows = self._row_ids(keys)
        features = np.stack([v.array() for v in vectors])
        price = np.array([v.close for v in vectors], dtype=np.float64)
        ts = np.array([v.start_ns for v in vectors], dtype=np.int64)
        fc = [p.get("forecast") for p in predictions]
        p_up = np.array([_first(p, "P_UP") for p in fc])
        anomaly = np.array([_first(p.get("anomaly"), "FLAG", 0.0) > 0.5 for p in predictions])
        regime = np.array([int(_first(p.get("regime"), "LABEL", 1.0)) for p in predictions])
        ok_px = np.isfinite(price) & (price > 0)
        if ok_px.any():
            sel = np.flatnonzero(ok_px)
            self.portfolio.mark([books[i] for i in sel], price[sel], ts[sel])
        d = self.engine.step(rows, features, price, p_up=np.where(np.isfinite(p_up), p_up, np.nan)
                             if np.isfinite(p_up).any() else None, anomaly=anomaly, regime=regime)
        stop, take = stops(d.action, price, features[:, self._atr], self.risk)
        pf = self.portfolio
        z = size(d.action, d.confidence, price, stop, take, equity=pf.equity, drawdown=pf.drawdown,
                 daily_loss=pf.daily_loss, exposure=pf.gross_exposure,
                 position_notional=pf.position_notional(books), settings=self.risk)
        fraction, notional, qty = z.fraction * d.size_factor, z.notional * d.size_factor, z.qty * d.size_factor
        trade = np.flatnonzero(qty != 0)
        if trade.size:
            pf.apply_fills([books[i] for i in trade], qty[trade], price[trade], ts[trade], "signal",
                           ids=[sig_id(*keys[i], int(ts[i])) for i in trade])
        return self._signals(vectors, predictions, d, z, fraction, notional, qty, stop, take, price, features)

    def _signals(self, vectors, predictions, d, z, fraction, notional, qty, stop, take, price,
                 features) -> list[Signal]:
        # Plain Python lists, zipped: indexing NumPy arrays element by element would cost more
        # than everything else the stage does.
        rows = zip(vectors, predictions, d.action.tolist(), d.confidence.tolist(), d.score.tolist(),
                   z.risk_reward.tolist(), z.expected_value.tolist(), z.kelly.tolist(), fraction.tolist(),
                   notional.tolist(), qty.tolist(), stop.tolist(), take.tolist(), price.tolist(), z.veto.tolist(),
                   d.veto.tolist(), np.isfinite(d.votes).tolist(), d.contributions.tolist(),
                   features[:, self._rule_cols].tolist())
        out = []
        calibrated = d.calibrated
        for (v, preds, action, conf, score, rr, ev, kel, frac, notion, q, sl, tp, px, zveto, dveto, has, contribs,
             rule_values) in rows:
            contrib = {s: c for s, c, h in zip(SOURCES, contribs, has) if h}
            strongest = sorted((s for s in _RULES if s in contrib), key=lambda s: -abs(contrib[s]))[:2]
            top = {n: rule_values[self._rule_index[n]] for s in strongest for n in RULE_FEATURES[s]}
            # The engine's veto, else the risk rules' when they kept a BUY/SELL at size 0.
            veto = VETO_REASONS[dveto] or (VETO_NAMES[zveto] if action and zveto else "")
            fc = preds.get("forecast")
            out.append(Signal(
                id=sig_id(v.tf, v.venue, v.symbol, v.start_ns), venue=v.venue, symbol=v.symbol, tf=v.tf,
                start_ns=v.start_ns, action=_ACTIONS[action], price=px, confidence=conf, score=score,
                expected_return=_first(fc, "MEAN"), uncertainty=_first(fc, "STD"), risk_reward=rr,
                expected_value=ev, kelly_fraction=kel, position_fraction=frac, position_size=notion, qty=q,
                stop_loss=sl, take_profit=tp, contributions=contrib, top_features=top,
                model_versions={m: p.version for m, p in preds.items()},
                degraded=any(p.degraded for p in preds.values()), veto=veto, calibrated=calibrated))
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
