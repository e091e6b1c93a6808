"""Everything the API process owns while it runs: the store, NATS, the sink and the bar fan-out.

Started and stopped by the app's lifespan (`api.app`). In the embedded default the API process is
the one process that opens the chDB directory, so it also runs the `core.sink.Sink`; with
``run_sink=False`` another process (``tickmesh sink`` against a ClickHouse server) does.
"""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from api.errors import ApiError
from api.fanout import BarFanout, Fanout, SignalFanout
from api.models import SinkHealth, StoreHealth
from api.telemetry import METRICS_SUBJECT_PREFIX, Sample, Telemetry
from core import streams
from core.config import Config
from core.errors import SchemaError
from core.schema import Bar, Codec, Signal
from core.sink import Sink
from core.store import Store

__all__ = ["ApiRuntime", "SINK_RESTART_BACKOFF_S", "SINK_CONSUMERS"]

log = logging.getLogger(__name__)

SINK_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
SINK_CONSUMERS = ((streams.MD_STREAM, streams.SINK_MD), (streams.BARS_STREAM, streams.SINK_BARS),
                  (streams.FEAT_STREAM, streams.SINK_FEAT), (streams.DLQ_STREAM, streams.SINK_DLQ))
_PROBE_TIMEOUT_S = 5.0  # one slow probe must not hold /health or /metrics for long
_SINK_STOP_TIMEOUT_S = 30.0


