"""``tickmesh up``: the embedded mesh as supervised processes, with a status line every second.

Starts nats-server (unless ``nats.url`` points at one), ensures streams, then runs the edge collector,
the bar worker, the feature worker and the API (which owns ClickHouse and runs the sink) as child
processes. A child that dies is reported and restarted with backoff. Ctrl-C stops the children in
data-flow order (edge, bar worker, feature worker, API) so buffered work is flushed, then nats-server. Everything lives under ``data_dir``, so a
second ``tickmesh up`` resumes with the history still there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats

from core import streams
from core.config import Config
from core.errors import NatsServerError, TickmeshError
from core.natsserver import NatsServer, die_with_parent

__all__ = ["Component", "Supervisor", "StatusLine", "register"]

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)


class Component:
    """One supervised child process.

    Args:
        name: short name shown in the status line.
        argv: the ``tickmesh`` arguments that run it.
        log_dir: its stdout and stderr go to ``<log_dir>/<name>.log``.
    """

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        self._next_start = 0.0

    def __repr__(self) -> str:
        return f"Component({self.name!r}, restarts={self.restarts})"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            # Own session: Ctrl-C reaches the supervisor only, which then stops children in order.
            self.proc = subprocess.Popen([sys.executable, "-m", "core.cli", *self.argv], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=die_with_parent)

    def check(self, now: float) -> str | None:
        """Restarts the child if it died and its backoff has passed; returns a message if it did."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        if not self._next_start:
            self._next_start = now + RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            return f"{self.name} exited with code {code}; restarting (see {self.log_path})"
        if now >= self._next_start:
            self._next_start = 0.0
            self.restarts += 1
            self.start()
            return f"{self.name} restarted (restart #{self.restarts}, pid {self.proc.pid})"
        return None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class StatusLine:
    """Turns the components' metric snapshots into one line per second."""

    def __init__(self) -> None:
        self.latest: dict[str, dict] = {}
        self._prev: dict[str, dict] = {}
        self._prev_t = time.monotonic()

    def on_metrics(self, subject: str, data: bytes) -> None:
        try:
            self.latest[subject.removeprefix("tickmesh.metrics.")] = json.loads(data)
        except ValueError:
            pass  # a malformed snapshot only costs one status line

    def _sum(self, snapshots: dict[str, dict], prefix: str, field: str) -> int:
        return sum(int(v.get(field, 0)) for k, v in snapshots.items() if k.startswith(prefix))

    def render(self, components: list[Component]) -> str:
        now = time.monotonic()
        dt = max(now - self._prev_t, 1e-6)
        cur = self.latest

        def rate(prefix: str, field: str) -> float:
            return max(self._sum(cur, prefix, field) - self._sum(self._prev, prefix, field), 0) / dt

        events_s = rate("edge", "events")
        bars_s = rate("worker", "bars")
        feats_s = rate("features", "vectors")
        preds_s = rate("inference", "predictions")
        sigs_s = rate("inference", "signals")
        degraded = self._sum(cur, "inference", "degraded")
        lag = sum(self._sum(cur, p, "lag") for p in ("worker", "features", "inference", "sink"))
        dead = sum(self._sum(cur, p, "dead_letters") for p in ("edge", "worker", "features", "inference", "sink"))
        late = self._sum(cur, "worker", "late_trades")
        self._prev, self._prev_t = {k: dict(v) for k, v in cur.items()}, now
        health = " ".join(
            f"{c.name}:{'up' if c.proc and c.proc.poll() is None else 'DOWN'}"
            + (f"(r{c.restarts})" if c.restarts else "") for c in components)
        return (f"{time.strftime('%H:%M:%S')}  in {events_s:9,.0f} ev/s  bars {bars_s:6,.1f}/s  "
                f"features {feats_s:6,.1f}/s  predictions {preds_s:6,.1f}/s (degraded {degraded:,d})  "
                f"signals {sigs_s:6,.1f}/s  "
                f"lag {lag:6,d}  dead letters {dead:,d}  late {late:,d}  [{health}]")


