"""Live features: the feature book equals the offline computation however the stream is chunked,
and the feature worker against a real nats-server publishes the same vectors, dead-letters bad
input, and gives identical vectors after a kill -9 mid-stream."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from nats.js.errors import ObjectNotFoundError

from core import streams, subjects
from core.bars import BarBuilder
from core.config import FeaturesConfig, StreamsConfig
from core.feature_worker import FeatureWorker
from core.features.barfile import BarSeries
from core.features.book import FeatureBook
from core.features.featureset import FeatureSet
from core.features.offline import compute
from core.schema import HDR_MSG_ID, TIMEFRAME_NS, Bar, Codec, FeatureVector, TradeBatch, bar_msg_id
from tests.test_worker import kraken_rest_batches, stream_messages, wait_until

CODEC = Codec()
ROOT = Path(__file__).resolve().parents[1]
TIMEFRAMES = ("1m", "5m", "1h")


def live_bars(loops: int = 2) -> list[Bar]:
    """Bars of two symbols (the recorded Kraken trades and a rescaled copy), in the order the bar
    worker publishes them: per trade batch, by end time, the longer timeframe first on a tie."""
    builder = BarBuilder(TIMEFRAMES, lateness_ns=0)
    out = []
    for batch in kraken_rest_batches(loops=loops, batch_size=50):
        c = batch.columns()
        twin = TradeBatch.from_columns("kraken", "ETH-USDT", ts_ns=c["ts_ns"], recv_ns=c["recv_ns"],
                                       px=c["px"] / 30.0, qty=c["qty"] * 7, side=-c["side"], trade_id=c["trade_id"])
        for b in (batch, twin):
            bars = builder.update(b)
            bars.sort(key=lambda x: (x.start_ns + TIMEFRAME_NS[x.tf], -TIMEFRAME_NS[x.tf]))
            out.extend(bars)
    return out


def series_of(bars: list[Bar]) -> list[BarSeries]:
    keys = sorted({(b.venue, b.symbol, b.tf) for b in bars})
    out = []
    for venue, symbol, tf in keys:
        sel = [b for b in bars if (b.venue, b.symbol, b.tf) == (venue, symbol, tf)]
        cols = {f: np.array([getattr(b, f) for b in sel], dtype=np.float64)
                for f in ("open", "high", "low", "close", "volume", "vwap", "buy_volume", "sell_volume")}
        cols["ts_ns"] = np.array([b.start_ns for b in sel], dtype=np.int64)
        out.append(BarSeries(name=f"{symbol}/{tf}", columns=cols, venue=venue, symbol=symbol, tf=tf))
    return out


def by_key(bars: list[Bar], values: np.ndarray) -> dict[tuple, np.ndarray]:
    return {(b.venue, b.symbol, b.tf, b.start_ns): v for b, v in zip(bars, values)}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))


@pytest.fixture(scope="module")
def bars() -> list[Bar]:
    return live_bars()


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return FeatureSet()


@pytest.fixture(scope="module")
def uninterrupted(bars, fs) -> dict:
    values, refused = FeatureBook(fs).on_bars(bars)
    assert refused.size == 0
    return by_key(bars, values)


def test_book_equals_offline_computation(bars, fs, uninterrupted):
    series = series_of(bars)
    offline = {}
    for s, vals in zip(series, compute(series, fs)):
        for ts, v in zip(s.columns["ts_ns"], vals):
            offline[(s.venue, s.symbol, s.tf, int(ts))] = v
    assert_same(uninterrupted, offline)
    # the multi-timeframe columns are joined, not left empty
    k = next(k for k in uninterrupted if k[2] == "1m" and k[3] == max(x[3] for x in uninterrupted if x[2] == "1m"))
    mtf = [i for i, n in enumerate(fs.names) if n.endswith("@htf1")]
    assert np.isfinite(uninterrupted[k][mtf]).any()


@pytest.mark.parametrize("seed", [1, 2])
def test_book_is_independent_of_chunking_and_snapshots(bars, fs, uninterrupted, seed):
    rng = np.random.default_rng(seed)
    book = FeatureBook(fs)
    got = {}
    i = 0
    while i < len(bars):
        n = int(rng.integers(1, 300))
        chunk = bars[i:i + n]
        values, _ = book.on_bars(chunk)
        got.update(by_key(chunk, values))
        if rng.random() < 0.3:  # a restart: continue from a snapshot in a new book
            data = book.snapshot()
            book = FeatureBook(fs)
            book.restore(data)
        i += n
    assert_same(got, uninterrupted)


def test_reference_close_only_from_an_earlier_bar_of_the_same_interval():
    fs = FeatureSet()
    book = FeatureBook(fs, reference="BTC-USDT")
    beta = fs.names.index("beta_5")
    mk = lambda sym, start, px: Bar("kraken", sym, "1m", start, px, px, px, px, 1.0, px, 1, 0.0, 0.0)
    # ETH's bar comes before BTC's bar of the same minute for t=0..9, after it for t=10..19
    stream = []
    for t in range(20):
        eth, btc = mk("ETH-USDT", t * 60_000_000_000, 10 + t + (t % 3)), mk("BTC-USDT", t * 60_000_000_000, 100 + t)
        stream += [eth, btc] if t < 10 else [btc, eth]
    values, _ = book.on_bars(stream)
    eth_rows = [i for i, b in enumerate(stream) if b.symbol == "ETH-USDT"]
    assert np.isnan(values[eth_rows[:10], beta]).all()  # no reference yet: beta does not advance
    assert np.isfinite(values[eth_rows[-1], beta])  # 10 bars with a reference: past the warm-up


def test_refused_bar_is_reported_and_leaves_the_series_intact(bars, fs, uninterrupted):
    book = FeatureBook(fs)
    bad = msgspec.structs.replace(bars[5], close=float("nan"), start_ns=bars[5].start_ns)
    stream = bars[:5] + [bad] + bars[5:]
    values, refused = book.on_bars(stream)
    assert refused.tolist() == [5]
    assert np.isnan(values[5]).all()
    assert_same(by_key(stream[:5] + stream[6:], np.delete(values, 5, axis=0)), uninterrupted)


async def publish_bars(js, bars: list[Bar]) -> None:
    futures = [await js.publish_async(subjects.bar(b.tf, b.venue, b.symbol), CODEC.encode(b),
                                      headers={HDR_MSG_ID: bar_msg_id(b)}) for b in bars]
    await asyncio.gather(*futures)


def vectors(msgs) -> dict:
    out = {}
    for m in msgs:
        v = CODEC.decode(m.data)
        assert isinstance(v, FeatureVector)
        out[(v.venue, v.symbol, v.tf, v.start_ns)] = v.array()
    return out


async def test_worker_publishes_vectors_and_dead_letters_bad_input(nc, bars, fs, uninterrupted):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    await publish_bars(js, bars[:300])
    await js.publish(subjects.bar("1m", "kraken", "BTC-USDT"), b"\x93not a bar")
    bad = msgspec.structs.replace(bars[300], open=float("inf"), start_ns=bars[300].start_ns + 17)
    await js.publish(subjects.bar(bad.tf, bad.venue, bad.symbol), CODEC.encode(bad))
    await publish_bars(js, bars[300:])
    worker = FeatureWorker(js, FeaturesConfig(reference="", fetch_batch=64), fs)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    total = len(bars) + 2
    await wait_until(lambda: _done(worker, total), timeout_s=60)
    stop.set()
    await task
    got = vectors(await stream_messages(js, streams.FEAT_STREAM))
    assert worker.stats.refused == 1 and worker.stats.dead_letters == 2
    assert np.isnan(got.pop((bad.venue, bad.symbol, bad.tf, bad.start_ns))).all()  # published, all NaN
    want = dict(uninterrupted)
    assert_same({k: got[k] for k in want}, want)
    closes = {(v.venue, v.symbol, v.tf, v.start_ns): v.close
              for v in map(CODEC.decode, [m.data for m in await stream_messages(js, streams.FEAT_STREAM)])}
    assert all(closes[(b.venue, b.symbol, b.tf, b.start_ns)] == b.close for b in bars)  # the price decisions use
    letters = [CODEC.decode(m.data) for m in await stream_messages(js, streams.DLQ_STREAM)]
    assert sorted(type(x).__name__ + ":" + x.stage for x in letters) == ["DeadLetter:features"] * 2
    assert any("refused" in x.reason for x in letters) and any("undecodable" in x.reason for x in letters)


async def _done(worker, total: int) -> bool:
    return worker.stats.messages >= total


async def test_kill_9_mid_stream_yields_identical_vectors(nc, nats_server, tmp_path, bars, uninterrupted):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    # The stream grows while the worker is down, so each kill is mid-stream by construction (a
    # worker quicker than the polling would otherwise finish before its kill).
    n = len(bars)
    await publish_bars(js, bars[:n // 2])
    env = {**os.environ, "TICKMESH_FEATURES__FETCH_BATCH": "16", "TICKMESH_FEATURES__SNAPSHOT_INTERVAL_S": "0.2",
           "TICKMESH_FEATURES__REFERENCE": "", "TICKMESH_DATA_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "core.cli", "feature-worker", "--url", nats_server.url]
    objects = await js.object_store(streams.SNAPSHOT_BUCKET)

    async def snapshot_seq() -> int:
        try:
            # nats-py's get can wait forever when a put replaces the object's chunks meanwhile
            got = await asyncio.wait_for(objects.get(streams.FEATURES_WORKER), 2.0)
        except (ObjectNotFoundError, asyncio.TimeoutError):
            return 0
        return msgspec.msgpack.decode(got.data)[0]

    async def past(target: int) -> bool:
        return await snapshot_seq() >= target

    for target, more in ((n // 4, bars[n // 2:3 * n // 4]), (n // 2, bars[3 * n // 4:])):
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_until(lambda: past(target), timeout_s=120)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await publish_bars(js, more)
    last_seq = (await js.stream_info(streams.BARS_STREAM)).state.last_seq
    assert last_seq == n
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_until(lambda: past(last_seq), timeout_s=120)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    msgs = await stream_messages(js, streams.FEAT_STREAM)
    assert len(msgs) == len(bars)  # republished vectors were dropped as duplicates
    assert_same(vectors(msgs), uninterrupted)
