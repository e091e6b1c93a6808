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
(`DecisionStage.decide_batch` → `SignalBatch`, written from the stage's columns, byte for byte
what `core.schema.Codec.encode` makes of each Signal); `DecisionStage.decide` decodes them.

Each (venue, symbol, timeframe) is its own paper book (a 1m and a 1h signal on the same symbol
do not trade one position).
"""

from __future__ import annotations

import hashlib
from itertools import repeat
from typing import Mapping, NamedTuple, Sequence

import msgspec
import numpy as np

from core.decision import RULE_FEATURES, SOURCES, VETO_REASONS, Calibration, DecisionEngine, DecisionSettings
from core.errors import SchemaError
from core.portfolio import Portfolio
from core.risk import VETO_NAMES, RiskSettings, size, stops
from core.schema import FeatureVector, Prediction, Signal, sig_id

__all__ = ["DecisionStage", "SignalBatch", "Feedback", "feedback_key", "Execution", "execution_key"]

_ACTIONS = {1: "BUY", -1: "SELL", 0: "HOLD"}
_RULES = [s for s in SOURCES if s in RULE_FEATURES]


# A Signal on the wire (msgspec, array_like and tagged) is a msgpack array: [tag, *fields]. The
# stage writes that form itself, straight from its columns (`SignalBatch`): the fields are split
# here into the head (strings and the bar time, per series), the float block, the two maps of
# evidence and the tail. A field added to Signal must be added here as well.
_HEAD_FIELDS = ("id", "venue", "symbol", "tf", "start_ns", "action")
_FLOAT_FIELDS = ("price", "confidence", "score", "expected_return", "uncertainty", "risk_reward", "expected_value",
                 "kelly_fraction", "position_fraction", "position_size", "qty", "stop_loss", "take_profit")
_TAIL_FIELDS = ("contributions", "top_features", "model_versions", "degraded", "veto", "calibrated")
if Signal.__struct_fields__ != _HEAD_FIELDS + _FLOAT_FIELDS + _TAIL_FIELDS:
    raise SchemaError("core.schema.Signal changed: update the signal encoder in core.signals (_HEAD_FIELDS...)")
_N_ITEMS = 1 + len(Signal.__struct_fields__)
# The array header and the tag, as msgspec writes them (the header of an array of Nones).
_SIGNAL_HEAD = (msgspec.msgpack.encode([None] * _N_ITEMS)[:-_N_ITEMS]
                + msgspec.msgpack.encode(Signal.__struct_config__.tag))
_FLOAT64 = b"\xcb"  # msgpack float 64 (msgspec writes every Python float so), big-endian bits follow
_BOOLS = (msgspec.msgpack.encode(False), msgspec.msgpack.encode(True))
# One byte string per veto code `_veto_codes` gives: the engine's reasons, then the risk rules'.
_VETOES = (*VETO_REASONS, *VETO_NAMES)
_ANOMALY = np.array([v == "anomaly" for v in _VETOES])  # per veto code: the signal's veto is "anomaly"
# The veto code (`_VETOES`) of a signal by [engine veto, risk veto, BUY/SELL]: the engine's veto,
# else the risk rules' when they kept a BUY/SELL at size 0.
_VETO_CODES = np.array([[[v if VETO_REASONS[v] else (len(VETO_REASONS) + z if view and z else 0)
                          for view in (False, True)] for z in range(len(VETO_NAMES))]
                        for v in range(len(VETO_REASONS))], dtype=np.int64)
_RULE_COLUMNS = [SOURCES.index(r) for r in _RULES]  # the rules' columns of the votes
_SOURCE_BITS = 1 << np.arange(len(SOURCES), dtype=np.int64)  # a set of voting sources as one int
_MAX_CACHED = 4096  # bound of the per-stage caches of encoded pieces (model versions, layouts)


class _Layout(NamedTuple):
    """The fixed middle of the payloads of rows with one set of voting sources and one pair of
    strongest rules: the float block, ``contributions`` and ``top_features``, with the markers
    and keys in place and zeros where each row's values go."""

    template: np.ndarray  # uint8 (size,)
    value_at: np.ndarray  # where the maps' values go (8 bytes each), in value order
    columns: np.ndarray  # where each map value comes from (columns of `_payloads`' value matrix)


