"""ClickHouse storage: the tables tickmesh writes and the queries the API reads.

One `Store` wraps one clickhouse-connect client. The same code talks to embedded chDB
(``chdb:///<dir>``, the default) and to a ClickHouse server (``http(s)://...``). chDB runs inside
this process and one process owns a given directory, so every client call goes through one lock
and async callers hand work to the Store's single worker thread with `Store.run`.

Tables are ReplacingMergeTree keyed by each row's identity and every read uses ``FINAL``, so a
batch redelivered after a crash (JetStream at-least-once) is counted once.

Example:
    >>> store = Store.open("chdb:///tmp/tickmesh-ch")
    >>> store.insert_trades([batch])
    >>> store.bars("kraken", "BTC-USD", "1m", limit=100)
    >>> store.close()
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import numpy as np

from core.errors import StoreError
from core.schema import TIMEFRAME_NS, Alert, Bar, DeadLetter, FeatureVector, Prediction, QuoteBatch, Signal, TradeBatch

__all__ = ["TABLES", "DDL", "Store"]

T = TypeVar("T")

_LC = "LowCardinality(String)"

# Column names and ClickHouse types per table: the single source for both the DDL and the
# explicit insert types (so an insert never asks the server for the table layout).
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "trades": (
        ("venue", _LC), ("symbol", _LC), ("ts_ns", "Int64"), ("recv_ns", "Int64"), ("px", "Float64"),
        ("qty", "Float64"), ("side", "Int8"), ("trade_id", "Int64"),
    ),
    "quotes": (
        ("venue", _LC), ("symbol", _LC), ("ts_ns", "Int64"), ("recv_ns", "Int64"), ("bid_px", "Float64"),
        ("bid_qty", "Float64"), ("ask_px", "Float64"), ("ask_qty", "Float64"),
    ),
    "bars": (
        ("venue", _LC), ("symbol", _LC), ("tf", _LC), ("start_ns", "Int64"), ("open", "Float64"),
        ("high", "Float64"), ("low", "Float64"), ("close", "Float64"), ("volume", "Float64"),
        ("vwap", "Float64"), ("n_trades", "Int64"), ("buy_volume", "Float64"), ("sell_volume", "Float64"),
        ("last_recv_ns", "Int64"),
    ),
    # One row per feature vector: a Map so that SQL (Grafana) reads `values['rsi_14']`.
    "features": (
        ("venue", _LC), ("symbol", _LC), ("tf", _LC), ("start_ns", "Int64"), ("digest", _LC),
        ("values", "Map(LowCardinality(String), Float64)"), ("last_recv_ns", "Int64"),
    ),
    # One row per model per bar; outputs as a Map of arrays (`outputs['MEAN'][1]` in SQL).
    "predictions": (
        ("model", _LC), ("venue", _LC), ("symbol", _LC), ("tf", _LC), ("start_ns", "Int64"),
        ("version", "UInt32"), ("role", _LC), ("label", _LC), ("confidence", "Float64"),
        ("uncertainty", "Float64"), ("degraded", "Bool"), ("reason", "String"),
        ("outputs", "Map(LowCardinality(String), Array(Float64))"), ("latency_us", "Int64"),
        ("last_recv_ns", "Int64"),
    ),
    "signals": (
        ("id", "String"), ("venue", _LC), ("symbol", _LC), ("tf", _LC), ("start_ns", "Int64"), ("action", _LC),
        ("price", "Float64"), ("confidence", "Float64"), ("score", "Float64"), ("expected_return", "Float64"),
        ("uncertainty", "Float64"), ("risk_reward", "Float64"), ("expected_value", "Float64"),
        ("kelly_fraction", "Float64"), ("position_fraction", "Float64"), ("position_size", "Float64"),
        ("qty", "Float64"), ("stop_loss", "Float64"), ("take_profit", "Float64"),
        ("contributions", "Map(LowCardinality(String), Float64)"),
        ("top_features", "Map(LowCardinality(String), Float64)"),
        ("model_versions", "Map(LowCardinality(String), UInt32)"), ("degraded", "Bool"), ("veto", _LC),
        ("calibrated", "Bool"),
    ),
    "alerts": (
        ("id", "String"), ("priority", _LC), ("venue", _LC), ("symbol", _LC), ("tf", _LC), ("start_ns", "Int64"),
        ("action", _LC), ("title", "String"), ("body", "String"), ("context", "String"), ("link", "String"),
        ("count", "UInt32"), ("signal_ids", "Array(String)"),
    ),
    # The audit trail of what users said about signals.
    "feedback": (
        ("id", "String"), ("venue", _LC), ("symbol", _LC), ("tf", _LC), ("action", _LC), ("kind", _LC),
        ("note", "String"), ("received_ns", "Int64"),
    ),
    "dead_letters": (
        ("stage", _LC), ("venue", _LC), ("symbol", _LC), ("reason", "String"), ("detail", "String"),
        ("raw", "String"), ("recv_ns", "Int64"), ("stream", _LC), ("stream_seq", "UInt64"),
    ),
}

# Row identity per table: a re-inserted row with the same key replaces the old one.
_ORDER_BY = {
    "trades": "(venue, symbol, ts_ns, trade_id)",
    "quotes": "(venue, symbol, ts_ns, recv_ns)",
    "bars": "(venue, symbol, tf, start_ns)",
    "features": "(venue, symbol, tf, start_ns)",
    "predictions": "(model, venue, symbol, tf, start_ns)",
    "signals": "(venue, symbol, tf, start_ns)",
    "feedback": "(id, received_ns)",
    "alerts": "(venue, symbol, tf, start_ns)",
    # The stream is part of the key: sequences of different streams overlap, and the sink
    # dead-letters messages from several streams under one stage.
    "dead_letters": "(stage, venue, stream, stream_seq)",
}

# Every CREATE statement, applied on open; ``{db}`` is the (validated, quoted) database name.
DDL: tuple[str, ...] = tuple(
    f"CREATE TABLE IF NOT EXISTS {{db}}.{table} ("
    + ", ".join(f"{name} {ch_type}" for name, ch_type in cols)
    + f") ENGINE = ReplacingMergeTree ORDER BY {_ORDER_BY[table]}"
    for table, cols in TABLES.items()
)

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEMES = ("chdb", "http", "https")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _redact(dsn: str) -> str:
    """The DSN without credentials, for error messages."""
    parts = urlsplit(dsn)
    if parts.password is None and parts.username is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Store:
    """ClickHouse access for tickmesh: DDL, columnar inserts and parameterized reads.

    Build it with `Store.open`. Methods are synchronous and serialized by a lock; from async code
    call them through `run` so they execute on the Store's one worker thread.
    """

    def __init__(self, client: Any, database: str, dsn: str) -> None:
        self._client = client
        self._db = f"`{database}`"
        self._database = database
        self._dsn = dsn
        self._lock = threading.RLock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickmesh-store")
        self._insert_contexts: dict[str, Any] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"Store(dsn={_redact(self._dsn)!r}, database={self._database!r})"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, dsn: str, database: str = "tickmesh") -> Store:
        """Connects, creates the database and applies the DDL (idempotent).

        Args:
            dsn: ``chdb:///<dir>`` for embedded chDB, or ``http(s)://[user:password@]host:port``.
            database: database holding tickmesh's tables; created if missing.

        Raises:
            StoreError: the DSN or database name is invalid, or ClickHouse cannot be opened or
                refuses the DDL.
        """
        import clickhouse_connect

        scheme = urlsplit(dsn).scheme
        if scheme not in _SCHEMES:
            raise StoreError(f"unsupported ClickHouse DSN {_redact(dsn)!r}: use chdb:///<dir> or http(s)://host:port")
        if not _DB_NAME.match(database):
            raise StoreError(f"invalid database name {database!r}: use letters, digits and '_'")
        try:
            client = clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:  # clickhouse-connect raises its own, OS and HTTP errors here
            raise StoreError(f"cannot open ClickHouse at {_redact(dsn)}: {exc}") from None
        store = cls(client, database, dsn)
        try:
            store.apply_ddl()
        except StoreError:
            store.close()
            raise
        return store

    def apply_ddl(self) -> None:
        """Creates the database and every table if missing.

        Raises:
            StoreError: ClickHouse refused a statement.
        """
        with self._guard("create database"):
            self._client.command(f"CREATE DATABASE IF NOT EXISTS {self._db}")
        for stmt in DDL:
            with self._guard("apply DDL"):
                self._client.command(stmt.replace("{db}", self._db))

    def close(self) -> None:
        """Closes the client and stops the worker thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._lock:
            try:
                self._client.close()
            except Exception:  # closing must never mask the caller's own error
                pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def database(self) -> str:
        return self._database

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs ``fn(*args, **kwargs)`` on the Store's single worker thread.

        Example:
            ``rows = await store.run(store.bars, "kraken", "BTC-USD", "1m")``

        Raises:
            StoreError: the Store is closed, or whatever ``fn`` raises.
        """
        if self._closed:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def ping(self) -> bool:
        """True when ClickHouse answers."""
        if self._closed:
            return False
        try:
            with self._lock:
                return bool(self._client.ping())
        except Exception:  # a health probe answers, it does not raise
            return False

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Serializes client use and translates driver errors into StoreError."""
        if self._closed:
            raise StoreError(f"{what}: store is closed")
        from clickhouse_connect.driver.exceptions import ClickHouseError

        with self._lock:
            try:
                yield
            except (ClickHouseError, OSError, OverflowError, TypeError, ValueError) as exc:
                raise StoreError(f"{what} failed: {exc}") from exc

    # ------------------------------------------------------------------ inserts

    def _insert(self, table: str, columns: Sequence[Any]) -> None:
        with self._guard(f"insert into {table}"):
            ctx = self._insert_contexts.get(table)
            if ctx is None:
                names, types = zip(*TABLES[table])
                # Explicit names and types: no round trip to read the table layout, and a
                # context reused for every insert into this table.
                ctx = self._client.create_insert_context(
                    table, column_names=list(names), database=self._database,
                    column_type_names=list(types), column_oriented=True)
                self._insert_contexts[table] = ctx
            ctx.data = list(columns)
            self._client.insert(context=ctx)

    @staticmethod
    def _keys(items: Sequence[TradeBatch | QuoteBatch], lengths: np.ndarray) -> list[np.ndarray]:
        venues = np.array([b.venue for b in items], dtype=object)
        symbols = np.array([b.symbol for b in items], dtype=object)
        return [np.repeat(venues, lengths), np.repeat(symbols, lengths)]

    def _insert_batches(self, table: str, batches: Sequence[TradeBatch | QuoteBatch]) -> int:
        items = [b for b in batches if len(b)]
        if not items:
            return 0
        try:
            cols = [b.columns() for b in items]
        except Exception as exc:  # SchemaError from a ragged batch: tell the caller which table
            raise StoreError(f"insert into {table}: {exc}") from exc
        lengths = np.array([len(next(iter(c.values()))) for c in cols], dtype=np.int64)
        data = self._keys(items, lengths)
        for name in type(items[0]).DTYPES:
            data.append(np.concatenate([c[name] for c in cols]))
        self._insert(table, data)
        return int(lengths.sum())

    def insert_trades(self, batches: Sequence[TradeBatch]) -> int:
        """Inserts trade batches column by column.

        Returns:
            Number of trade rows written.

        Raises:
            StoreError: a batch is malformed or ClickHouse refused the insert.
        """
        return self._insert_batches("trades", batches)

    def insert_quotes(self, batches: Sequence[QuoteBatch]) -> int:
        """Inserts quote batches column by column.

        Returns:
            Number of quote rows written.

        Raises:
            StoreError: a batch is malformed or ClickHouse refused the insert.
        """
        return self._insert_batches("quotes", batches)

    def insert_bars(self, bars: Sequence[Bar]) -> int:
        """Inserts bars (one wire message each) as columns.

        Returns:
            Number of bar rows written.

        Raises:
            StoreError: a value does not fit its column or ClickHouse refused the insert.
        """
        if not bars:
            return 0
        rows = list(zip(*(msgspec.structs.astuple(b) for b in bars)))
        by_name = dict(zip(Bar.__struct_fields__, rows))
        data = []
        with self._guard("insert into bars"):  # int64 overflow surfaces here as OverflowError
            for name, ch_type in TABLES["bars"]:
                col = by_name[name]
                if ch_type == "Int64":
                    data.append(np.array(col, dtype=np.int64))
                elif ch_type == "Float64":
                    data.append(np.array(col, dtype=np.float64))
                else:
                    data.append(np.array(col, dtype=object))
        self._insert("bars", data)
        return len(bars)

    def insert_features(self, vectors: Sequence[FeatureVector]) -> int:
        """Inserts feature vectors, one row each.

        Returns:
            Number of rows written.

        Raises:
            StoreError: a vector is malformed or ClickHouse refused the insert.
        """
        if not vectors:
            return 0
        with self._guard("insert into features"):
            maps = [dict(zip(v.names, v.array().tolist())) for v in vectors]
            data = [[v.venue for v in vectors], [v.symbol for v in vectors], [v.tf for v in vectors],
                    np.array([v.start_ns for v in vectors], dtype=np.int64), [v.digest for v in vectors], maps,
                    np.array([v.last_recv_ns for v in vectors], dtype=np.int64)]
        self._insert("features", data)
        return len(vectors)

    def features(self, venue: str, symbol: str, tf: str, names: Sequence[str] | None = None,
                 start_ns: int | None = None, end_ns: int | None = None, limit: int = 1000) -> dict:
        """Feature vectors of one series with ``start_ns <= bar start < end_ns``, ascending by start.

        Args:
            names: the features wanted, in this order; None for every feature of the newest vector.
            limit: at most this many vectors: the latest ones when the range holds more.

        Returns:
            ``{"names": [...], "start_ns": [...], "values": [[...], ...]}``, one values row per
            vector, NaN where a feature is undefined or unknown to that vector.

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        params = {"venue": venue, "symbol": symbol, "tf": tf, "limit": int(limit),
                  "start_ns": _INT64_MIN if start_ns is None else int(start_ns),
                  "end_ns": _INT64_MAX if end_ns is None else int(end_ns)}
        where = ("venue = {venue:String} AND symbol = {symbol:String} AND tf = {tf:String} "
                 "AND start_ns >= {start_ns:Int64} AND start_ns < {end_ns:Int64}")
        if names is None:  # the newest vector's layout (a Map keeps its insertion order)
            layout = self._rows("features", f"SELECT values FROM {{db}}.features FINAL WHERE {where} "
                                "ORDER BY start_ns DESC LIMIT 1", params)
            names = list(layout[0]["values"]) if layout else []
        params["names"] = list(names)
        rows = self._rows(
            "features",
            f"SELECT * FROM (SELECT start_ns, arrayMap(n -> if(mapContains(values, n), values[n], nan), "
            f"{{names:Array(String)}}) AS v FROM {{db}}.features FINAL WHERE {where} "
            "ORDER BY start_ns DESC LIMIT {limit:UInt64}) ORDER BY start_ns", params)
        return {"names": list(names), "start_ns": [r["start_ns"] for r in rows], "values": [r["v"] for r in rows]}

    def _insert_structs(self, table: str, items: Sequence[Any]) -> int:
        """Inserts wire structs whose field names are the table's columns, one row each."""
        if not items:
            return 0
        with self._guard(f"insert into {table}"):
            data = []
            for name, ch_type in TABLES[table]:
                col = [getattr(x, name) for x in items]
                dtype = {"Int64": np.int64, "UInt32": np.uint32, "Float64": np.float64}.get(ch_type)
                data.append(np.array(col, dtype=dtype) if dtype else col)
        self._insert(table, data)
        return len(items)

    def insert_signals(self, signals: Sequence[Signal]) -> int:
        """Inserts signals, one row each (a redelivered signal replaces its row).

        Raises:
            StoreError: a value does not fit its column or ClickHouse refused the insert.
        """
        return self._insert_structs("signals", signals)

    def signals(self, symbol: str, venue: str | None = None, tf: str | None = None, min_confidence: float = 0.0,
                action: str | None = None, start_ns: int | None = None, end_ns: int | None = None,
                limit: int = 100, max_risk_pct: float | None = None) -> list[dict]:
        """Signals of ``symbol`` with confidence >= ``min_confidence``, newest ``limit``, ascending
        by bar start. ``venue``, ``tf`` and ``action`` filter when given; ``max_risk_pct`` keeps
        signals whose stop-out loses at most that percent of the price (`Signal.risk_pct`; a
        signal without a stop has no defined risk and is left out).

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        params: dict[str, Any] = {"symbol": symbol, "min_confidence": float(min_confidence), "limit": int(limit),
                                  "start_ns": _INT64_MIN if start_ns is None else int(start_ns),
                                  "end_ns": _INT64_MAX if end_ns is None else int(end_ns)}
        where = ["symbol = {symbol:String}", "confidence >= {min_confidence:Float64}",
                 "start_ns >= {start_ns:Int64}", "start_ns < {end_ns:Int64}"]
        for col, value in (("venue", venue), ("tf", tf), ("action", action)):
            if value:
                params[col] = value
                where.append(f"{col} = {{{col}:String}}")
        if max_risk_pct is not None:
            params["max_risk_pct"] = float(max_risk_pct)
            where.append("100 * abs(price - stop_loss) / price <= {max_risk_pct:Float64}")  # NaN: false
        cols = ", ".join(name for name, _ in TABLES["signals"])
        return self._rows(
            "signals",
            f"SELECT * FROM (SELECT {cols} FROM {{db}}.signals FINAL WHERE {' AND '.join(where)} "
            "ORDER BY start_ns DESC, venue DESC, tf DESC LIMIT {limit:UInt64}) ORDER BY start_ns, venue, tf", params)

    def signal(self, signal_id: str) -> dict | None:
        """The stored signal with this id, or None."""
        cols = ", ".join(name for name, _ in TABLES["signals"])
        rows = self._rows("signals", f"SELECT {cols} FROM {{db}}.signals FINAL WHERE id = {{id:String}} LIMIT 1",
                          {"id": signal_id})
        return rows[0] if rows else None

    def similar_signals(self, signal_id: str, horizon_bars: int = 1, limit: int = 50) -> tuple[dict, list[dict]] | None:
        """Past signals like ``signal_id`` and how they did.

        "Like" means the same venue, symbol, timeframe and action, earlier than it, nearest in vote
        score. For each one, ``outcome`` is the log return from its price to the close
        ``horizon_bars`` bars later (NaN when that bar is not stored).

        Returns:
            ``(signal, similar)``, or None when ``signal_id`` is unknown.
        """
        this = self.signal(signal_id)
        if this is None:
            return None
        tf_ns = TIMEFRAME_NS.get(this["tf"], 0)
        params = {k: this[k] for k in ("venue", "symbol", "tf", "action", "start_ns", "score")}
        params.update(limit=int(limit), ahead_ns=int(horizon_bars * tf_ns))
        rows = self._rows(
            "signals",
            "SELECT s.id AS id, s.start_ns AS start_ns, s.score AS score, s.confidence AS confidence, "
            "s.price AS price, s.degraded AS degraded, "
            "if(b.start_ns = 0, nan, log(b.close / s.price)) AS outcome "
            "FROM (SELECT id, start_ns, score, confidence, price, degraded FROM {db}.signals FINAL "
            "WHERE venue = {venue:String} AND symbol = {symbol:String} AND tf = {tf:String} "
            "AND action = {action:String} AND start_ns < {start_ns:Int64} AND isFinite(score) "
            "ORDER BY abs(score - {score:Float64}), start_ns DESC LIMIT {limit:UInt64}) AS s "
            "LEFT JOIN (SELECT start_ns, close FROM {db}.bars FINAL WHERE venue = {venue:String} "
            "AND symbol = {symbol:String} AND tf = {tf:String}) AS b "
            "ON b.start_ns = s.start_ns + {ahead_ns:Int64} ORDER BY abs(s.score - {score:Float64}), s.start_ns DESC",
            params)
        return this, rows

    def insert_alerts(self, alerts: Sequence[Alert]) -> int:
        """Inserts alerts, one row each; ``context`` as a JSON object text."""
        rows = [msgspec.structs.replace(a, context=msgspec.json.encode(a.context).decode()) for a in alerts]
        return self._insert_structs("alerts", rows)

    def alerts(self, symbol: str | None = None, venue: str | None = None, priority: str | None = None,
               limit: int = 100) -> list[dict]:
        """The newest ``limit`` alerts, newest first; ``context`` decoded."""
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        params: dict[str, Any] = {"limit": int(limit)}
        where = ["1"]
        for col, value in (("symbol", symbol), ("venue", venue), ("priority", priority)):
            if value:
                params[col] = value
                where.append(f"{col} = {{{col}:String}}")
        cols = ", ".join(name for name, _ in TABLES["alerts"])
        rows = self._rows("alerts", f"SELECT {cols} FROM {{db}}.alerts FINAL WHERE {' AND '.join(where)} "
                          "ORDER BY start_ns DESC LIMIT {limit:UInt64}", params)
        for r in rows:
            r["context"] = msgspec.json.decode(r["context"])
        return rows

    def insert_feedback(self, items: Sequence[Any]) -> int:
        """Inserts `core.signals.Feedback` records (the audit trail)."""
        return self._insert_structs("feedback", items)

    def feedback(self, signal_id: str) -> list[dict]:
        """Every verdict given on a signal, oldest first."""
        cols = ", ".join(name for name, _ in TABLES["feedback"])
        return self._rows("feedback", f"SELECT {cols} FROM {{db}}.feedback FINAL WHERE id = {{id:String}} "
                          "ORDER BY received_ns", {"id": signal_id})

    def insert_predictions(self, preds: Sequence[Prediction]) -> int:
        """Inserts predictions, one row each.

        Returns:
            Number of rows written.

        Raises:
            StoreError: a value does not fit its column or ClickHouse refused the insert.
        """
        return self._insert_structs("predictions", preds)

    def predictions(self, venue: str, symbol: str, tf: str | None = None, model: str | None = None,
                    start_ns: int | None = None, end_ns: int | None = None, limit: int = 1000) -> list[dict]:
        """Predictions of one symbol with ``start_ns <= bar start < end_ns``, ascending by
        (start, model); the LAST ``limit`` when the range holds more. ``tf``/``model`` filter.

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        filters = {"venue": venue, "symbol": symbol}
        if tf:
            filters["tf"] = tf
        if model:
            filters["model"] = model
        return self._last_in_range("predictions", "start_ns", ("start_ns", "model"), filters, start_ns, end_ns, limit)

    def insert_dead_letters(self, items: Sequence[tuple[DeadLetter, int]], stream: str = "") -> int:
        """Inserts dead letters, each with the JetStream stream sequence it came from.

        Args:
            items: (dead letter, stream sequence) pairs.
            stream: the JetStream stream those sequences belong to (part of the row identity).

        Returns:
            Number of dead-letter rows written.

        Raises:
            StoreError: a value does not fit its column or ClickHouse refused the insert.
        """
        if not items:
            return 0
        letters = [dl for dl, _ in items]
        with self._guard("insert into dead_letters"):
            data = [
                np.array([d.stage for d in letters], dtype=object),
                np.array([d.venue for d in letters], dtype=object),
                np.array([d.symbol for d in letters], dtype=object),
                np.array([d.reason for d in letters], dtype=object),
                np.array([d.detail for d in letters], dtype=object),
                # raw stays bytes end to end: a String column holds arbitrary bytes
                [bytes(d.raw) for d in letters],
                np.array([d.recv_ns for d in letters], dtype=np.int64),
                np.full(len(items), stream, dtype=object),
                np.array([seq for _, seq in items], dtype=np.uint64),
            ]
        self._insert("dead_letters", data)
        return len(items)

    # ------------------------------------------------------------------ queries

    def _rows(self, what: str, sql: str, parameters: dict[str, Any] | None = None,
              column_formats: dict[str, str] | None = None) -> list[dict]:
        with self._guard(what):
            result = self._client.query(sql.replace("{db}", self._db), parameters=parameters or {},
                                        column_formats=column_formats)
            return list(result.named_results())

    def _last_in_range(self, table: str, time_col: str, order: tuple[str, ...], filters: dict[str, str],
                       start_ns: int | None, end_ns: int | None, limit: int) -> list[dict]:
        """The LAST ``limit`` rows of ``table`` with ``start_ns <= time_col < end_ns`` matching
        ``filters`` (column -> value, all String), returned ascending by ``order``."""
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        params = {**filters, "start_ns": _INT64_MIN if start_ns is None else int(start_ns),
                  "end_ns": _INT64_MAX if end_ns is None else int(end_ns), "limit": int(limit)}
        where = " AND ".join(f"{col} = {{{col}:String}}" for col in filters)
        cols = ", ".join(name for name, _ in TABLES[table])
        asc = ", ".join(order)
        desc = ", ".join(f"{col} DESC" for col in order)
        return self._rows(
            table,
            f"SELECT * FROM (SELECT {cols} FROM {{db}}.{table} FINAL WHERE {where} "
            f"AND {time_col} >= {{start_ns:Int64}} AND {time_col} < {{end_ns:Int64}} "
            f"ORDER BY {desc} LIMIT {{limit:UInt64}}) ORDER BY {asc}",
            params)

    def symbols(self) -> list[dict]:
        """Every (venue, symbol) with trades: ``venue, symbol, trades, first_ns, last_ns``."""
        return self._rows(
            "symbols",
            "SELECT venue, symbol, count() AS trades, min(ts_ns) AS first_ns, max(ts_ns) AS last_ns "
            "FROM {db}.trades FINAL GROUP BY venue, symbol ORDER BY venue, symbol")

    def bars(self, venue: str, symbol: str, tf: str, start_ns: int | None = None,
             end_ns: int | None = None, limit: int = 1000) -> list[dict]:
        """Bars with ``start_ns <= bar.start_ns < end_ns``, ascending by start.

        When more than ``limit`` bars are in range, the LAST ``limit`` are returned (the most
        recent, still in ascending order).

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        return self._last_in_range("bars", "start_ns", ("start_ns",), {"venue": venue, "symbol": symbol, "tf": tf},
                                   start_ns, end_ns, limit)

    def trades(self, venue: str, symbol: str, start_ns: int | None = None, end_ns: int | None = None,
               limit: int = 1000) -> list[dict]:
        """Trades with ``start_ns <= ts_ns < end_ns``, ascending by (ts_ns, trade_id).

        When more than ``limit`` trades are in range, the LAST ``limit`` are returned.

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        return self._last_in_range("trades", "ts_ns", ("ts_ns", "trade_id"), {"venue": venue, "symbol": symbol},
                                   start_ns, end_ns, limit)

    def quotes(self, venue: str, symbol: str, start_ns: int | None = None, end_ns: int | None = None,
               limit: int = 1000) -> list[dict]:
        """Quotes with ``start_ns <= ts_ns < end_ns``, ascending by (ts_ns, recv_ns).

        When more than ``limit`` quotes are in range, the LAST ``limit`` are returned.

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        return self._last_in_range("quotes", "ts_ns", ("ts_ns", "recv_ns"), {"venue": venue, "symbol": symbol},
                                   start_ns, end_ns, limit)

    def dead_letters(self, stage: str | None = None, limit: int = 100) -> list[dict]:
        """The most recent dead letters (by receive time), newest first; ``raw`` as bytes.

        Args:
            stage: only this stage (``sink``, ``edge``, ...); all stages when None.
            limit: at most this many rows.

        Raises:
            StoreError: a negative limit, or the query failed.
        """
        if limit < 0:
            raise StoreError(f"limit must be >= 0, got {limit}")
        cols = ", ".join(name for name, _ in TABLES["dead_letters"])
        where = "WHERE stage = {stage:String} " if stage is not None else ""
        params: dict[str, Any] = {"limit": int(limit)}
        if stage is not None:
            params["stage"] = stage
        # raw holds arbitrary bytes; without "bytes" the driver would hex-encode invalid UTF-8.
        return self._rows(
            "dead_letters",
            f"SELECT {cols} FROM {{db}}.dead_letters FINAL {where}"
            "ORDER BY recv_ns DESC, stream_seq DESC LIMIT {limit:UInt64}",
            params, column_formats={"raw": "bytes"})

    def counts(self) -> dict[str, int]:
        """Rows per table, each distinct row counted once."""
        sql = " UNION ALL ".join(f"SELECT '{t}' AS t, count() AS n FROM {{db}}.{t} FINAL" for t in TABLES)
        rows = self._rows("counts", sql)
        out = {t: 0 for t in TABLES}
        out.update({r["t"]: int(r["n"]) for r in rows})
        return out