class ApiRuntime:
    """The API's connections and background work, with the probes ``/health`` and ``/metrics`` use.

    Args:
        cfg: the configuration (``nats``, ``store``, ``streams`` sections are used).
        run_sink: run the ClickHouse sink in this process.
    """

    def __init__(self, cfg: Config, run_sink: bool = True) -> None:
        self.cfg = cfg
        self.run_sink = run_sink
        self.nats_url = cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}"
        self.telemetry = Telemetry()
        self.fanout = BarFanout()
        self.signal_fanout = SignalFanout()
        self._codec = Codec()
        self.store: Store | None = None
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.sink_running = False
        self.sink_restarts = 0
        self.sink_error: str | None = None
        self._sink_task: asyncio.Task | None = None
        self._sink_stop = asyncio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"ApiRuntime(nats={self.nats_url!r}, store={self.store!r}, run_sink={self.run_sink})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Opens the store, connects NATS, ensures streams, subscribes, starts the sink.

        Raises:
            StoreError: ClickHouse cannot be opened.
            ApiError: NATS cannot be reached in ``nats.ready_timeout_s``.
        """
        # chDB's open takes a moment; keep the event loop free for the rest of the startup.
        self.store = await asyncio.to_thread(Store.open, self.cfg.store_dsn, self.cfg.store.database)
        try:
            self.nc = await asyncio.wait_for(
                nats.connect(self.nats_url, name="tickmesh-api", max_reconnect_attempts=-1,
                             error_cb=self._on_nats_error, disconnected_cb=self._on_disconnected,
                             reconnected_cb=self._on_reconnected),
                self.cfg.nats.ready_timeout_s)
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
            raise ApiError(f"cannot connect to NATS at {self.nats_url} within "
                           f"{self.cfg.nats.ready_timeout_s} s: {exc or type(exc).__name__}") from None
        self.js = self.nc.jetstream()
        await streams.ensure(self.js, self.cfg.streams)
        # Core NATS, not JetStream: live fan-out wants only what arrives from now on.
        await self.nc.subscribe("bar.>", cb=self._on_bar)
        await self.nc.subscribe("sig.>", cb=self._on_signal)
        await self.nc.subscribe(METRICS_SUBJECT_PREFIX + ">", cb=self._on_metrics)
        if self.run_sink:
            self._sink_task = asyncio.create_task(self._run_sink(), name="tickmesh-api-sink")
        log.info("api runtime started: %r", self)

    async def stop(self) -> None:
        """Stops the sink (finishing its batch), ends WebSocket streams, closes NATS and the store.

        Safe after a partial `start`.
        """
        self._stopping = True
        self._sink_stop.set()
        if self._sink_task is not None:
            try:
                await asyncio.wait_for(self._sink_task, _SINK_STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.error("sink did not stop within %s s; cancelled", _SINK_STOP_TIMEOUT_S)
            except Exception:  # already logged by _run_sink; shutting down regardless
                pass
            self._sink_task = None
        self.fanout.close()
        self.signal_fanout.close()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception as exc:  # a dead connection must not block shutdown
                log.warning("closing NATS: %s", exc)
        if self.store is not None:
            # Waits for the store thread's last statement (the sink's final insert) to finish.
            await asyncio.to_thread(self.store.close)

    async def _run_sink(self) -> None:
        """Runs the sink until stop, restarting it with backoff if it fails."""
        while not self._sink_stop.is_set():
            sink = Sink(self.js, self.store, nc=self.nc)
            self.sink_running = True
            try:
                await sink.run(self._sink_stop)
                if self._sink_stop.is_set():
                    return
                self.sink_error = "sink returned without being stopped"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API stays up and says so in /health
                self.sink_error = f"{type(exc).__name__}: {exc}"
                log.exception("sink failed (restart #%d follows)", self.sink_restarts + 1)
            finally:
                self.sink_running = False
            backoff_s = SINK_RESTART_BACKOFF_S[min(self.sink_restarts, len(SINK_RESTART_BACKOFF_S) - 1)]
            self.sink_restarts += 1
            try:
                await asyncio.wait_for(self._sink_stop.wait(), backoff_s)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ NATS callbacks

    async def _on_bar(self, msg: Msg) -> None:
        self._fan_out(msg, Bar, self.fanout, "bar")

    async def _on_signal(self, msg: Msg) -> None:
        self._fan_out(msg, Signal, self.signal_fanout, "signal")

    def _fan_out(self, msg: Msg, kind: type, fanout: Fanout, what: str) -> None:
        try:
            item = self._codec.decode(msg.data)
            if not isinstance(item, kind):
                raise SchemaError(f"expected a {kind.__name__}, got {type(item).__name__}")
        except SchemaError as exc:
            # The sink dead-letters the stored copy; here the live copy is only counted.
            self.telemetry.counters[f"bad_{what}_messages"] += 1
            log.warning("not fanned out: %s on %s", exc, msg.subject)
            return
        sent, slow = fanout.publish(item)
        self.telemetry.counters[f"{what}s_fanned_out"] += sent
        self.telemetry.counters["ws_slow_clients_closed"] += slow

    async def _on_metrics(self, msg: Msg) -> None:
        self.telemetry.on_snapshot(msg.subject, msg.data)

    async def _on_nats_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if self._stopping:  # our own close
            return
        log.warning("NATS disconnected from %s; reconnecting", self.nats_url)

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected to %s", self.nats_url)

    # ------------------------------------------------------------------ probes

    @property
    def nats_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def store_health(self) -> StoreHealth:
        """Pings ClickHouse through the store's worker thread."""
        if self.store is None:
            return StoreHealth(ok=False, error="store not open")
        try:
            ok = await asyncio.wait_for(self.store.run(self.store.ping), _PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return StoreHealth(ok=False, error=f"no answer within {_PROBE_TIMEOUT_S} s")
        except Exception as exc:  # StoreError when closed; a probe reports, it does not raise
            return StoreHealth(ok=False, error=str(exc))
        return StoreHealth(ok=ok, error=None if ok else "ping failed")

    async def sink_pending(self) -> dict[str, int] | None:
        """Messages each sink consumer has not acknowledged yet (pending + in flight); None if unknown."""
        if self.js is None or not self.nats_connected:
            return None

        async def one(stream: str, consumer: str) -> int:
            info = await self.js.consumer_info(stream, consumer, timeout=_PROBE_TIMEOUT_S)
            return info.num_pending + info.num_ack_pending

        try:
            counts = await asyncio.gather(*(one(s, c) for s, c in SINK_CONSUMERS))
        except Exception as exc:  # timeout or consumer missing: unknown, not an error page
            log.warning("sink lag unknown: %s", exc)
            return None
        return {c: n for (_, c), n in zip(SINK_CONSUMERS, counts)}

    async def sink_health(self) -> SinkHealth:
        pending = await self.sink_pending()
        return SinkHealth(owned=self.run_sink, running=self.sink_running, restarts=self.sink_restarts,
                          lag=None if pending is None else sum(pending.values()), pending=pending,
                          error=self.sink_error)

    async def status_samples(self) -> list[Sample]:
        """Gauges of the API's view of its dependencies, for ``/metrics``."""
        store = await self.store_health()
        pending = await self.sink_pending()
        out = [
            Sample("tickmesh_api_nats_connected", "gauge", "1 when the API is connected to NATS", (),
                   float(self.nats_connected)),
            Sample("tickmesh_api_store_up", "gauge", "1 when ClickHouse answers a ping", (), float(store.ok)),
            Sample("tickmesh_api_sink_running", "gauge", "1 when this process runs the sink and it is running",
                   (), float(self.sink_running)),
            Sample("tickmesh_api_sink_restarts_total", "counter", "restarts of the sink after a failure", (),
                   self.sink_restarts),
        ]
        for consumer, n in (pending or {}).items():
            out.append(Sample("tickmesh_sink_consumer_pending", "gauge",
                              "messages a sink consumer has not acknowledged yet", (("consumer", consumer),), n))
        return out
