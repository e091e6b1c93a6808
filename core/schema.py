"""The wire contract: every message tickmesh puts on NATS, defined once.

Market data travels as columnar batches for one (venue, kind, symbol). Each column is a
little-endian NumPy buffer in a msgpack ``bin`` field, so decoding a batch to arrays is one
``np.frombuffer`` per column and never loops per event in Python. Bars travel one per message so
their Nats-Msg-Id can be the bar's identity. Fields are only ever appended, always with a default;
the schema version travels in the ``Tm-Schema`` header.

The types made by the thousand per bar close (bars, feature vectors, predictions, signals) are
``gc=False``: they never take part in a reference cycle, and tracking them made the cyclic garbage
collector a third of a 10k-symbol decision step.

Example:
    >>> batch = TradeBatch.from_columns("kraken", "BTC-USD", ts_ns=[1], recv_ns=[2], px=[3.0],
    ...                                 qty=[0.5], side=[1], trade_id=[7])
    >>> codec = Codec()
    >>> codec.decode(codec.encode(batch)).columns()["px"]
    array([3.])
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Annotated, ClassVar, Union

import msgspec
import numpy as np

from core.errors import SchemaError

__all__ = [
    "SCHEMA_VERSION",
    "HDR_SCHEMA",
    "HDR_REASON",
    "HDR_MSG_ID",
    "HDR_TRACEPARENT",
    "TIMEFRAME_NS",
    "BUY",
    "SELL",
    "UNKNOWN_SIDE",
    "TradeBatch",
    "QuoteBatch",
    "Bar",
    "FeatureVector",
    "Prediction",
    "Signal",
    "Alert",
    "DeadLetter",
    "Envelope",
    "Codec",
    "batch_msg_id",
    "bar_msg_id",
    "feat_msg_id",
    "pred_msg_id",
    "sig_id",
    "risk_pct",
    "json_schema",
    "traceparent",
]

SCHEMA_VERSION = 1
HDR_SCHEMA = "Tm-Schema"
HDR_REASON = "Tm-Reason"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_TRACEPARENT = "traceparent"

# Bar timeframes, shortest first. Tokens are used verbatim in `bar.<tf>.*` subjects.
TIMEFRAME_NS: dict[str, int] = {
    "1s": 1_000_000_000,
    "5s": 5_000_000_000,
    "1m": 60_000_000_000,
    "5m": 300_000_000_000,
    "1h": 3_600_000_000_000,
}

# Aggressor side codes in the `side` column.
BUY = 1
SELL = -1
UNKNOWN_SIDE = 0

I64 = Annotated[bytes, msgspec.Meta(description="int64 little-endian column")]
F64 = Annotated[bytes, msgspec.Meta(description="float64 little-endian column")]
I8 = Annotated[bytes, msgspec.Meta(description="int8 column")]


class _Columnar(msgspec.Struct, array_like=True, frozen=True, tag=True):
    """A batch of events for one (venue, symbol) stored column by column."""

    venue: str
    symbol: str

    DTYPES: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_columns(cls, venue: str, symbol: str, **columns):
        """Builds a batch from array-likes, one per column in ``DTYPES``.

        Raises:
            SchemaError: a column is missing or the columns differ in length.
        """
        # The edge seals a batch every few events on a sparse feed: this runs tens of thousands
        # of times a second, so no set or dict is built on the way.
        try:
            arrays = [np.ascontiguousarray(columns[name], dtype=dt) for name, dt in cls.DTYPES.items()]
        except KeyError:
            missing = cls.DTYPES.keys() - columns.keys()
            raise SchemaError(f"{cls.__name__}: missing columns {sorted(missing)}") from None
        n = arrays[0].shape[0]
        for a in arrays:
            if a.shape[0] != n:
                lengths = {name: len(a) for name, a in zip(cls.DTYPES, arrays)}
                raise SchemaError(f"{cls.__name__}: ragged columns {lengths}")
        # DTYPES lists the columns in field order (tests/test_schema_subjects.py checks it).
        return cls(venue, symbol, *[a.tobytes() for a in arrays])

    def columns(self) -> dict[str, np.ndarray]:
        """Returns read-only NumPy views of every column.

        Raises:
            SchemaError: a column's byte length does not fit its dtype or the others.
        """
        out = {}
        n = None
        for name, dt in self.DTYPES.items():
            raw = getattr(self, name)
            itemsize = np.dtype(dt).itemsize
            if len(raw) % itemsize:
                raise SchemaError(f"{type(self).__name__}.{name}: {len(raw)} bytes is not a multiple of {itemsize}")
            col = np.frombuffer(raw, dtype=dt)
            if n is None:
                n = col.shape[0]
            elif col.shape[0] != n:
                raise SchemaError(f"{type(self).__name__}: column {name} has {col.shape[0]} rows, expected {n}")
            out[name] = col
        return out

    def __len__(self) -> int:
        first = next(iter(self.DTYPES))
        return len(getattr(self, first)) // np.dtype(self.DTYPES[first]).itemsize


class TradeBatch(_Columnar, tag="trade"):
    """Trades of one symbol on one venue, in arrival order.

    ``side`` is the aggressor (1 buy, -1 sell, 0 unknown). ``trade_id`` is the venue's id, or a
    deterministic id derived from the trade's fields where the venue sends none.
    """

    ts_ns: I64 = b""
    recv_ns: I64 = b""
    px: F64 = b""
    qty: F64 = b""
    side: I8 = b""
    trade_id: I64 = b""

    DTYPES: ClassVar[dict[str, str]] = {
        "ts_ns": "<i8", "recv_ns": "<i8", "px": "<f8", "qty": "<f8", "side": "i1", "trade_id": "<i8",
    }


class QuoteBatch(_Columnar, tag="quote"):
    """Top-of-book quotes of one symbol on one venue, in arrival order."""

    ts_ns: I64 = b""
    recv_ns: I64 = b""
    bid_px: F64 = b""
    bid_qty: F64 = b""
    ask_px: F64 = b""
    ask_qty: F64 = b""

    DTYPES: ClassVar[dict[str, str]] = {
        "ts_ns": "<i8", "recv_ns": "<i8", "bid_px": "<f8", "bid_qty": "<f8", "ask_px": "<f8", "ask_qty": "<f8",
    }


class Bar(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="bar"):
    """One closed OHLCV bar on event time: trades with ``start_ns <= ts_ns < start_ns + tf``."""

    venue: str
    symbol: str
    tf: str
    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    n_trades: int
    buy_volume: float
    sell_volume: float
    # Receive time of the newest trade in the bar: lets consumers measure edge-to-bar latency.
    last_recv_ns: int = 0


class FeatureVector(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="feat"):
    """The feature vector of one closed bar, on ``feat.<tf>.<venue>.<symbol>``.

    ``values`` holds one little-endian float64 per name in ``names`` (NaN where a feature is
    still warming up or undefined); `FeatureVector.array` decodes it without a copy. ``digest``
    identifies the layout (`core.features.engine.names_digest`).
    """

    venue: str
    symbol: str
    tf: str
    start_ns: int
    names: list[str]
    values: bytes
    digest: str = ""
    # Receive time of the newest trade of the bar: lets consumers measure edge-to-feature latency.
    last_recv_ns: int = 0
    # The bar's close: the price a decision taken on this vector refers to (NaN: unknown).
    close: float = float("nan")

    def array(self) -> np.ndarray:
        """The values as a read-only float64 array.

        Raises:
            SchemaError: the byte length does not match ``names``.
        """
        if len(self.values) != 8 * len(self.names):
            raise SchemaError(f"FeatureVector: {len(self.values)} value bytes for {len(self.names)} names")
        return np.frombuffer(self.values, dtype="<f8")


class Prediction(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="pred"):
    """One model's prediction for one feature vector, on ``pred.<model>.<venue>.<symbol>``.

    ``outputs`` holds the model's output tensors flattened (e.g. ``MEAN``: expected log return at
    1, 5, 15 bars). ``label``, ``confidence`` (0..1) and ``uncertainty`` summarise them the same way
    for every model (`core.models.serving`). ``version`` 0 with ``degraded`` means the rule-based
    fallback answered because Triton was down, slow or the circuit was open; ``reason`` says which.
    """

    model: str
    venue: str
    symbol: str
    tf: str
    start_ns: int
    version: int
    role: str
    outputs: dict[str, list[float]]
    label: str = ""
    confidence: float = 0.0
    uncertainty: float = 0.0
    degraded: bool = False
    reason: str = ""
    latency_us: int = 0
    # Receive time of the newest trade of the bar: edge-to-prediction latency.
    last_recv_ns: int = 0


class Signal(msgspec.Struct, array_like=True, frozen=True, kw_only=True, gc=False, tag="sig"):
    """An actionable signal for one bar of one symbol, on ``sig.<venue>.<symbol>``.

    Prices in the quote currency; ``confidence`` 0..100 (the calibrated probability that the
    action is right); ``expected_return`` and ``uncertainty`` are the forecast's log return and
    its std at the first horizon (NaN without a forecast); ``expected_value`` is in units of the
    amount risked; ``kelly_fraction`` the full Kelly fraction, ``position_fraction`` what the risk
    rules kept of it (of equity), ``position_size`` the signed notional and ``qty`` the signed
    quantity. ``contributions`` are each source's share of the vote, ``top_features`` the
    features behind the strongest rules, ``veto`` why a BUY/SELL view became HOLD or 0 size.
    """

    id: str
    venue: str
    symbol: str
    tf: str
    start_ns: int
    action: str
    price: float
    confidence: float
    score: float
    expected_return: float
    uncertainty: float
    risk_reward: float
    expected_value: float
    kelly_fraction: float
    position_fraction: float
    position_size: float
    qty: float
    stop_loss: float
    take_profit: float
    contributions: dict[str, float]
    top_features: dict[str, float]
    model_versions: dict[str, int]
    degraded: bool = False
    veto: str = ""
    calibrated: bool = False

    @property
    def risk_pct(self) -> float:
        """What a stop-out loses, in percent of the price (`risk_pct`)."""
        return risk_pct(self.price, self.stop_loss)


def risk_pct(price: float, stop_loss: float) -> float:
    """100 |price - stop_loss| / price: a stop-out's loss in percent of the price (NaN without a
    stop, e.g. a HOLD, or without a price > 0)."""
    return 100.0 * abs(price - stop_loss) / price if price > 0 else float("nan")


class Alert(msgspec.Struct, array_like=True, frozen=True, kw_only=True, tag="alert"):
    """An alert on ``alert.<priority>.<venue>.<symbol>``: the first signal of its window
    (`core.alerts.Alerter`) with the context a person needs to act (price, stops, indicators,
    a link to the chart)."""

    id: str
    priority: str
    venue: str
    symbol: str
    tf: str
    start_ns: int
    action: str
    title: str
    body: str
    context: dict[str, Union[float, str]]
    link: str
    count: int = 1
    signal_ids: list[str] = []


class DeadLetter(msgspec.Struct, array_like=True, frozen=True, tag="dlq"):
    """An input that a stage could not use, kept with the reason so nothing is silently dropped."""

    stage: str
    venue: str
    reason: str
    raw: bytes = b""
    recv_ns: int = 0
    symbol: str = ""
    detail: str = ""


Envelope = Union[TradeBatch, QuoteBatch, Bar, FeatureVector, Prediction, Signal, Alert, DeadLetter]


class Codec:
    """msgpack encoder and typed decoder for every wire type, built once per component."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Envelope)

    def encode(self, msg: Envelope) -> bytes:
        return self._encoder.encode(msg)

    def decode(self, data: bytes) -> Envelope:
        """Decodes any wire message.

        Raises:
            SchemaError: the bytes are not a valid tickmesh message.
        """
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"undecodable message: {exc}") from None



