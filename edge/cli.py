"""``tickmesh collect`` (live feed into NATS) and ``tickmesh replay`` (recorded file into NATS).

Both run the same collector loop (parse -> validate -> batching publisher). Ctrl-C stops after
the current frame, flushes every buffer and waits for JetStream's acks before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import time
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:  # edge imports only core.schema/core.subjects at run time
    from core.config import Config

__all__ = ["register", "nats_url", "replay_loops", "format_summary", "LOOP_TRADE_ID_STEP", "LOOP_GAP_NS"]

# Looped replays add loop_index * this to every trade id, so each loop's trades stay distinct
# (venue ids here are far below it; derived ids wrap modulo 2**63 and stay distinct too).
LOOP_TRADE_ID_STEP = 10**12
# Looped replays leave this much time between one loop's last event and the next loop's first.
LOOP_GAP_NS = 1_000_000_000
_TOP_REASONS = 10


def register(subparsers) -> None:
    """Adds ``collect`` and ``replay`` to the ``tickmesh`` command."""
    p = subparsers.add_parser("collect", help="collect a live venue feed into NATS JetStream",
                              description="Collects a live venue feed into NATS JetStream until Ctrl-C. "
                                          "Only the simulated venue 'sim' runs without network access.")
    p.add_argument("--venue", help="venue id (default: edge.venue from config)")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.set_defaults(func=_collect_command)

    p = subparsers.add_parser("replay", help="replay a recorded file through the collector into NATS",
                              description="Replays a recorded file (ws recording, Kraken REST trades, Tardis "
                                          "CSV) through the live collector into NATS JetStream.")
    p.add_argument("file", help="recorded data file")
    p.add_argument("--format", help="reader name (default: sniffed from the file)")
    p.add_argument("--speed", type=_positive_float, default=None,
                   help="replay at this multiple of the recorded pace (default: as fast as possible)")
    p.add_argument("--loop", type=_positive_int, default=1, metavar="N",
                   help="replay the file N times, each loop shifted later in time with distinct trade ids")
    p.add_argument("--flush-ms", type=_positive_float, default=None,
                   help="receive-time span of one batch (default: edge.flush_ms from config)")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.set_defaults(func=_replay_command)


def nats_url(url: str | None, cfg: Config) -> str:
    """``--url``, else ``nats.url`` from config, else ``nats://<nats.host>:<nats.port>``."""
    return url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _tune_gc() -> None:
    """Runs the cyclic garbage collector every 100,000 allocations instead of 700.

    A collector allocates an event tuple or two per frame, none in reference cycles, and at the
    default threshold the collector took ~7 % of the time on one-event frames (bench/pipeline.py
    stage B'). The same setting as ``core._service.tune_gc`` for workers, which edge may not import.
    """
    gc.set_threshold(100_000, 20, 20)


# ---------------------------------------------------------------------------------------- collect

def _collect_command(args: argparse.Namespace, cfg: Config) -> int:
    from edge.adapters import ADAPTERS

    venue = args.venue or cfg.edge.venue
    if venue not in ADAPTERS:
        print(f"tickmesh collect: error: unknown venue {venue!r}; known: {', '.join(sorted(ADAPTERS))}",
              file=sys.stderr)
        return 2
    if venue != "sim":
        print(f"tickmesh collect: error: live collection from {venue!r} needs a WebSocket connection to "
              f"{ADAPTERS[venue].url}, which needs network access and is not implemented yet. "
              f"Use --venue sim, or `tickmesh replay FILE` for recorded {venue} data.", file=sys.stderr)
        return 2
    _tune_gc()
    return asyncio.run(_collect_sim(nats_url(args.url, cfg), cfg))


CLOSE_TIMEOUT_S = 30.0


async def _collect_sim(url: str, cfg: Config) -> int:
    from edge.adapters.sim import SimVenue
    from edge.collector import collect
    from edge.publisher import BatchPublisher

    venue = SimVenue.from_config(cfg.sim)
    nc, js = await _connect(url, cfg)
    if nc is None:
        return 2
    # Live: never block the venue socket; overflow drops the newest events, counted.
    pub = BatchPublisher(js, venue.venue, flush_ms=cfg.edge.flush_ms, max_batch=cfg.edge.max_batch,
                         max_pending_events=cfg.edge.max_pending_events, overflow="drop", flush_clock="wall")
    print(f"collecting {venue.venue} ({', '.join(cfg.sim.symbols)}) into {url}; Ctrl-C to stop", file=sys.stderr)
    started = time.perf_counter()
    try:
        await _run_until_interrupted(
            collect(venue.frames(), venue, pub, max_skew_ns=int(cfg.edge.max_clock_skew_s * 1e9), metrics_nc=nc))
    finally:
        await _close(pub, nc)
    print(format_summary(f"collected {venue.venue}", pub.stats, time.perf_counter() - started))
    # A signal is how a live collector is meant to stop: a clean exit once everything is acked.
    return 0


