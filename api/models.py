"""Response types of the REST and WebSocket API, as msgspec Structs (they also drive the OpenAPI schema).

Field names and units follow the wire schema (`core.schema`): times are int64 epoch nanoseconds.
JavaScript numbers hold integers exactly only up to 2**53, so browser clients should treat ``*_ns``
fields as approximate (to within a microsecond) or read them as strings.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Literal

import msgspec

from core.schema import TIMEFRAME_NS, Bar, risk_pct

__all__ = [
    "BarOut",
    "TradeOut",
    "FeatureRowOut",
    "FeaturesOut",
    "PredictionOut",
    "SignalOut",
    "FeedbackOut",
    "FeedbackEntryOut",
    "SimilarSignalOut",
    "SimilarOut",
    "AlertOut",
    "PositionOut",
    "PortfolioOut",
    "SymbolOut",
    "SymbolsOut",
    "ErrorOut",
    "NatsHealth",
    "StoreHealth",
    "SinkHealth",
    "ComponentHealth",
    "Health",
]


class BarOut(msgspec.Struct, frozen=True):
    """One closed OHLCV bar; the same fields as `core.schema.Bar`, as a JSON object."""

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
    last_recv_ns: int = 0

    @classmethod
    def from_bar(cls, bar: Bar) -> "BarOut":
        return cls(**msgspec.structs.asdict(bar))


class FeatureRowOut(msgspec.Struct, frozen=True, array_like=True):
    """One feature vector as ``[start_ns, [values...]]``; ``null`` where a feature is undefined."""

    start_ns: int
    values: list[float | None]


class FeaturesOut(msgspec.Struct, frozen=True):
    """Feature vectors of one series: ``names`` once, then one row per closed bar."""

    venue: str
    symbol: str
    timeframe: str
    names: list[str]
    rows: list[FeatureRowOut]


class PredictionOut(msgspec.Struct, frozen=True):
    """One model's prediction for one bar (`core.schema.Prediction`).

    ``outputs`` are the model's tensors (e.g. forecast ``MEAN``/``STD``/``P_UP`` at 1, 5, 15 bars);
    ``confidence`` is 0..1; ``degraded`` marks the rule-based fallback (``version`` 0).
    """

    model: str
    venue: str
    symbol: str
    tf: str
    start_ns: int
    version: int
    role: str
    label: str
    confidence: float
    uncertainty: float
    degraded: bool
    reason: str
    outputs: dict[str, list[float]]
    latency_us: int
    last_recv_ns: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "PredictionOut":
        return cls(**{f: row[f] for f in cls.__struct_fields__})


class SignalOut(msgspec.Struct, frozen=True):
    """One signal (`core.schema.Signal`), with ``timestamp`` (the bar's close, ISO-8601 UTC) and
    ``timeframe`` as a trader reads them. NaN numbers (no stop while ATR warms up) are ``null``."""

    id: str
    timestamp: str
    venue: str
    symbol: str
    timeframe: str
    start_ns: int
    action: str
    price: float | None
    confidence: float
    score: float | None
    expected_return: float | None
    uncertainty: float | None
    risk_reward: float | None
    expected_value: float | None
    kelly_fraction: float | None
    position_fraction: float
    position_size: float
    qty: float
    stop_loss: float | None
    take_profit: float | None
    risk_pct: float | None  # a stop-out's loss, percent of the price (null without a stop)
    contributions: dict[str, float]
    top_features: dict[str, float | None]
    model_versions: dict[str, int]
    degraded: bool
    veto: str
    calibrated: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SignalOut":
        end_ns = row["start_ns"] + TIMEFRAME_NS[row["tf"]]
        stamp = datetime.fromtimestamp(end_ns // 1_000_000_000, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        fields = {k: _finite(v) for k, v in row.items() if k not in ("tf",)}
        fields["top_features"] = {k: _finite(v) for k, v in row["top_features"].items()}
        fields["degraded"], fields["calibrated"] = bool(row["degraded"]), bool(row["calibrated"])
        fields["risk_pct"] = _finite(risk_pct(row["price"], row["stop_loss"]))
        return cls(timestamp=stamp, timeframe=row["tf"], **fields)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


class FeedbackEntryOut(msgspec.Struct, frozen=True):
    """One verdict given on a signal."""

    kind: str
    note: str
    received_ns: int


class FeedbackOut(msgspec.Struct, frozen=True):
    """The verdict just stored, and every verdict on that signal so far (oldest first)."""

    id: str
    kind: str
    note: str
    received_ns: int
    history: list[FeedbackEntryOut]


class SimilarSignalOut(msgspec.Struct, frozen=True):
    """An earlier signal like the one asked about, and its outcome (log return; null: unknown)."""

    id: str
    start_ns: int
    score: float
    confidence: float
    degraded: bool
    outcome: float | None


class SimilarOut(msgspec.Struct, frozen=True):
    """How past signals like ``id`` did ``horizon_bars`` bars later."""

    id: str
    action: str
    score: float
    horizon_bars: int
    count: int
    with_outcome: int
    hit_rate: float | None
    mean_return: float | None
    median_return: float | None
    similar: list[SimilarSignalOut]


class AlertOut(msgspec.Struct, frozen=True):
    """One alert (`core.schema.Alert`)."""

    id: str
    priority: str
    venue: str
    symbol: str
    tf: str
    start_ns: int
    action: str
    title: str
    body: str
    context: dict[str, Any]
    link: str
    count: int
    signal_ids: list[str]


class PositionOut(msgspec.Struct, frozen=True):
    """One paper position: signed ``qty``, average and last price, P&L, signed exposure and the
    stop-loss / take-profit that close it at a bar close crossing them (null: none)."""

    venue: str
    symbol: str
    timeframe: str
    qty: float
    avg_px: float | None
    last_px: float | None
    unrealized: float | None
    realized: float
    exposure: float | None
    stop_px: float | None = None
    take_px: float | None = None


class PortfolioOut(msgspec.Struct, frozen=True):
    """The paper account: quote-currency amounts; ``drawdown`` and ``daily_loss`` as fractions."""

    updated_ns: int
    last_seq: int
    equity: float
    cash: float
    realized: float
    unrealized: float
    gross_exposure: float
    net_exposure: float
    peak_equity: float
    start_of_day_equity: float
    drawdown: float
    daily_loss: float
    n_fills: int
    positions: list[PositionOut]


class TradeOut(msgspec.Struct, frozen=True):
    """One trade; ``side`` is the aggressor (1 buy, -1 sell, 0 unknown)."""

    venue: str
    symbol: str
    ts_ns: int
    recv_ns: int
    px: float
    qty: float
    side: int
    trade_id: int


class SymbolOut(msgspec.Struct, frozen=True):
    """A (venue, symbol) that has stored trades, with their count and time span."""

    venue: str
    symbol: str
    trades: int
    first_ns: int
    last_ns: int


class SymbolsOut(msgspec.Struct, frozen=True):
    """Everything a client needs to pick a series: the timeframes and the known symbols."""

    timeframes: list[str]
    symbols: list[SymbolOut]


class ErrorOut(msgspec.Struct, frozen=True):
    """The body of every 4xx/5xx answer; ``param`` names the offending query parameter, if any."""

    status_code: int
    detail: str
    param: str | None = None


class NatsHealth(msgspec.Struct, frozen=True):
    connected: bool
    url: str


class StoreHealth(msgspec.Struct, frozen=True):
    ok: bool
    error: str | None = None


class SinkHealth(msgspec.Struct, frozen=True):
    """The ClickHouse sink. ``owned`` is false when another process runs it (``--no-sink``).

    ``lag`` is the number of messages its durable consumers have not yet acknowledged, summed;
    ``pending`` has it per consumer. Both are None when JetStream could not be asked.
    """

    owned: bool
    running: bool
    restarts: int = 0
    lag: int | None = None
    pending: dict[str, int] | None = None
    error: str | None = None


class ComponentHealth(msgspec.Struct, frozen=True):
    """The latest metrics snapshot a component published on ``tickmesh.metrics.<name>``."""

    subject: str
    age_s: float
    snapshot: dict[str, Any]


class Health(msgspec.Struct, frozen=True):
    """``ok`` when NATS and the store are up (HTTP 200), ``degraded`` otherwise (HTTP 503)."""

    status: Literal["ok", "degraded"]
    nats: NatsHealth
    store: StoreHealth
    sink: SinkHealth
    components: dict[str, ComponentHealth]