def batch_msg_id(kind: str, batch: TradeBatch | QuoteBatch) -> str:
    """Deterministic Nats-Msg-Id of a batch: a digest of its content, receive times excluded.

    The same batch republished after a crash, or collected by a second region, gets the same id
    and is stored once by JetStream's duplicate window.
    """
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{batch.venue}\x00{kind}\x00{batch.symbol}".encode())
    for name in batch.DTYPES:
        if name != "recv_ns":
            h.update(getattr(batch, name))
    return f"{batch.venue}.{kind}.{batch.symbol}.{h.hexdigest()}"


def bar_msg_id(bar: Bar) -> str:
    """Deterministic Nats-Msg-Id of a bar: its identity (timeframe, venue, symbol, start)."""
    return f"bar.{bar.tf}.{bar.venue}.{bar.symbol}.{bar.start_ns}"


def feat_msg_id(vec: FeatureVector) -> str:
    """Deterministic Nats-Msg-Id of a feature vector: its bar's identity."""
    return f"feat.{vec.tf}.{vec.venue}.{vec.symbol}.{vec.start_ns}"


def sig_id(tf: str, venue: str, symbol: str, start_ns: int) -> str:
    """Deterministic id (and Nats-Msg-Id) of a signal: its bar's identity."""
    return f"sig.{tf}.{venue}.{symbol}.{start_ns}"


def pred_msg_id(p: Prediction) -> str:
    """Deterministic Nats-Msg-Id of a prediction: the model and its bar's identity."""
    return f"pred.{p.model}.{p.tf}.{p.venue}.{p.symbol}.{p.start_ns}"


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def traceparent(parent: str | None = None) -> str:
    """A W3C ``traceparent`` header value for a new span.

    Continues the trace of ``parent`` (a received ``traceparent``) when it is valid, otherwise
    starts a new trace: the edge starts one per batch, and each stage passes it on.
    """
    match = _TRACEPARENT.match(parent) if parent else None
    trace_id = match.group(1) if match else os.urandom(16).hex()
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


def json_schema() -> dict:
    """JSON Schema of every wire type, for consumers in other languages."""
    return msgspec.json.schema(Envelope)