# ----------------------------------------------------------------------------------------- replay

def _replay_command(args: argparse.Namespace, cfg: Config) -> int:
    from edge.readers import reader_for

    reader = reader_for(args.file, args.format)  # DataFileError -> clear message, exit 2
    adapter = reader.adapter(args.file)
    _tune_gc()
    return asyncio.run(_replay(args, cfg, reader, adapter))


async def _replay(args: argparse.Namespace, cfg: Config, reader, adapter) -> int:
    from edge.publisher import BatchPublisher

    url = nats_url(args.url, cfg)
    nc, js = await _connect(url, cfg)
    if nc is None:
        return 2
    # A file can wait: "block" loses nothing. Receive-time flushing makes batch boundaries, and
    # so Nats-Msg-Ids, the same in every replay of the file: replaying it twice stores it once.
    pub = BatchPublisher(js, adapter.venue, flush_ms=args.flush_ms or cfg.edge.flush_ms,
                         max_batch=cfg.edge.max_batch, max_pending_events=cfg.edge.max_pending_events,
                         overflow="block", flush_clock="recv")
    started = time.perf_counter()
    progress = asyncio.create_task(_progress(pub.stats, started)) if sys.stderr.isatty() else None
    try:
        interrupted = await _run_until_interrupted(
            replay_loops(reader, args.file, adapter, pub, loops=args.loop, speed=args.speed, metrics_nc=nc))
    finally:
        if progress is not None:
            progress.cancel()
            print(file=sys.stderr)
        await _close(pub, nc)
    elapsed_s = time.perf_counter() - started
    title = f"replayed {args.file} ({reader.name}, venue {adapter.venue}) x{args.loop}"
    print(format_summary(title + (" (interrupted)" if interrupted else ""), pub.stats, elapsed_s))
    return 130 if interrupted else 0


async def _progress(stats, started: float, every_s: float = 0.5) -> None:
    """One self-overwriting status line on a terminal while a long replay runs."""
    while True:
        await asyncio.sleep(every_s)
        elapsed_s = time.perf_counter() - started
        print(f"\rreplaying: {stats.frames:,} frames, {stats.events:,} events ({stats.events / elapsed_s:,.0f}/s), "
              f"{stats.batches:,} batches stored, {stats.dead_letters:,} dead letters\x1b[K", end="", file=sys.stderr,
              flush=True)


async def replay_loops(reader, path, adapter, publisher, *, loops: int = 1, speed: float | None = None,
                       metrics_nc=None) -> None:
    """Collects ``path`` ``loops`` times into ``publisher`` (which the caller closes).

    Loop ``k`` shifts every exchange and receive time by ``k * span`` (span: the first loop's
    time range plus LOOP_GAP_NS) and adds ``k * LOOP_TRADE_ID_STEP`` to every trade id, in the
    publisher after parse and validation, so every loop is new, later data with distinct
    Nats-Msg-Ids. Pacing (``speed``) restarts with each loop.
    """
    from edge.collector import collect
    from edge.metrics import publish_metrics, publish_snapshot
    from edge.recorded import paced

    # One metrics task across all loops (a small file may be looped thousands of times).
    metrics_task = None
    if metrics_nc is not None:
        metrics_task = asyncio.create_task(publish_metrics(metrics_nc, publisher.venue, publisher.stats))
    publisher.track_time_range = loops > 1
    try:
        span_ns = LOOP_GAP_NS
        for k in range(loops):
            if k:
                publisher.shift(k * span_ns, k * LOOP_TRADE_ID_STEP)
            frames = reader.frames(path)
            if speed is not None:
                frames = paced(frames, speed)
            await collect(frames, adapter, publisher, max_skew_ns=reader.max_skew_ns, metrics_interval_s=None)
            if k == 0 and loops > 1:
                await publisher.flush()
                rng = publisher.time_range_ns
                publisher.track_time_range = False  # the first loop's range is all it takes
                if rng is not None:
                    span_ns = rng[1] - rng[0] + LOOP_GAP_NS
    finally:
        if metrics_task is not None:
            metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await metrics_task
            await publish_snapshot(metrics_nc, publisher.venue, publisher.stats)


