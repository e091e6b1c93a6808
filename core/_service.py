"""Running a stream worker as a process: connect, ensure streams, report metrics, stop on a signal.

A worker here is an object with ``stats`` (a msgspec Struct with a ``lag`` field),
``async on_start()``, ``async run(stop)`` and ``async lag()``; `core.bar_worker.BarWorker` and
`core.feature_worker.FeatureWorker` are two.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from typing import Any, Callable

import msgspec
import nats

from core import streams
from core.config import Config
from core.errors import TickmeshError

__all__ = ["serve", "nats_url", "run_command", "tune_gc"]

log = logging.getLogger("tickmesh.service")

# Allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 100_000


def tune_gc() -> None:
    """Makes the cyclic garbage collector run less often, for a worker process.

    A worker allocates tens of thousands of short-lived containers per chunk (decoded messages,
    a bar close's signals and their dicts), none of them in reference cycles; at CPython's default
    thresholds the collector ran every 700 of them and took about a third of a 10k-symbol decision
    step (bench/decisions.py). Reference counting still frees everything at once; only cycles wait
    longer. (Edge processes do the same, in ``edge.cli``.)
    """
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def nats_url(url: str | None, cfg: Config) -> str:
    """The ``--url`` given, else the configured server."""
    return url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}"


async def _report(nc, subject: str, worker: Any, stop: asyncio.Event) -> None:
    """Publishes the worker's stats as JSON on ``subject`` once a second."""
    while not stop.is_set():
        try:
            worker.stats.lag = await worker.lag()
            await nc.publish(subject, json.dumps({**msgspec.structs.asdict(worker.stats), "ts": time.time()}).encode())
        except Exception as exc:  # metrics must never stop the worker
            log.debug("metrics publish failed: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def serve(cfg: Config, url: str, client_name: str, make: Callable[[Any], Any], metrics_subject: str) -> None:
    """Runs ``make(js)`` until SIGINT/SIGTERM, with its metrics on ``metrics_subject``."""
    nc = await nats.connect(url, name=client_name, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await streams.ensure(js, cfg.streams)
    worker = make(js)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.on_start()
    reporter = asyncio.create_task(_report(nc, metrics_subject, worker, stop))
    try:
        await worker.run(stop)
    finally:
        stop.set()
        await reporter
        await nc.close()


def run_command(command: str, cfg: Config, url: str | None, make: Callable[[Any], Any], metrics_subject: str) -> int:
    """A worker's CLI entry: logging, `serve` until a signal, a clear message on a tickmesh error.

    Returns:
        The exit status: 0, or 2 after a `TickmeshError` (printed as ``tickmesh <command>: ...``).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tune_gc()
    try:
        asyncio.run(serve(cfg, nats_url(url, cfg), f"tickmesh-{command}", make, metrics_subject))
    except TickmeshError as exc:
        print(f"tickmesh {command}: {exc}")
        return 2
    return 0