def _map_layout(encode, keys: Sequence[str]) -> tuple[bytes, list[int]]:
    """A msgpack map of ``keys`` to zeros as msgspec encodes ``dict.fromkeys(keys, 0.0)``, and where
    each value's 8 bytes sit in it."""
    whole = encode(dict.fromkeys(keys, 0.0))
    items = [encode(k) + _FLOAT64 for k in keys]
    out = bytearray(whole[: len(whole) - sum(len(i) + 8 for i in items)])  # the map header
    slots = []
    for item in items:
        out += item
        slots.append(len(out))
        out += bytes(8)
    if bytes(out) != whole:  # keys repeated (a dict keeps one), or an unexpected encoding
        raise SchemaError(f"cannot lay out a signal map of {list(keys)}")
    return bytes(out), slots


class SignalBatch:
    """The signals of one `DecisionStage.decide_batch` call, encoded for the wire.

    ``payloads[i]`` is byte for byte what `core.schema.Codec.encode` makes of the i-th `Signal`,
    written from the stage's columns without making the Signal (or its dicts); `signals`
    decodes them all in one call, `signal` one. Everything a publisher needs per signal is here:
    ``keys[i]`` its series ``(tf, venue, symbol)`` (the subject), ``ids[i]`` its id (the
    Nats-Msg-Id), ``action[i]`` (int8: +1 BUY, -1 SELL, 0 HOLD) and whether it can raise an
    alert (`alerting`).
    """

    __slots__ = ("keys", "ids", "payloads", "action", "qty", "anomaly_veto", "_decoder")

    def __init__(self, keys: list[tuple[str, str, str]], ids: list[str], payloads: list[bytes],
                 action: np.ndarray, qty: np.ndarray, anomaly_veto: np.ndarray, decoder) -> None:
        self.keys = keys
        self.ids = ids
        self.payloads = payloads
        self.action = action
        self.qty = qty
        self.anomaly_veto = anomaly_veto
        self._decoder = decoder

    def __len__(self) -> int:
        return len(self.payloads)

    def __repr__(self) -> str:
        return (f"SignalBatch(signals={len(self)}, buy={int((self.action == 1).sum())}, "
                f"sell={int((self.action == -1).sum())})")

    def signals(self) -> list[Signal]:
        """Every signal as a `Signal`, decoded from its payload (all in one call)."""
        n = len(self.payloads)
        if not n:
            return []
        # The payloads as the items of one msgpack array (array 32 header: 0xdd, 4-byte length).
        return self._decoder.decode(b"".join([b"\xdd", n.to_bytes(4, "big"), *self.payloads]))

    def signal(self, i: int) -> Signal:
        """The i-th signal as a `Signal`."""
        return self._decoder.decode(b"\x91" + self.payloads[i])[0]  # a msgpack array of one (0x91)

    def alerting(self) -> np.ndarray:
        """Rows whose signal `core.alerts.priority` can give a priority: an anomaly veto, or a
        BUY/SELL with a non-zero quantity. Every other signal makes no alert and changes no
        alert state, so an alerter needs to see only these."""
        return np.flatnonzero(self.anomaly_veto | ((self.action != 0) & (self.qty != 0)))


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
        # The features any rule cites, in one block of columns for `_payloads`.
        self._cited_columns = sorted({c for _, cols in self._cited.values() for c in cols})
        self._init_wire()

    def _init_wire(self) -> None:
        """The encoder, decoder and caches of encoded pieces that `decide_batch` writes signals with."""
        self._encode = msgspec.msgpack.Encoder().encode
        self._decoder = msgspec.msgpack.Decoder(list[Signal])
        self._actions = {code: self._encode(name) for code, name in _ACTIONS.items()}
        self._wire: dict[tuple[str, str, str], tuple] = {}  # per series, see _series_wire
        self._versions: dict[tuple, bytes] = {(): self._encode({}) + _BOOLS[False]}  # see _evidence
        self._layouts: dict[int, _Layout] = {}
        self._scratch = np.empty(0, np.uint8)  # the payload matrix of _payloads, reused
        # Per calibrated flag, per veto code: the encoded veto and calibrated fields.
        self._veto_tails = {c: [self._encode(v) + _BOOLS[c] for v in _VETOES] for c in (False, True)}

    def _series(self, keys: list[tuple[str, str, str]]) -> list[tuple]:
        """Per key: its row (allocated for a new series, in order of first appearance), its paper
        book and the encoded pieces of its signals (`_series_wire`)."""
        get = self._wire.get
        out = [get(k) for k in keys]
        if None in out:
            new = [k for k in dict.fromkeys(keys) if k not in self._rows]
            if new:
                for k, r in zip(new, self.engine.grow(len(new)).tolist()):
                    self._rows[k] = r
            for i, k in enumerate(keys):
                if out[i] is None:
                    out[i] = self._wire.get(k) or self._series_wire(k)
        return out

    def _series_wire(self, key: tuple[str, str, str]) -> tuple:
        """(row, book, id prefix, msgpack of venue + symbol + tf) of a series, cached."""
        tf, venue, symbol = key
        enc = self._encode
        id_prefix = sig_id(tf, venue, symbol, 0)[:-1]  # the id at time 0, less the 0
        entry = (self._rows[key], (venue, f"{symbol}/{tf}"), id_prefix, enc(venue) + enc(symbol) + enc(tf))
        self._wire[key] = entry
        return entry

    def _evidence(self, predictions: Sequence[Mapping[str, Prediction]]) -> tuple:
        """Per vector, from its predictions: the forecast's P(up), mean and std at the first horizon
        (NaN without one), the anomaly flag, the regime label (1, normal, when unknown), and the
        encoded ``model_versions`` and ``degraded`` fields of its signal (cached per combination
        of models, versions and degraded flags: a handful)."""
        nan = np.nan
        ups, means, stds, flag, label, versions = [], [], [], [], [], []
        cache = self._versions
        empty = cache[()]
        for p in predictions:  # plain lists: assigning into NumPy rows one by one costs more
            if not p:
                ups.append(nan)
                means.append(nan)
                stds.append(nan)
                flag.append(0.0)
                label.append(1.0)
                versions.append(empty)
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
            q = p.get("regime")
            x = q.outputs.get("LABEL") if q is not None else None
            label.append(x[0] if x else 1.0)
            tail = cache.get(key)
            if tail is None:
                if len(cache) > _MAX_CACHED:
                    cache.clear()
                    cache[()] = empty
                tail = cache[key] = (self._encode({key[i]: key[i + 1] for i in range(0, len(key), 3)})
                                     + _BOOLS[any(key[2::3])])
            versions.append(tail)
        f64 = np.float64
        regime = np.nan_to_num(np.array(label, dtype=f64), nan=1.0).astype(np.int64)
        return (np.array(ups, f64), np.array(means, f64), np.array(stds, f64), np.array(flag, f64) > 0.5, regime,
                versions)

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
            return SignalBatch([], [], [], np.zeros(0, np.int8), np.zeros(0), np.zeros(0, bool), self._decoder)
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
        times = {t: (str(t), self._encode(t)) for t in set(starts)}
        if len(times) == 1:
            t_str = next(iter(times.values()))[0]
            ids = [w[2] + t_str for w in wire]
        else:
            ids = [w[2] + times[t][0] for w, t in zip(wire, starts)]
        features = np.frombuffer(b"".join([v.values for v in vectors]), dtype="<f8").reshape(len(vectors), -1)
        price = np.array([v.close for v in vectors], dtype=np.float64)
        ts = np.array(starts, dtype=np.int64)
        p_up, mean, std, anomaly, regime, versions = self._evidence(predictions)
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
                           ids=[ids[i] for i in trade.tolist()])
            # The newest signal's levels guard a position now on its side (opened, added to or
            # flipped); an order that only cut an opposite position leaves that one's levels.
            # size() trades only with finite levels on the right sides, so set_exits accepts them.
            mine = np.flatnonzero(np.sign(pf.position_notional(traded)) == np.sign(qty[trade]))
            if mine.size and self.risk.exits:
                pf.set_exits([traded[j] for j in mine.tolist()], stop[trade[mine]], take[trade[mine]])
        # (n, fields), as a transposed view: np.stack costs more for a few rows (the backtest's one).
        floats = np.array([price, d.confidence, d.score, mean, std, z.risk_reward, z.expected_value, z.kelly,
                           fraction, notional, qty, stop, take], dtype=np.float64).T
        veto = self._veto_codes(d, z)
        time_bytes = next(iter(times.values()))[1] if len(times) == 1 else [times[t][1] for t in starts]
        payloads = self._payloads(wire, ids, time_bytes, d, floats, features, versions, veto)
        return SignalBatch(keys, ids, payloads, d.action, qty, _ANOMALY[veto], self._decoder)

    def _veto_codes(self, d, z) -> np.ndarray:
        """Per row, an index into `_VETOES`: the engine's veto, else the risk rules' when they kept
        a BUY/SELL at size 0."""
        return _VETO_CODES[d.veto, z.veto, (d.action != 0).view(np.int8)]

    def _payloads(self, wire, ids, time_bytes, d, floats, features, versions, veto) -> list[bytes]:
        """Every row's payload: the same bytes `Codec.encode` writes for the Signal the row stands for.

        The middle of each payload (the floats and the two evidence maps) has one of a few fixed
        layouts (`_Layout`); all rows are written into one byte matrix from their layout's
        template, whatever the mix of layouts: the floats through one strided view (they sit at
        the same place in every layout), the maps' values by one scatter. What is left per row
        is joining byte strings.

        Args:
            time_bytes: the encoded bar time, one for all rows (bytes) or per row (a list).
        """
        n = len(ids)
        has = np.isfinite(d.votes)
        # The (up to) two strongest rules with a view, strongest first (-1: fewer had one).
        strength = np.where(has[:, _RULE_COLUMNS], np.abs(d.contributions[:, _RULE_COLUMNS]), -1.0)
        order = np.argsort(-strength, axis=1, kind="stable")[:, :2]
        ranked = strength[np.arange(n)[:, None], order] >= 0
        top = np.where(ranked, order, -1) + 1
        base = len(_RULES) + 1
        pattern = has.astype(np.int64) @ _SOURCE_BITS
        code = pattern * (base * base) + top[:, 0] * base + top[:, 1]
        # The distinct layout codes and each row's (np.unique without its sort: codes are small).
        present = np.bincount(code, minlength=1) > 0
        codes = np.flatnonzero(present)
        which = (np.cumsum(present) - 1)[code]
        layouts = [self._layouts.get(c) or self._layout(c, base) for c in codes.tolist()]
        size = max(lay.template.shape[0] for lay in layouts)
        width = size + 8  # a row's last 8 bytes take the padding values of shorter layouts
        k = max(lay.value_at.shape[0] for lay in layouts)
        templates = np.zeros((len(layouts), width), np.uint8)
        columns = np.zeros((len(layouts), k), np.int64)  # padding reads column 0 ...
        value_at = np.full((len(layouts), k), size, np.int64)  # ... and writes past the payload
        for g, lay in enumerate(layouts):
            templates[g, : lay.template.shape[0]] = lay.template
            columns[g, : lay.columns.shape[0]] = lay.columns
            value_at[g, : lay.value_at.shape[0]] = lay.value_at
        # The matrix lives on between calls: a fresh one each time cost more in page faults than
        # everything written into it.
        if self._scratch.shape[0] < n * width:
            self._scratch = np.empty(2 * n * width, np.uint8)
        block = self._scratch[: n * width].reshape(n, width)
        np.take(templates, which, axis=0, out=block)
        # The float block: a marker byte then 8 big-endian bytes per field, from offset 0. (Writing
        # into a big-endian view swaps the bytes: every bit is kept, NaN payloads and -0.0 too.)
        np.ndarray((n, len(_FLOAT_FIELDS)), ">f8", block, 1, (width, 1 + 8))[:] = floats
        if k:
            # The maps' values, each 8 bytes at any byte offset: a float view that starts at
            # every byte (stride 1) takes them all in one assignment.
            values = np.concatenate([d.contributions, features[:, self._cited_columns]], axis=1)
            at = columns[which] + (np.arange(n) * values.shape[1])[:, None]
            to = value_at[which] + (np.arange(n) * width)[:, None]
            np.ndarray((n * width - 7,), ">f8", block, 0, (1,))[to.ravel()] = values.reshape(-1)[at.ravel()]
        flat = memoryview(block.reshape(-1))
        starts = np.arange(0, n * width, width)
        ends = starts + np.array([lay.template.shape[0] for lay in layouts])[which]
        middles = [flat[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
        tails = self._veto_tails[bool(d.calibrated)]
        return list(map(b"".join, zip(repeat(_SIGNAL_HEAD), map(self._encode, ids), [w[3] for w in wire],
                                      repeat(time_bytes) if isinstance(time_bytes, bytes) else time_bytes,
                                      map(self._actions.__getitem__, d.action.tolist()), middles, versions,
                                      map(tails.__getitem__, veto.tolist()))))

    def _layout(self, code: int, base: int) -> _Layout:
        """The `_Layout` of a layout code (voting sources, strongest rules), cached."""
        pattern, pair = divmod(code, base * base)
        sources = [j for j in range(len(SOURCES)) if pattern >> j & 1]
        names, cols = self._cited[(pair // base - 1, pair % base - 1)]
        template = bytearray((_FLOAT64 + bytes(8)) * len(_FLOAT_FIELDS))
        slots = []
        for keys in ([SOURCES[j] for j in sources], names):
            part, at = _map_layout(self._encode, keys)
            slots += [len(template) + s for s in at]
            template += part
        # Where each map value comes from in `_payloads`' matrix: contributions, then features.
        columns = [*sources, *(len(SOURCES) + self._cited_columns.index(c) for c in cols)]
        if len(self._layouts) > _MAX_CACHED:
            self._layouts.clear()
        lay = self._layouts[code] = _Layout(np.frombuffer(bytes(template), np.uint8), np.array(slots, dtype=np.int64),
                                            np.array(columns, dtype=np.int64))
        return lay

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
        self._wire = {}