# ---------------------------------------------------------------------------------------- helpers

# The edge never creates streams (that is `tickmesh streams ensure`, run by `tickmesh up`); it checks
# that something stores what it publishes.
_STORED_SUBJECTS = ("md.sim.trade.X", "dlq.edge.sim")


async def _connect(url: str, cfg: Config):
    """Connects and checks the streams; prints a clear error and returns (None, None) on failure.

    The first connection must succeed within ``nats.ready_timeout_s``; after that the client
    reconnects forever (an edge outlives server restarts), reporting each error on stderr.
    """
    import nats

    errors: list[BaseException] = []
    connected = False

    async def on_error(exc: BaseException) -> None:
        errors.append(exc)
        if connected:
            print(f"tickmesh: nats: {type(exc).__name__}: {exc}", file=sys.stderr)

    try:
        async with asyncio.timeout(cfg.nats.ready_timeout_s):
            nc = await nats.connect(url, error_cb=on_error, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    except Exception as exc:  # noqa: BLE001 - nats-py raises several unrelated types here
        cause = errors[-1] if errors else exc
        print(f"tickmesh: error: cannot connect to NATS at {url}: {type(cause).__name__}: {cause} "
              f"(start one with `tickmesh up`, or pass --url)", file=sys.stderr)
        return None, None
    connected = True
    js = nc.jetstream()
    try:
        for subject in _STORED_SUBJECTS:
            await js.find_stream_name_by_subject(subject)
    except Exception as exc:  # noqa: BLE001 - no stream, JetStream disabled, no permission, timeout, ...
        print(f"tickmesh: error: no JetStream stream at {url} stores {subject.rsplit('.', 2)[0]}.*: "
              f"{type(exc).__name__}: {exc} (run `tickmesh streams ensure --url {url}`; `tickmesh up` does)",
              file=sys.stderr)
        await nc.close()
        return None, None
    return nc, js


async def _close(publisher, nc) -> None:
    """Flushes the publisher (waiting for acks), then closes the connection.

    Bounded by CLOSE_TIMEOUT_S: with the server gone for good, what is still unacknowledged is
    reported instead of holding the process forever.
    """
    try:
        await asyncio.wait_for(publisher.close(), CLOSE_TIMEOUT_S)
    except asyncio.TimeoutError:
        print(f"tickmesh: warning: {publisher.pending} events and dead letters not acknowledged within "
              f"{CLOSE_TIMEOUT_S:g} s of stopping; they were not stored", file=sys.stderr)
    finally:
        with contextlib.suppress(OSError, nats.errors.Error):  # the server may be gone already
            await nc.close()


async def _run_until_interrupted(coro) -> bool:
    """Runs ``coro`` until it ends or SIGINT/SIGTERM arrives; True if interrupted."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, task.cancel)
            installed.append(sig)
    try:
        await task
        return False
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        return True
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def format_summary(title: str, stats, elapsed_s: float) -> str:
    """A few human lines: frames, events, dead letters by reason, throughput."""
    s = stats
    lines = [
        f"{title} in {elapsed_s:.2f} s",
        f"  frames {s.frames:,}: {s.event_frames:,} with events, {s.control_frames:,} control, "
        f"{s.empty_frames:,} empty, {s.failed_frames:,} unparseable",
        f"  events {s.events:,} (trades {s.trades:,}, quotes {s.quotes:,}), {s.rejected:,} rejected, "
        f"{s.batches:,} batches stored or confirmed ({s.duplicates:,} already stored)",
        f"  dead letters {s.dead_letters:,}" + (" by reason:" if s.dead_letters else ""),
    ]
    reasons = sorted(s.dead_letter_reasons.items(), key=lambda kv: -kv[1])
    for reason, n in reasons[:_TOP_REASONS]:
        lines.append(f"    {n:>9,}  {reason[:160]}")
    if len(reasons) > _TOP_REASONS:
        rest = sum(n for _, n in reasons[_TOP_REASONS:])
        lines.append(f"    {rest:>9,}  ({len(reasons) - _TOP_REASONS} other reasons)")
    lines.append(f"  overflow dropped {s.overflow_dropped:,}, publish errors {s.publish_errors:,}, "
                 f"given up {s.publish_failed:,}" + (f" (last: {s.last_error})" if s.last_error else ""))
    rate = s.events / elapsed_s if elapsed_s > 0 else 0.0
    frame_rate = s.frames / elapsed_s if elapsed_s > 0 else 0.0
    lines.append(f"  {rate:,.0f} events/s, {frame_rate:,.0f} frames/s")
    return "\n".join(lines)
