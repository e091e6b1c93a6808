"""The decision stage: feature vectors and the predictions made for them → signals.

One object, used the same way live and in a replay, so that a replay of the same inputs gives the
same signals. For the vectors of one call (one per series: a bar close as `core.closes.BarCloses`
groups them, which the live worker and the backtest both use), all at once: the paper portfolio
is marked at the bars' closes and positions whose stop-loss or take-profit the close crossed are
closed, the `core.decision.DecisionEngine` votes (rules + forecast, anomaly veto, regime size),
`core.risk` turns the action into ATR stops, risk-reward, Kelly and a position size within the
limits, the paper portfolio takes the order as a fill (its stop and take-profit guard the
position from then on), and one `core.schema.Signal` per vector records all of it with the
evidence (contributions, top features, model versions). The signals come out encoded for the wire
(`DecisionStage.decide_batch` → `SignalBatch`: `core.signal_wire.SignalEncoder` writes them from
the stage's columns, byte for byte what `core.schema.Codec.encode` makes of each Signal);
`DecisionStage.decide` decodes them.

Each (venue, symbol, timeframe) is its own paper book (a 1m and a 1h signal on the same symbol
do not trade one position).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import msgspec
import numpy as np

from core.decision import RULE_FEATURES, SOURCES, Calibration, CalibrationMap, DecisionEngine, DecisionSettings
from core.errors import SchemaError
from core.portfolio import Portfolio
from core.risk import RiskSettings, bar_std, size, stops
from core.schema import FeatureVector, Prediction, Signal, sig_id
from core.signal_wire import SignalBatch, SignalEncoder  # SignalBatch: re-exported, decide_batch's type

__all__ = ["DecisionStage", "SignalBatch", "Feedback", "feedback_key", "Execution", "execution_key"]


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
        calibration: a fitted confidence table for every series, or one per series pattern
            (`core.decision.CalibrationMap`, resolved once per series); None: uncalibrated.
    """

    def __init__(self, names: Sequence[str], settings: DecisionSettings | None = None,
                 risk: RiskSettings | None = None, calibration: Calibration | CalibrationMap | None = None) -> None:
        self.names = list(names)
        self.engine = DecisionEngine(self.names, settings, calibration)
        self.risk = risk or RiskSettings()
        self.portfolio = Portfolio(self.risk.equity_start)
        self._rows: dict[tuple[str, str, str], int] = {}
        rule_names = [n for names in RULE_FEATURES.values() for n in names]
        missing = [n for n in ["atr_14", *rule_names] if n not in self.names]
        if missing:
            raise SchemaError(f"the feature layout lacks {missing}, which the rules and stops read")
        self._atr = self.names.index("atr_14")
        # Volatility estimates for sizing (`core.risk.bar_std`): ATR, and the realized std when the layout has it.
        self._vol = [self.names.index(n) for n in ("ret_std_20",) if n in self.names]
        self._encoder = SignalEncoder(self.names)
        self._series_cache: dict[tuple[str, str, str], tuple] = {}  # per series, see _series_entry

    def _series(self, keys: list[tuple[str, str, str]]) -> list[tuple]:
        """Per key: its row (allocated for a new series, in order of first appearance), its paper
        book, its signals' id prefix and encoded series (`_series_entry`)."""
        get = self._series_cache.get
        out = [get(k) for k in keys]
        if None in out:
            new = [k for k in dict.fromkeys(keys) if k not in self._rows]
            if new:
                grown = self.engine.grow(len(new))
                for k, r in zip(new, grown.tolist()):
                    self._rows[k] = r
                self.engine.bind(grown, [(venue, symbol, tf) for tf, venue, symbol in new])
            for i, k in enumerate(keys):
                if out[i] is None:
                    out[i] = self._series_cache.get(k) or self._series_entry(k)
        return out

    def _series_entry(self, key: tuple[str, str, str]) -> tuple:
        """(row, book, id prefix, `SignalEncoder.series`) of a series, cached."""
        tf, venue, symbol = key
        id_prefix = sig_id(tf, venue, symbol, 0)[:-1]  # the id at time 0, less the 0
        entry = (self._rows[key], (venue, f"{symbol}/{tf}"), id_prefix, self._encoder.series(tf, venue, symbol))
        self._series_cache[key] = entry
        return entry

    def _evidence(self, predictions: Sequence[Mapping[str, Prediction]]) -> tuple:
        """Per vector, from its predictions: the forecast's P(up), mean and std at the first horizon
        (NaN without one), the anomaly flag, the regime label (1, normal, when unknown), the
        encoded ``model_versions`` and ``degraded`` fields of its signal (`SignalEncoder.version_tail`,
        cached per combination of models, versions and degraded flags: a handful), and the anomaly
        SCORE (NaN without one, and for a degraded answer: the fallback's scores are on another
        scale than the model's, so they neither judge against nor move the series' quantile)."""
        nan = np.nan
        ups, means, stds, flag, label, versions, score = [], [], [], [], [], [], []
        tails = self._encoder.versions
        empty = tails[()]
        for p in predictions:  # plain lists: assigning into NumPy rows one by one costs more
            if not p:
                ups.append(nan)
                means.append(nan)
                stds.append(nan)
                flag.append(0.0)
                label.append(1.0)
                versions.append(empty)
                score.append(nan)
                continue
            key = ()
            for m, q in p.items():
                key += (m, q.version, q.degraded)
            f = p.get("forecast")
            if f is None:
                ups.append(nan)
                means.append(nan)
                stds.append(nan)
            else:
                o = f.outputs
                x = o.get("P_UP")
                ups.append(x[0] if x else nan)
                x = o.get("MEAN")
                means.append(x[0] if x else nan)
                x = o.get("STD")
                stds.append(x[0] if x else nan)
            q = p.get("anomaly")
            x = q.outputs.get("FLAG") if q is not None else None
            flag.append(x[0] if x else 0.0)
            x = q.outputs.get("SCORE") if q is not None and not q.degraded else None
            score.append(x[0] if x else nan)
            q = p.get("regime")
            x = q.outputs.get("LABEL") if q is not None else None
            label.append(x[0] if x else 1.0)
            tail = tails.get(key)
            if tail is None:
                tail = self._encoder.version_tail(key)
            versions.append(tail)
        f64 = np.float64
        regime = np.nan_to_num(np.array(label, dtype=f64), nan=1.0).astype(np.int64)
        return (np.array(ups, f64), np.array(means, f64), np.array(stds, f64), np.array(flag, f64) > 0.5, regime,
                versions, np.array(score, f64))

    def decide(self, vectors: Sequence[FeatureVector],
               predictions: Sequence[Mapping[str, Prediction]]) -> list[Signal]:
        """One signal per vector (one vector per series in a call): `decide_batch`'s, as `Signal`s.

        Args:
            vectors: feature vectors of one bar close, each with its ``close``.
            predictions: per vector, model name → the prediction made for it (may be empty).

        Raises:
            SchemaError: a vector of another feature layout.
        """
        return self.decide_batch(vectors, predictions).signals()

    def decide_batch(self, vectors: Sequence[FeatureVector],
                     predictions: Sequence[Mapping[str, Prediction]]) -> SignalBatch:
        """One signal per vector (one vector per series in a call), encoded for the wire.

        Args:
            vectors: feature vectors of one bar close, each with its ``close``.
            predictions: per vector, model name → the prediction made for it (may be empty).

        Raises:
            SchemaError: a vector of another feature layout.
        """
        if not vectors:
            return self._encoder.empty()
        width = 8 * len(self.names)
        checked = self.names
        for v in vectors:
            # Equal lists compare in C without a copy; anything else (a tuple) once more as a list.
            # Vectors of one close often share one names list: it is compared once.
            names = v.names
            if names is not checked:
                if names != self.names and list(names) != self.names:
                    raise SchemaError(f"{v.venue}/{v.symbol}: feature layout differs from the decision stage's")
                checked = names
            if len(v.values) != width:
                raise SchemaError(f"{v.venue}/{v.symbol}: {len(v.values)} value bytes for {len(v.names)} names")
        keys = [(v.tf, v.venue, v.symbol) for v in vectors]
        wire = self._series(keys)
        rows = np.array([w[0] for w in wire], dtype=np.int64)
        books = [w[1] for w in wire]
        starts = [v.start_ns for v in vectors]
        # The ids: each series' prefix and the bar time (a close usually has one).
        times = {t: str(t) for t in set(starts)}
        if len(times) == 1:
            t_str = next(iter(times.values()))
            ids = [w[2] + t_str for w in wire]
        else:
            ids = [w[2] + times[t] for w, t in zip(wire, starts)]
        features = np.frombuffer(b"".join([v.values for v in vectors]), dtype="<f8").reshape(len(vectors), -1)
        price = np.array([v.close for v in vectors], dtype=np.float64)
        ts = np.array(starts, dtype=np.int64)
        p_up, mean, std, anomaly, regime, versions, anomaly_score = self._evidence(predictions)
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
                               ids=[f"exit.{why}.{ids[i]}" for i, why in zip(sel[ex.index].tolist(), ex.reason)])
        d = self.engine.step(rows, features, price, p_up=p_up if np.isfinite(p_up).any() else None,
                             anomaly=anomaly, regime=regime, anomaly_score=anomaly_score)
        stop, take = stops(d.action, price, features[:, self._atr], self.risk)
        z = size(d.action, d.confidence, price, stop, take, equity=pf.equity, drawdown=pf.drawdown,
                 daily_loss=pf.daily_loss, exposure=pf.gross_exposure,
                 position_notional=pf.position_notional(books), settings=self.risk,
                 bar_std=bar_std(price, features[:, self._atr], std, *(features[:, j] for j in self._vol)))
        fraction, notional, qty = z.fraction * d.size_factor, z.notional * d.size_factor, z.qty * d.size_factor
        trade = np.flatnonzero(qty != 0)
        if trade.size:
            traded = [books[i] for i in trade.tolist()]
            pf.apply_fills(traded, qty[trade], price[trade], ts[trade], "signal",
                           ids=[ids[i] for i in trade.tolist()])
            # The newest signal's levels guard a position now on its side (opened, added to or
            # flipped); an order that only cut an opposite position leaves that one's levels.
            # size() trades only with finite levels on the right sides, so set_exits accepts them.
            mine = np.flatnonzero(np.sign(pf.position_notional(traded)) == np.sign(qty[trade]))
            if mine.size and self.risk.exits:
                pf.set_exits([traded[j] for j in mine.tolist()], stop[trade[mine]], take[trade[mine]])
        # (n, fields) in the order of Signal's float fields, as a transposed view: np.stack costs more
        # for a few rows (the backtest's one).
        floats = np.array([price, d.confidence, d.score, mean, std, z.risk_reward, z.expected_value, z.kelly,
                           fraction, notional, qty, stop, take], dtype=np.float64).T
        return self._encoder.encode(keys, ids, [w[3] for w in wire], starts, times, d, z, floats, qty, features,
                                    versions)

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
        self.engine.bind(np.array(list(self._rows.values()), dtype=np.int64),
                         [(venue, symbol, tf) for tf, venue, symbol in self._rows])
        self._series_cache = {}
