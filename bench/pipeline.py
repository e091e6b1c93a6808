"""End-to-end pipeline benchmark: recorded frames looped to millions of events through
edge parse -> JetStream -> bar worker -> bars, with a baseline for every stage run in this process.

Stages (each prints events/s and a ratio against its baseline):
  A  edge parse + validate, CPU only            baseline: stdlib json.loads of the same frames
  B  edge parse + validate + batch + publish     baseline: one awaited js.publish per event
     (batches cut at 500 events or 1 s of recorded receive time, as `tickmesh replay --flush-ms 1000`)
  B' the same frames with every receive and exchange time gap divided by --compress (a busy
     market: the recordings are sparse, so in B a 1 s window of one symbol holds ~3 events), through
     the very same parse + validate + batch + publish path and settings as B
  C  bar worker: MD stream -> bars on BARS       baseline: a naive worker (per-trade Python loop,
                                                 one awaited publish per bar, one ack per message)
  C' the same worker on the same trades with every time gap divided by --compress (a busy market:
     the recordings are sparse, ~1.2 bars per trade, so stage C mostly measures bar publishing),
     in batches of 500 with the symbols taking turns, one batch each
  D  latency, paced live run (worker in its own process): edge receive of the trade that closes a
     1s bar (its watermark crossing) -> that bar arriving at a subscriber; p50/p99.

Frames: the frames of the recordings that normalize into events (channels that are dead-lettered,
such as Coinbase l2update, are left out of the loop), looped with every timestamp shifted by the
source's span so each loop continues the previous one, and trade ids offset per loop. The garbage
collector is tuned as in a worker or edge process (`core._service.tune_gc`).

Usage: python bench/pipeline.py [--events 2000000] [--compress 1000] [--latency-rate 5000]
       [--latency-s 10] [--stages A,B,B',C,C',D]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import nats
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import streams  # noqa: E402
from core._service import tune_gc  # noqa: E402
from core.bar_worker import BarWorker  # noqa: E402
from core.config import StreamsConfig, WorkerConfig  # noqa: E402
from core.natsserver import NatsServer  # noqa: E402
from core.schema import Codec, TIMEFRAME_NS, TradeBatch  # noqa: E402
from edge.adapters.base import IsoTimeParser  # noqa: E402
from edge.collector import collect  # noqa: E402
from edge.events import Trade  # noqa: E402
from edge.metrics import publish_metrics, publish_snapshot  # noqa: E402
from edge.publisher import BatchPublisher  # noqa: E402
from edge.readers import reader_for  # noqa: E402
from edge.validate import process_frame  # noqa: E402

CODEC = Codec()  # one codec for this module, as every component builds its own

DATA = ROOT.parent / "shared" / "data"
SOURCES = ["ticks/kraken_xbtusdt_trades_rest.json", "ws/coinbase.ws.txt", "ws/kraken_trade.ws.txt",
           "ws/kraken_ticker.ws.txt", "ws/binance_spot.ws.txt"]
LOOP_ID_OFFSET = 10**10
# Stage B replays as fast as possible, cutting batches on recorded receive time (deterministic
# Msg-Ids): the recordings are sparse, so a 20 ms window would hold one event per batch.
REPLAY_FLUSH_MS = 1000.0
STAGES = ("A", "B", "B'", "C", "C'", "D")


class Source:
    """One recording: its useful frames, adapter and time span."""

    def __init__(self, rel: str) -> None:
        path = DATA / rel
        if not path.exists():
            sys.exit(f"recorded data missing: {path} (the benchmark needs ../shared/data)")
        self.name = rel
        reader = reader_for(path)
        self.adapter = reader.adapter(path)
        self.max_skew_ns = reader.max_skew_ns
        self.frames, self.events, times = [], 0, []
        for recv_ns, raw in reader.frames(path):
            res = process_frame(self.adapter, raw, recv_ns, self.max_skew_ns)
            if res.events and not res.dead_letters:
                self.frames.append((recv_ns, raw))
                self.events += len(res.events)
                times += [recv_ns] + [e.ts_ns for e in res.events]
        self.span_ns = max(times) - min(times) + 1_000_000_000
        self.t0_ns = min(times)

    def compressed(self, compress: float) -> "Source":
        """This recording with every receive and exchange time gap divided by ``compress``.

        Times become ``t0 + (t - t0) / compress``; exchange times are rewritten in the frame
        text in the venue's own format (so Binance keeps ms and Coinbase µs resolution), and the
        result is checked: the same events, times within that resolution of the target.
        """
        t0 = self.t0_ns

        def squeeze(t_ns: int) -> int:
            return t0 + int((t_ns - t0) / compress)

        out = object.__new__(Source)
        out.name, out.adapter, out.max_skew_ns, out.events, out.t0_ns = (
            self.name, self.adapter, self.max_skew_ns, self.events, t0)
        out.span_ns = max(1, math.ceil(self.span_ns / compress))
        out.frames = [(squeeze(recv_ns), _retime_frame(raw, squeeze)) for recv_ns, raw in self.frames]
        for (recv_ns, raw), (recv_c, raw_c) in zip(self.frames, out.frames):
            got = process_frame(self.adapter, raw_c, recv_c, None).events
            want = process_frame(self.adapter, raw, recv_ns, None).events
            ok = len(got) == len(want) and all(
                g[0] == w[0] and g[2:4] == w[2:4] and abs(g[1] - (squeeze(w[1]) if w[1] != recv_ns else recv_c))
                <= 1_000_000 for g, w in zip(got, want))
            if not ok:
                sys.exit(f"{self.name}: a frame did not retime cleanly: {raw[:200]!r}")
        return out


_ISO_TIME = re.compile(r'"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)"')
_EPOCH_S = re.compile(r'(?<=[\s"\[,])(1\d{9})\.(\d+)(?=[",\s\]])')  # "1618678150.826417", 1762795433.97
_EPOCH_MS_FIELD = re.compile(r'"([ET])":(1\d{12})\b')  # Binance "E"/"T" in ms


def _retime_frame(raw: str | bytes, squeeze) -> str | bytes:
    """``raw`` with the exchange times it spells (ISO text, epoch seconds, epoch ms) squeezed."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    iso_ns = IsoTimeParser().to_ns

    def iso(m: re.Match) -> str:
        t_ns = squeeze(iso_ns(m[1]))
        secs, ns = divmod(t_ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        return f'"time":"{stamp}.{ns // 1000:06d}Z"'

    def epoch_s(m: re.Match) -> str:
        frac = m[2]
        t_ns = squeeze(int(m[1]) * 1_000_000_000 + int((frac + "000000000")[:9]))
        return f"{t_ns // 1_000_000_000}.{t_ns % 1_000_000_000:09d}"

    def epoch_ms(m: re.Match) -> str:
        return f'"{m[1]}":{squeeze(int(m[2]) * 1_000_000) // 1_000_000}'

    text = _EPOCH_MS_FIELD.sub(epoch_ms, _EPOCH_S.sub(epoch_s, _ISO_TIME.sub(iso, text)))
    return text.encode() if isinstance(raw, bytes) else text


def loops_for(sources: list[Source], events: int) -> int:
    return -(-events // sum(s.events for s in sources))


def stage_a(sources: list[Source], loops: int) -> dict:
    n = 0
    t0 = time.perf_counter()
    for _ in range(loops):
        for src in sources:
            for recv_ns, raw in src.frames:
                n += len(process_frame(src.adapter, raw, recv_ns, src.max_skew_ns).events)
    ours = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    m = 0
    for _ in range(max(1, loops // 10)):
        for src in sources:
            for _, raw in src.frames:
                json.loads(raw)
                m += 1
    frames_s = m / (time.perf_counter() - t0)
    events_per_frame = sum(s.events for s in sources) / sum(len(s.frames) for s in sources)
    return {"events": n, "ours": ours, "baseline": frames_s * events_per_frame}


async def stage_b(js, sources: list[Source], loops: int) -> dict:
    t0 = time.perf_counter()
    events = 0
    per_source = []
    for src in sources:
        t_src = time.perf_counter()
        async with BatchPublisher(js, src.adapter.venue, flush_clock="recv", flush_ms=REPLAY_FLUSH_MS) as pub:
            # One metrics task across the loops, as `tickmesh replay --loop` runs it (a task and a
            # final snapshot per loop would cost ~5 us per event on the 10-event Kraken loops).
            metrics = asyncio.create_task(publish_metrics(js._nc, pub.venue, pub.stats))
            for loop in range(loops):
                pub.shift(loop * src.span_ns, loop * LOOP_ID_OFFSET)
                await collect(src.frames, src.adapter, pub, max_skew_ns=None, metrics_interval_s=None)
            metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await metrics
            await publish_snapshot(js._nc, pub.venue, pub.stats)
        events += pub.stats.events
        per_source.append((Path(src.name).name, pub.stats.events, pub.stats.events / (time.perf_counter() - t_src),
                           pub.stats.events / max(pub.stats.batches, 1)))
    ours = events / (time.perf_counter() - t0)
    # Baseline: the naive way, one awaited publish per event, on a subset.
    base_n = 5000
    t0 = time.perf_counter()
    for i in range(base_n):
        await js.publish("md.bench.trade.BASE-LINE", b"x" * 40)
    baseline = base_n / (time.perf_counter() - t0)
    return {"events": events, "ours": ours, "baseline": baseline, "per_source": per_source}


async def naive_worker(js, max_msgs: int) -> float:
    """Baseline: the straightforward worker. Per trade, in Python, update the bar of each timeframe;
    publish each bar that closes with an awaited js.publish; ack each message. Returns trades/s."""
    from nats.js.api import StreamConfig
    await js.add_stream(StreamConfig(name="NAIVE", subjects=["naive.>"]))
    sub = await js.pull_subscribe("md.*.trade.>", stream=streams.MD_STREAM)
    open_bars: dict[tuple, list] = {}
    n = done = 0
    t0 = time.perf_counter()
    while done < max_msgs:
        try:
            msgs = await sub.fetch(min(64, max_msgs - done), timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            break
        for msg in msgs:
            batch = CODEC.decode(msg.data)
            c = batch.columns()
            for ts, px, qty in zip(c["ts_ns"].tolist(), c["px"].tolist(), c["qty"].tolist()):
                for tf, tf_ns in TIMEFRAME_NS.items():
                    key = (batch.venue, batch.symbol, tf)
                    start = ts - ts % tf_ns
                    bar = open_bars.get(key)
                    if bar is not None and bar[0] != start:
                        await js.publish(f"naive.{tf}", json.dumps(bar).encode())
                        bar = None
                    if bar is None:
                        open_bars[key] = [start, px, px, px, px, qty]
                    else:
                        bar[2], bar[3], bar[4], bar[5] = max(bar[2], px), min(bar[3], px), px, bar[5] + qty
                n += 1
            await msg.ack()
            done += 1
    return n / (time.perf_counter() - t0)


async def stage_c(js, cfg: WorkerConfig) -> dict:
    info = await js.stream_info(streams.MD_STREAM)
    worker = BarWorker(js, cfg)
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(worker.run(stop))
    while worker.stats.last_seq < info.state.last_seq:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    baseline = await naive_worker(js, max_msgs=300)
    return {"events": worker.stats.trades, "bars": worker.stats.bars, "ours": worker.stats.trades / elapsed,
            "bars_s": worker.stats.bars / elapsed, "baseline": baseline}


def dense_batches(sources: list[Source], events: int, compress: float, batch: int = 500) -> list[TradeBatch]:
    """The recorded trades, looped, every gap divided by ``compress``, in batches per series.

    The series take turns, one batch each (as a live edge publishing many symbols at once
    interleaves them), so the worker's merging of one series' consecutive batches gets no more
    help than the data gives: the Kraken REST series, 75 % of the trades, runs alone at the end.
    """
    per_series: dict[tuple, list[tuple]] = defaultdict(list)
    for src in sources:
        for recv_ns, raw in src.frames:
            for ev in process_frame(src.adapter, raw, recv_ns, None).events:
                if isinstance(ev, Trade):
                    per_series[(src.adapter.venue, ev.symbol, src.span_ns)].append(ev)
    series = []
    n_trades = sum(len(v) for v in per_series.values())
    loops = -(-events // n_trades)
    for (venue, symbol, span_ns), trades in per_series.items():
        t0 = min(t.ts_ns for t in trades)
        ts = np.array([t.ts_ns - t0 for t in trades], dtype=np.float64) / compress
        cols = dict(px=[t.px for t in trades], qty=[t.qty for t in trades], side=[t.side for t in trades])
        ids = np.array([t.trade_id for t in trades], dtype=np.int64)
        ts_ns = np.concatenate([(t0 + ts + loop * span_ns / compress).astype(np.int64) for loop in range(loops)])
        trade_id = np.concatenate([ids + loop * LOOP_ID_OFFSET for loop in range(loops)])
        px, qty, side = (np.tile(np.asarray(cols[k]), loops) for k in ("px", "qty", "side"))
        series.append([TradeBatch.from_columns(venue, symbol, ts_ns=ts_ns[sl], recv_ns=ts_ns[sl], px=px[sl],
                                               qty=qty[sl], side=side[sl], trade_id=trade_id[sl])
                       for sl in (slice(lo, lo + batch) for lo in range(0, len(ts_ns), batch))])
    return [b for turn in itertools.zip_longest(*series) for b in turn if b is not None]


async def stage_c_dense(batches: list[TradeBatch]) -> dict:
    from core import subjects
    from core.schema import HDR_MSG_ID, batch_msg_id
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "js") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await streams.ensure(js, StreamsConfig(md_max_bytes=16 * 1024**3))
        futures = []
        for b in batches:
            futures.append(await js.publish_async(subjects.md(b.venue, "trade", b.symbol), CODEC.encode(b),
                                                  headers={HDR_MSG_ID: batch_msg_id("trade", b)}))
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        result = await stage_c(js, WorkerConfig())
        await nc.close()
    return result


async def stage_d(sources: list[Source], rate: float, seconds: float, lateness_ms: float) -> dict:
    """Paced live run: frames re-stamped with the wall clock, worker in its own process."""
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "js") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await streams.ensure(js, StreamsConfig())
        env = {**os.environ, "TICKMESH_WORKER__LATENESS_MS": str(lateness_ms), "TICKMESH_DATA_DIR": tmp}
        worker = subprocess.Popen([sys.executable, "-m", "core.cli", "worker", "--url", server.url], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        arrivals: list[tuple[str, str, int, int]] = []

        async def on_bar(msg):
            bar = CODEC.decode(msg.data)
            arrivals.append((bar.venue, bar.symbol, bar.start_ns, time.time_ns()))

        await nc.subscribe("bar.1s.>", cb=on_bar)
        # (venue, symbol) -> running max of exchange time, and the receive time of each trade
        running_max: dict[tuple, list[int]] = defaultdict(list)
        recv_of: dict[tuple, list[int]] = defaultdict(list)
        shift_ns = {}
        t_start = time.time_ns()
        sent = 0

        async def paced(src: Source, loop: int):
            nonlocal sent
            for _, raw in src.frames:
                recv_ns = time.time_ns()
                res = process_frame(src.adapter, raw, recv_ns, None)
                for ev in res.events:
                    if isinstance(ev, Trade):
                        key = (src.adapter.venue, ev.symbol)
                        ts = ev.ts_ns + shift_ns[src.name] + loop * src.span_ns
                        rm = running_max[key]
                        rm.append(max(rm[-1], ts) if rm else ts)
                        recv_of[key].append(recv_ns)
                sent += len(res.events)
                yield recv_ns, raw
                ahead_s = sent / rate - (time.time_ns() - t_start) / 1e9
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s)

        pubs = {}
        for src in sources:
            first_ts = min(min(e.ts_ns for e in process_frame(src.adapter, raw, r, None).events) for r, raw in src.frames)
            shift_ns[src.name] = t_start - first_ts  # event time starts now
            pubs[src.name] = BatchPublisher(js, src.adapter.venue, flush_clock="wall")
        loop = 0
        while (time.time_ns() - t_start) / 1e9 < seconds:
            for src in sources:
                pub = pubs[src.name]
                pub.shift(shift_ns[src.name] + loop * src.span_ns, loop * LOOP_ID_OFFSET)
                await collect(paced(src, loop), src.adapter, pub, max_skew_ns=None)
            loop += 1
        for pub in pubs.values():
            await pub.close()
        await asyncio.sleep(2.0)
        worker.terminate()
        worker.wait(10)
        await nc.close()
    lateness_ns = int(lateness_ms * 1e6)
    latencies = []
    for venue, symbol, start_ns, arrived_ns in arrivals:
        key = (venue, symbol)
        # The trade whose arrival pushed the watermark past the bar's end closed the bar.
        i = bisect.bisect_left(running_max[key], start_ns + TIMEFRAME_NS["1s"] + lateness_ns)
        if i < len(recv_of[key]):
            latencies.append((arrived_ns - recv_of[key][i]) / 1e6)
    lat = np.array(latencies)
    return {"events": sent, "rate": sent / seconds, "bars": len(lat),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan")}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000, help="events through stages A-C' (default 2M)")
    ap.add_argument("--compress", type=float, default=1000.0,
                    help="time compression of stages B' and C' (default 1000)")
    ap.add_argument("--latency-rate", type=float, default=5_000, help="events/s offered in stage D")
    ap.add_argument("--latency-s", type=float, default=10.0, help="duration of stage D")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    if stages - set(STAGES):
        ap.error(f"unknown stages {sorted(stages - set(STAGES))}; known: {','.join(STAGES)}")
    # The garbage collector as in the processes measured: workers (core._service.run_command) and
    # edge collectors (edge.cli) both run it every 100,000 allocations.
    tune_gc()
    sources = [Source(rel) for rel in SOURCES]
    loops = loops_for(sources, args.events)
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("sources: " + ", ".join(f"{Path(s.name).name} ({len(s.frames)} frames, {s.events} events)" for s in sources))
    print(f"loops: {loops} -> {loops * sum(s.events for s in sources):,} events\n")
    rows = []
    per_source = {}
    c = cd = None
    if "A" in stages:
        a = stage_a(sources, loops)
        rows.append(("A edge parse+validate", a["events"], a["ours"], "json.loads only", a["baseline"]))
    if stages & {"B", "B'", "C"}:
        # B and B' each publish into a fresh server; C consumes what B stored.
        for stage in ("B", "B'"):
            if stage not in stages and not (stage == "B" and "C" in stages):
                continue
            srcs = sources if stage == "B" else [src.compressed(args.compress) for src in sources]
            with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "js") as server:
                nc = await nats.connect(server.url)
                js = nc.jetstream()
                await streams.ensure(js, StreamsConfig(md_max_bytes=16 * 1024**3))
                b = await stage_b(js, srcs, loops)
                name = "B edge parse+publish" if stage == "B" else f"B' edge, gaps /{args.compress:g}"
                rows.append((name, b["events"], b["ours"], "awaited publish/event", b["baseline"]))
                per_source[stage] = b["per_source"]
                if stage == "B" and "C" in stages:
                    c = await stage_c(js, WorkerConfig())
                    rows.append(("C worker trades->bars", c["events"], c["ours"], "naive worker", c["baseline"]))
                await nc.close()
    if "C'" in stages:
        cd = await stage_c_dense(dense_batches(sources, args.events, args.compress))
        rows.append((f"C' worker, gaps /{args.compress:g}", cd["events"], cd["ours"], "naive worker", cd["baseline"]))
    print(f"\n{'stage':26s} {'events':>11s} {'events/s':>12s}   {'baseline':22s} {'baseline/s':>11s} {'ratio':>7s}")
    for name, n, ours, base_name, base in rows:
        print(f"{name:26s} {n:11,d} {ours:12,.0f}   {base_name:22s} {base:11,.0f} {ours / base:6.1f}x")
    for stage, figures in per_source.items():
        print(f"\n{stage} by source:")
        for name, n, rate, per_batch in figures:
            print(f"  {name:34s} {n:11,d} events {rate:11,.0f} events/s {per_batch:7.1f} events per batch")
    for name, r in (("C", c), ("C'", cd)):
        if r is not None:
            print(f"{name}: worker published {r['bars']:,} bars ({r['bars_s']:,.0f} bars/s), "
                  f"{r['bars'] / max(r['events'], 1):.3f} bars per trade at 5 timeframes")
    if "D" in stages:
        d = await stage_d(sources, args.latency_rate, args.latency_s, WorkerConfig().lateness_ms)
        print(f"\nD latency, paced at {d['rate']:,.0f} events/s for {args.latency_s:g} s, worker in its own process: "
              f"closing trade received at the edge -> 1s bar at a subscriber: p50 {d['p50_ms']:.1f} ms, "
              f"p99 {d['p99_ms']:.1f} ms over {d['bars']:,} bars")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
