"""The bar worker against a real nats-server: bars out, dead letters for late and bad input,
and identical bars after a kill -9 mid-stream."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import msgspec
import numpy as np
import pytest
from nats.js.errors import KeyNotFoundError

from core import streams, subjects
from core.bar_worker import BarWorker
from core.bars import BarBuilder
from core.config import StreamsConfig, WorkerConfig
from core.schema import (HDR_MSG_ID, HDR_TRACEPARENT, TIMEFRAME_NS, Bar, Codec, DeadLetter, TradeBatch,
                         batch_msg_id)
from tests.conftest import shared_file

CODEC = Codec()  # one codec for this module, as every component builds its own

ROOT = Path(__file__).resolve().parents[1]
HOUR_NS = 3_600_000_000_000


def kraken_rest_batches(loops: int = 1, batch_size: int = 50) -> list[TradeBatch]:
    """The recorded Kraken REST trades, repeated ``loops`` times 8 h apart, in batches."""
    rows = json.loads(shared_file("ticks/kraken_xbtusdt_trades_rest.json").read_text())["result"]["XBTUSDT"]
    ts = np.array([int(Decimal(str(r[2])) * 10**9) for r in rows], dtype=np.int64)
    px = np.array([float(r[0]) for r in rows])
    qty = np.array([float(r[1]) for r in rows])
    side = np.array([1 if r[3] == "b" else -1 for r in rows], dtype=np.int8)
    ids = np.array([int(r[6]) for r in rows], dtype=np.int64)
    out = []
    for loop in range(loops):
        shift = loop * 8 * HOUR_NS
        for lo in range(0, len(rows), batch_size):
            sl = slice(lo, lo + batch_size)
            out.append(TradeBatch.from_columns(
                "kraken", "BTC-USDT", ts_ns=ts[sl] + shift, recv_ns=ts[sl] + shift + 5_000_000, px=px[sl],
                qty=qty[sl], side=side[sl], trade_id=ids[sl] + loop * 10**9))
    return out


def expected_bars(batches, cfg: WorkerConfig) -> list[Bar]:
    builder = BarBuilder(cfg.timeframes, lateness_ns=int(cfg.lateness_ms * 1e6))
    return [bar for batch in batches for bar in builder.update(batch)]


async def publish(js, batches) -> None:
    futures = [await js.publish_async(subjects.md(b.venue, "trade", b.symbol), CODEC.encode(b),
                                      headers={HDR_MSG_ID: batch_msg_id("trade", b)}) for b in batches]
    await asyncio.gather(*futures)


async def stream_messages(js, stream: str, subject: str = ">") -> list:
    info = await js.stream_info(stream)
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    out = []
    try:
        while len(out) < info.state.messages:
            out.append(await asyncio.wait_for(sub.next_msg(), 10))
    finally:
        await sub.unsubscribe()
    return out


async def wait_until(predicate, timeout_s: float = 60.0, every_s: float = 0.1):
    async def poll():
        while not (result := await predicate()):
            await asyncio.sleep(every_s)
        return result
    return await asyncio.wait_for(poll(), timeout_s)


async def test_worker_publishes_the_bars_of_an_uninterrupted_run(nc):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    cfg = WorkerConfig(fetch_batch=7)
    batches = kraken_rest_batches()
    await publish(js, batches)
    worker = BarWorker(js, cfg)
    await run_until_done(worker, len(batches))
    got = [CODEC.decode(m.data) for m in await stream_messages(js, streams.BARS_STREAM)]
    want = expected_bars(batches, cfg)
    assert len(want) > 100
    assert sorted(got, key=_key) == sorted(want, key=_key)
    assert worker.stats.trades == 1000 and worker.stats.late_trades == 0


async def _done(worker, n_messages):
    return worker.stats.messages == n_messages and await worker.lag() == 0


async def run_until_done(worker: BarWorker, n_messages: int) -> None:
    """Runs the worker until it has taken ``n_messages`` and nothing is pending, then stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: _done(worker, n_messages))
    finally:
        stop.set()
        await task


def _key(bar: Bar):
    return (bar.venue, bar.symbol, bar.tf, bar.start_ns)


async def test_late_and_garbage_input_is_dead_lettered_and_the_worker_goes_on(nc):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    good = kraken_rest_batches(batch_size=1000)[0]
    cols = good.columns()
    # A trade 10 minutes older than the newest: late for 1s..5m bars, on time for the 1h bar.
    late = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[int(cols["ts_ns"][-1]) - 600 * 10**9],
                                   recv_ns=[1], px=[100.0], qty=[1.0], side=[1], trade_id=[42])
    await publish(js, [good, late])
    await js.publish("md.kraken.trade.BTC-USDT", b"\xc1 not msgpack")
    await js.publish("md.kraken.trade.BTC-USDT", CODEC.encode(Bar("kraken", "BTC-USDT", "1s", 0, *[1.0] * 6, 1, 0.0, 0.0)))
    nan = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[int(cols["ts_ns"][-1])], recv_ns=[1],
                                  px=[float("nan")], qty=[1.0], side=[1], trade_id=[44])
    await publish(js, [nan])  # a poison message: refused by the builder, dead-lettered, not retried
    after = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[int(cols["ts_ns"][-1]) + 7200 * 10**9],
                                    recv_ns=[1], px=[1.0], qty=[1.0], side=[1], trade_id=[43])
    await publish(js, [after])
    worker = BarWorker(js, WorkerConfig())
    await run_until_done(worker, 6)
    letters = [(m.headers["Tm-Reason"], CODEC.decode(m.data)) for m in await stream_messages(js, streams.DLQ_STREAM)]
    reasons = sorted(r for r, _ in letters)
    assert len([r for r in reasons if r.startswith("late: 1 trades after the")]) == 4  # 1s 5s 1m 5m
    assert any("undecodable" in r for r in reasons)
    assert any("expected a TradeBatch" in r for r in reasons)
    assert any("px=nan" in r and "must be finite" in r for r in reasons)
    assert all(isinstance(d, DeadLetter) and d.stage == "worker" and d.venue == "kraken" for _, d in letters)
    assert worker.stats.late_trades == 4 and worker.stats.dead_letters == 7
    # The trade after the gap closed every open bar, the 1h bar holding the late trade included.
    bars = [CODEC.decode(m.data) for m in await stream_messages(js, streams.BARS_STREAM)]
    hour = [b for b in bars if b.tf == "1h"]
    assert sum(b.n_trades for b in hour) == 1001


