"""Signals written for the wire from a decision stage's columns.

`core.signals.DecisionStage` decides a batch of signals as columns (NumPy arrays, one row per
signal); `SignalEncoder` writes each row's payload from those columns, byte for byte what
`core.schema.Codec.encode` makes of the `core.schema.Signal` the row stands for, without making
the Signal (or its dicts). The payloads come out as a `SignalBatch`, which decodes them on demand.
"""

from __future__ import annotations

from itertools import repeat
from typing import Iterable, NamedTuple, Sequence

import msgspec
import numpy as np

from core.decision import RULE_FEATURES, SOURCES, VETO_REASONS
from core.errors import SchemaError
from core.risk import VETO_NAMES
from core.schema import Signal

__all__ = ["SignalEncoder", "SignalBatch"]

_ACTIONS = {1: "BUY", -1: "SELL", 0: "HOLD"}
_RULES = [s for s in SOURCES if s in RULE_FEATURES]

# A Signal on the wire (msgspec, array_like and tagged) is a msgpack array: [tag, *fields]. The
# encoder writes that form itself, straight from the stage's columns: the fields are split here
# into the head (strings and the bar time, per series), the float block, the two maps of
# evidence and the tail. A field added to Signal must be added here as well.
_HEAD_FIELDS = ("id", "venue", "symbol", "tf", "start_ns", "action")
_FLOAT_FIELDS = ("price", "confidence", "score", "expected_return", "uncertainty", "risk_reward", "expected_value",
                 "kelly_fraction", "position_fraction", "position_size", "qty", "stop_loss", "take_profit")
_TAIL_FIELDS = ("contributions", "top_features", "model_versions", "degraded", "veto", "calibrated")
if Signal.__struct_fields__ != _HEAD_FIELDS + _FLOAT_FIELDS + _TAIL_FIELDS:
    raise SchemaError("core.schema.Signal changed: update the signal encoder in core.signal_wire (_HEAD_FIELDS...)")
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
_MAX_CACHED = 4096  # bound of the per-encoder caches of encoded pieces (model versions, layouts)


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
    """The signals of one `core.signals.DecisionStage.decide_batch` call, encoded for the wire.

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


class SignalEncoder:
    """Writes a decision stage's signals for the wire; built once per stage.

    Owns the msgpack encoder and decoder and the caches of encoded pieces: actions, model
    versions (`versions`, `version_tail`), payload layouts, veto tails and the byte matrix
    payloads are written into, reused between calls.

    Args:
        names: the feature layout of the vectors; it holds every feature a rule cites (the
            stage checks).
    """

    def __init__(self, names: Sequence[str]) -> None:
        names = list(names)
        # Per pair of strongest rules (indices into _RULES, -1: none): the features they cite
        # and where those sit in a vector.
        self._cited = {}
        for a in range(-1, len(_RULES)):
            for b in range(-1, len(_RULES)):
                cited = [f for r in (a, b) if r >= 0 for f in RULE_FEATURES[_RULES[r]]]
                self._cited[(a, b)] = cited, [names.index(f) for f in cited]
        # The features any rule cites, in one block of columns for `_payloads`.
        self._cited_columns = sorted({c for _, cols in self._cited.values() for c in cols})
        self._encode = msgspec.msgpack.Encoder().encode
        self._decoder = msgspec.msgpack.Decoder(list[Signal])
        self._actions = {code: self._encode(name) for code, name in _ACTIONS.items()}
        # Per key of a vector's predictions (see `version_tail`): its encoded model_versions and
        # degraded fields. Public so that a per-row loop pays a dict lookup per hit, not a call.
        self.versions: dict[tuple, bytes] = {(): self._encode({}) + _BOOLS[False]}
        self._layouts: dict[int, _Layout] = {}
        self._scratch = np.empty(0, np.uint8)  # the payload matrix of _payloads, reused
        # Per calibrated flag, per veto code: the encoded veto and calibrated fields.
        self._veto_tails = {c: [self._encode(v) + _BOOLS[c] for v in _VETOES] for c in (False, True)}

    def series(self, tf: str, venue: str, symbol: str) -> bytes:
        """The encoded venue, symbol and tf of a series' signals (for the caller to keep)."""
        enc = self._encode
        return enc(venue) + enc(symbol) + enc(tf)

    def version_tail(self, key: tuple) -> bytes:
        """The encoded ``model_versions`` and ``degraded`` fields of a signal, kept in `versions`.

        Args:
            key: the signal's predictions as a flat tuple of (model, version, degraded) triples,
                ``()`` for none.
        """
        cache = self.versions
        if len(cache) > _MAX_CACHED:
            empty = cache[()]
            cache.clear()
            cache[()] = empty
        tail = cache[key] = self._encode({key[i]: key[i + 1] for i in range(0, len(key), 3)}) + _BOOLS[any(key[2::3])]
        return tail

    def empty(self) -> SignalBatch:
        """The batch of no signals."""
        return SignalBatch([], [], [], np.zeros(0, np.int8), np.zeros(0), np.zeros(0, bool), self._decoder)

    def encode(self, keys: list[tuple[str, str, str]], ids: list[str], series: list[bytes], starts: list[int],
               bar_times: Iterable[int], d, z, floats: np.ndarray, qty: np.ndarray, features: np.ndarray,
               versions: list[bytes]) -> SignalBatch:
        """The batch of one call's signals, one per row.

        Args:
            keys: per row, its series ``(tf, venue, symbol)``.
            ids: per row, its signal's id.
            series: per row, `series` of its series.
            starts: per row, the bar time (``start_ns``).
            bar_times: the distinct values of ``starts``.
            d: the `core.decision.DecisionEngine.step` result of the rows.
            z: the `core.risk.size` result of the rows (its ``veto``).
            floats: (n, fields) float64: the Signal's float fields in `_FLOAT_FIELDS` order.
            qty: per row, the signed quantity (the ``qty`` field).
            features: (n, features) float64: the vectors' values.
            versions: per row, the `version_tail` of its predictions.
        """
        times = {t: self._encode(t) for t in bar_times}
        time_bytes = next(iter(times.values())) if len(times) == 1 else [times[t] for t in starts]
        veto = self._veto_codes(d, z)
        payloads = self._payloads(ids, series, time_bytes, d, floats, features, versions, veto)
        return SignalBatch(keys, ids, payloads, d.action, qty, _ANOMALY[veto], self._decoder)

    def _veto_codes(self, d, z) -> np.ndarray:
        """Per row, an index into `_VETOES`: the engine's veto, else the risk rules' when they kept
        a BUY/SELL at size 0."""
        return _VETO_CODES[d.veto, z.veto, (d.action != 0).view(np.int8)]

    def _payloads(self, ids, series, time_bytes, d, floats, features, versions, veto) -> list[bytes]:
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
        mixed = d.calibrated_rows
        if mixed is None or mixed.all() or not mixed.any():  # one flag for the whole close: the usual case
            tails, tail_codes = self._veto_tails[bool(d.calibrated)], veto.tolist()
        else:  # series with and without a table (`core.decision.CalibrationMap`)
            tails = self._veto_tails[False] + self._veto_tails[True]
            tail_codes = (veto.astype(np.int64) + len(_VETOES) * mixed).tolist()
        return list(map(b"".join, zip(repeat(_SIGNAL_HEAD), map(self._encode, ids), series,
                                      repeat(time_bytes) if isinstance(time_bytes, bytes) else time_bytes,
                                      map(self._actions.__getitem__, d.action.tolist()), middles, versions,
                                      map(tails.__getitem__, tail_codes))))

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