class Supervisor:
    """Runs the embedded mesh until stopped."""

    def __init__(self, cfg: Config, config_path: str | None, venue: str | None = None) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir).resolve()
        self.log_dir = self.data_dir / "logs"
        self.config_path = config_path
        self.venue = venue or cfg.edge.venue
        self.server: NatsServer | None = None
        self.components: list[Component] = []
        self.status = StatusLine()

    @property
    def url(self) -> str:
        return self.cfg.nats.url or self.server.url

    def _argv(self, *args: str) -> list[str]:
        return (["--config", self.config_path] if self.config_path else []) + list(args)

    def _check_api_port(self) -> None:
        """Fails fast with a clear message instead of restarting an API that cannot bind."""
        with socket.socket() as sock:
            # As uvicorn does: a port in TIME_WAIT from the last run is free to use.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.cfg.api.host, self.cfg.api.port))
            except OSError as exc:
                raise TickmeshError(
                    f"API address {self.cfg.api.host}:{self.cfg.api.port} is not free ({exc.strerror}): another "
                    f"tickmesh up? Stop it, or pick a port: TICKMESH_API__PORT=8001 make up") from None

    async def run(self, stop: asyncio.Event, print_fn=print) -> None:
        self._check_api_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.cfg.nats.url:
            self.server = NatsServer(self.cfg.nats_store_dir, self.cfg.nats.host, self.cfg.nats.port,
                                     self.cfg.nats.monitor_port, log_file=self.log_dir / "nats.log")
            self.server.start(self.cfg.nats.ready_timeout_s)
            print_fn(f"nats-server ready at {self.server.url} (pid {self.server.pid}, JetStream in "
                     f"{self.cfg.nats_store_dir})")
        nc = await nats.connect(self.url, name="tickmesh-up", max_reconnect_attempts=-1,
                                error_cb=self._on_nats_error)
        try:
            for line in await streams.ensure(nc.jetstream(), self.cfg.streams):
                print_fn(f"  {line}")
            await nc.subscribe("tickmesh.metrics.>", cb=self._on_metrics)
            # Stopped in reverse: the edge first, the API (and its sink) last.
            self.components = [
                Component("api", self._argv("api", "--url", self.url), self.log_dir),
                *([Component("triton", self._argv("triton", "serve"), self.log_dir)] if not self.cfg.triton.url else []),
                # Until Triton is READY (a few seconds) the predictions are the degraded fallback's.
                Component("inference", self._argv("inference-worker", "--url", self.url), self.log_dir),
                Component("features", self._argv("feature-worker", "--url", self.url), self.log_dir),
                Component("worker", self._argv("worker", "--url", self.url), self.log_dir),
                Component("edge", self._argv("collect", "--venue", self.venue, "--url", self.url),
                          self.log_dir),
            ]
            for comp in self.components:
                comp.start()
                print_fn(f"  {comp.name}: pid {comp.proc.pid}, log {comp.log_path}")
            print_fn(f"dashboard: http://{self.cfg.api.host}:{self.cfg.api.port}/   logs: {self.log_dir}"
                     "   Ctrl-C stops")
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                now = time.monotonic()
                if self.server is not None and not self.server.running:
                    await asyncio.to_thread(self._restart_server, print_fn)
                for comp in self.components:
                    note = comp.check(now)
                    if note:
                        print_fn(note)
                print_fn(self.status.render(self.components))
        finally:
            # Data-flow order: the edge flushes, the workers ack, the API's sink drains.
            for comp in reversed(self.components):
                await asyncio.to_thread(comp.stop)
            await nc.close()
            if self.server:
                self.server.stop()
            print_fn("stopped; data kept in " + str(self.data_dir))

    def _restart_server(self, print_fn) -> None:
        """nats-server died: start it again on the same ports and store; clients reconnect by themselves."""
        print_fn(f"nats-server exited with code {self.server.returncode}; restarting (see {self.log_dir / 'nats.log'})")
        try:
            self.server.start(self.cfg.nats.ready_timeout_s)
            print_fn(f"nats-server restarted (pid {self.server.pid})")
        except NatsServerError as exc:
            print_fn(f"nats-server restart failed: {exc}; trying again in a second")

    async def _on_nats_error(self, exc: Exception) -> None:
        # Reconnects are nats-py's job; one line instead of its traceback.
        print(f"nats: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def _on_metrics(self, msg) -> None:
        self.status.on_metrics(msg.subject, msg.data)


def _cmd_up(args: argparse.Namespace, cfg: Config) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Supervisor(cfg, args.config, args.venue).run(stop, print_fn=lambda s: print(s, flush=True))

    asyncio.run(main())
    return 0


def register(sub) -> None:
    p = sub.add_parser("up", help="run the embedded mesh: nats-server, edge, worker, API + sink")
    p.add_argument("--venue", help="edge venue to collect (default: config edge.venue, 'sim')")
    p.set_defaults(func=_cmd_up)