async def test_runs_of_one_series_give_the_bars_traces_and_dead_letters_of_one_message_at_a_time(nc):
    """The worker feeds consecutive messages of a series to the builder together; what it
    publishes must still be what handling each message alone gives."""
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    # Chunks of 8: the late trade's run (messages 1-8) and the last run go through the builder
    # whole; the run with the poison message (9-16) is refused and redone one message at a time.
    cfg = WorkerConfig(fetch_batch=8)
    good = kraken_rest_batches(loops=2, batch_size=100)
    last_ts = int(good[5].columns()["ts_ns"][-1])
    # A trade 10 minutes old (late for 1s..5m) and a poison message, both inside the run.
    late = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[last_ts - 600 * 10**9], recv_ns=[1], px=[100.0],
                                   qty=[1.0], side=[1], trade_id=[42])
    nan = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[last_ts], recv_ns=[1], px=[float("nan")], qty=[1.0],
                                  side=[1], trade_id=[44])
    batches = good[:6] + [late] + good[6:12] + [nan] + good[12:]
    trace_ids = [f"{i + 1:032x}" for i in range(len(batches))]
    for batch, trace_id in zip(batches, trace_ids):
        await js.publish(subjects.md(batch.venue, "trade", batch.symbol), CODEC.encode(batch),
                         headers={HDR_MSG_ID: batch_msg_id("trade", batch),
                                  HDR_TRACEPARENT: f"00-{trace_id}-{'0' * 15}1-01"})
    # One message at a time: the bars each closes, in publish order, and its late trades.
    builder = BarBuilder(cfg.timeframes, lateness_ns=int(cfg.lateness_ms * 1e6))
    want_bars, want_letters = [], set()
    for seq, (batch, trace_id) in enumerate(zip(batches, trace_ids), start=1):
        if batch is nan:
            want_letters.add(f"dlq.worker.{seq}.")
            continue
        closed = sorted(builder.update(batch), key=lambda b: (b.start_ns + TIMEFRAME_NS[b.tf], -TIMEFRAME_NS[b.tf]))
        want_bars += [(bar, trace_id) for bar in closed]
        want_letters |= {f"dlq.worker.{seq}.{entry.tf}.{i}" for i, entry in enumerate(builder.late_trades())}
    assert len(want_letters) == 5 and len({t for _, t in want_bars}) > 3

    worker = BarWorker(js, cfg)
    await run_until_done(worker, len(batches))
    got_bars = [(CODEC.decode(m.data), m.headers[HDR_TRACEPARENT].split("-")[1])
                for m in await stream_messages(js, streams.BARS_STREAM)]
    assert got_bars == want_bars  # same bars, same order, each continuing the trace of the message that closed it
    letters = await stream_messages(js, streams.DLQ_STREAM)
    assert {m.headers[HDR_MSG_ID] for m in letters} == want_letters
    assert worker.stats.dead_letters == 5 and worker.stats.late_trades == 4


@pytest.mark.timeout(240)
async def test_kill_9_mid_stream_yields_identical_bars(nc, nats_server, tmp_path):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    cfg = WorkerConfig(fetch_batch=4)
    batches = kraken_rest_batches(loops=40, batch_size=50)
    await publish(js, batches)
    last_seq = (await js.stream_info(streams.MD_STREAM)).state.last_seq
    env = {**os.environ, "TICKMESH_WORKER__FETCH_BATCH": str(cfg.fetch_batch),
           "TICKMESH_DATA_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "core.cli", "worker", "--url", nats_server.url]
    kv = await js.key_value(streams.STATE_BUCKET)

    async def snapshot_seq() -> int:
        try:
            entry = await kv.get(f"{streams.BARS_WORKER}.state")
        except KeyNotFoundError:
            return 0
        return msgspec.msgpack.decode(entry.value)[0]  # the snapshot's last consumed stream seq

    kills = 0
    for target in (last_seq // 4, last_seq // 2):
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_until(lambda: _past(snapshot_seq, target), timeout_s=120)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
        assert await snapshot_seq() < last_seq, "the worker finished before it was killed"
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_until(lambda: _past(snapshot_seq, last_seq), timeout_s=120)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    got = [CODEC.decode(m.data) for m in await stream_messages(js, streams.BARS_STREAM)]
    want = expected_bars(batches, cfg)
    assert kills == 2 and len(want) > 5000
    # The stream holds every bar exactly once: republished bars were dropped as duplicates.
    assert sorted(got, key=_key) == sorted(want, key=_key)


async def _past(snapshot_seq, target: int) -> bool:
    return await snapshot_seq() >= target
