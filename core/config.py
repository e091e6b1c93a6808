"""Configuration: frozen msgspec structs parsed once at the entry point and passed down.

One TOML file (``tickmesh --config FILE``) with a table per section; any value can be overridden
by an environment variable ``TICKMESH_<SECTION>__<FIELD>`` (e.g. ``TICKMESH_API__PORT=8080``;
lists as JSON, e.g. ``TICKMESH_SIM__SYMBOLS='["BTC-USD"]'``). Every field has a default, so an
empty file, or none, gives a working embedded mesh.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Mapping

import msgspec

from core.alerts import AlertSettings
from core.decision import Calibration, CalibrationMap, DecisionSettings, calibration_patterns
from core.errors import ConfigError
from core.risk import RiskSettings
from core.schema import TIMEFRAME_NS

__all__ = [
    "NatsConfig",
    "StreamsConfig",
    "EdgeConfig",
    "SimConfig",
    "WorkerConfig",
    "TritonConfig",
    "RouteConfig",
    "InferenceConfig",
    "StoreConfig",
    "ApiConfig",
    "Config",
    "load_config",
    "ENV_PREFIX",
]

ENV_PREFIX = "TICKMESH_"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535, description="0 picks a free port")]
Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NatsConfig(_Section):
    """Where NATS is. With ``url`` empty, tickmesh starts an embedded nats-server itself."""

    url: str = ""
    host: str = "127.0.0.1"
    port: Port = 4222
    monitor_port: Port = 8222
    ready_timeout_s: Positive = 10.0


class StreamsConfig(_Section):
    """JetStream limits applied by ``tickmesh streams ensure``."""

    md_max_age_s: Positive = 7 * 86400
    md_max_bytes: PositiveInt = 4 * 1024**3
    bars_max_age_s: Positive = 30 * 86400
    bars_max_bytes: PositiveInt = 1024**3
    feat_max_age_s: Positive = 7 * 86400
    feat_max_bytes: PositiveInt = 2 * 1024**3
    pred_max_age_s: Positive = 7 * 86400
    pred_max_bytes: PositiveInt = 1024**3
    sig_max_age_s: Positive = 90 * 86400
    sig_max_bytes: PositiveInt = 1024**3
    alert_max_age_s: Positive = 365 * 86400
    alert_max_bytes: PositiveInt = 256 * 1024**2
    dlq_max_age_s: Positive = 30 * 86400
    dlq_max_bytes: PositiveInt = 256 * 1024**2
    duplicate_window_s: Positive = 120.0
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1


class EdgeConfig(_Section):
    """The edge collector: which venue feed, and how it batches."""

    venue: str = "sim"
    flush_ms: Positive = 20.0
    max_batch: PositiveInt = 500
    max_pending_events: PositiveInt = 200_000
    max_clock_skew_s: Positive = 300.0


class SimConfig(_Section):
    """The simulated venue ``sim``: a seeded random walk, used because no network is assumed."""

    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    trades_per_s: Positive = 200.0
    quotes_per_s: Positive = 50.0
    seed: int = 7


class WorkerConfig(_Section):
    """The bar worker."""

    timeframes: list[str] = msgspec.field(default_factory=lambda: list(TIMEFRAME_NS))
    lateness_ms: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    fetch_batch: PositiveInt = 1024

    def __post_init__(self) -> None:
        unknown = [tf for tf in self.timeframes if tf not in TIMEFRAME_NS]
        if unknown:
            raise ValueError(f"unknown timeframes {unknown}; known: {list(TIMEFRAME_NS)}")


class FeaturesConfig(_Section):
    """The feature worker (bars in, feature vectors out).

    ``reference`` is the symbol beta and correlation are measured against, on the same venue
    and timeframe ("" leaves those features NaN).
    """

    device: Literal["cpu", "gpu"] = "cpu"
    reference: str = "BTC-USD"
    fetch_batch: PositiveInt = 1024
    snapshot_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class TritonConfig(_Section):
    """The Triton Inference Server.

    Empty ``url`` means the embedded tritonserver that `tickmesh up` starts (``tickmesh triton``);
    ``"host:port"`` is the gRPC endpoint of a server already running (e.g. the NGC container).
    Empty ``repo`` is this checkout's ``triton_models/``; empty ``runtime_venv`` is
    ``.venv-triton`` beside it. ``instance_kind = "gpu"`` loads every model with KIND_GPU instances
    (the repository stays as it is).
    """

    url: str = ""
    repo: str = ""
    runtime_venv: str = ""
    host: str = "127.0.0.1"
    grpc_port: Port = 8001
    http_port: Port = 8003
    metrics_port: Port = 8002
    instance_kind: Literal["cpu", "gpu"] = "cpu"
    ready_timeout_s: Positive = 180.0


class RouteConfig(_Section):
    """Version routing of one model (see `core.inference.Route`); 0 means none / latest."""

    production: Annotated[int, msgspec.Meta(ge=0)] = 0
    candidate: Annotated[int, msgspec.Meta(ge=0)] = 0
    canary_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    shadow: Annotated[int, msgspec.Meta(ge=0)] = 0


class InferenceConfig(_Section):
    """The inference worker (feature vectors in, predictions out).

    ``routes`` are the starting routes; ``tickmesh models promote|rollback|route`` change them
    live through the ``tickmesh_state`` KV bucket, which wins over this file.
    """

    models: list[str] = msgspec.field(default_factory=lambda: ["anomaly", "forecast", "regime"])
    window_ms: Positive = 2.0
    max_batch: PositiveInt = 256
    deadline_ms: Positive = 250.0
    breaker_failures: PositiveInt = 5
    breaker_open_s: Positive = 5.0
    fetch_batch: PositiveInt = 1024
    snapshot_interval_s: Positive = 5.0
    routes: dict[str, RouteConfig] = {}


class StoreConfig(_Section):
    """ClickHouse. Empty ``dsn`` means embedded chDB under ``<data_dir>/clickhouse``."""

    dsn: str = ""
    database: str = "tickmesh"


class ApiConfig(_Section):
    """The HTTP API and dashboard."""

    host: str = "127.0.0.1"
    port: Port = 8000


class Config(_Section):
    """Everything tickmesh reads, one section per component."""

    data_dir: str = ".tickmesh"
    nats: NatsConfig = NatsConfig()
    streams: StreamsConfig = StreamsConfig()
    edge: EdgeConfig = EdgeConfig()
    sim: SimConfig = SimConfig()
    worker: WorkerConfig = WorkerConfig()
    features: FeaturesConfig = FeaturesConfig()
    triton: TritonConfig = TritonConfig()
    inference: InferenceConfig = InferenceConfig()
    decision: DecisionSettings = DecisionSettings()
    risk: RiskSettings = RiskSettings()
    alerts: AlertSettings = AlertSettings()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()

    @property
    def store_dsn(self) -> str:
        return self.store.dsn or f"chdb:///{Path(self.data_dir).resolve() / 'clickhouse'}"

    @property
    def nats_store_dir(self) -> Path:
        return Path(self.data_dir).resolve() / "jetstream"

    def load_calibration(self) -> Calibration | CalibrationMap | None:
        """The confidence calibration the ``[decision]`` settings name, read now: with
        ``calibrations``, a `CalibrationMap` of their tables with ``calibration``'s as the
        fallback; else ``calibration``'s table alone (None when both are empty). Relative paths are
        taken from the working directory, as ``data_dir`` is.

        Raises:
            ConfigError: a malformed or ambiguous pattern, or a file missing or not a calibration
                (the message names the pattern and the file).
        """
        d = self.decision
        fallback = Calibration.load(Path(d.calibration).resolve()) if d.calibration else None
        if not d.calibrations:
            return fallback
        calibration_patterns(d.calibrations)  # the patterns first: no file is read for a bad one
        tables: dict[str, Calibration] = {}
        for pattern, path in d.calibrations.items():
            try:
                tables[pattern] = Calibration.load(Path(path).resolve())
            except ConfigError as exc:
                raise ConfigError(f"[decision] calibrations {pattern!r}: {exc}") from None
        return CalibrationMap(tables, fallback)


def _env_overrides(env: Mapping[str, str]) -> dict:
    out: dict = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # plain strings need no quotes
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Reads the TOML file (if any), applies ``TICKMESH_*`` overrides and validates the result.

    Raises:
        ConfigError: the file is missing or malformed, or a value is invalid (the message names it).
    """
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    data = _merge(data, _env_overrides(os.environ if env is None else env))
    try:
        # Env values arrive as text: strict=False lets "8080" become an int.
        cfg = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration{' in ' + str(path) if path else ''}: {exc}") from None
    try:
        calibration_patterns(cfg.decision.calibrations)  # the files are read by load_calibration
    except ConfigError as exc:
        raise ConfigError(f"invalid configuration{' in ' + str(path) if path else ''}: [decision] {exc}") from None
    return cfg
