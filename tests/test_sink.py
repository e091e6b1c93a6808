"""core.sink against the real nats-server (JetStream) and real chDB in a temp dir."""

from __future__ import annotations

import asyncio
import json

import msgspec
import numpy as np
import pytest

from core import streams, subjects
from core.config import StreamsConfig
from core.features.book import FeatureBook
from core.features.featureset import FeatureSet
from core.schema import Codec, HDR_MSG_ID, Bar, DeadLetter, FeatureVector, TradeBatch, bar_msg_id, batch_msg_id
from core.sink import METRICS_SUBJECT, Sink
from core.store import Store
from tests.test_store import binance_bars, binance_frame_dead_letter, huobi_quotes, kraken_trades

CODEC = Codec()  # one codec for this module, as every component builds its own

WAIT_S = 30.0


@pytest.fixture
async def js(nc):
    ctx = nc.jetstream()
    await streams.ensure(ctx, StreamsConfig())
    return ctx


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb:///{tmp_path / 'ch'}")
    yield s
    s.close()


def split(batch: TradeBatch, size: int) -> list[TradeBatch]:
    cols = batch.columns()
    return [TradeBatch.from_columns(batch.venue, batch.symbol, **{k: v[i:i + size] for k, v in cols.items()})
            for i in range(0, len(batch), size)]


async def publish_trades(js, batches: list[TradeBatch]) -> None:
    for b in batches:
        await js.publish(subjects.md(b.venue, "trade", b.symbol), CODEC.encode(b),
                         headers={HDR_MSG_ID: batch_msg_id("trade", b)})


async def until(predicate, what: str, timeout_s: float = WAIT_S) -> None:
    """Polls an async predicate until it holds; fails the test after ``timeout_s``."""

    async def poll():
        while not await predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


class Running:
    """A sink running as a task; leaving the block stops it and waits for it."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Sink:
        self.task = asyncio.create_task(self.sink.run(self.stop))
        return self.sink

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT_S)


async def consumer_settled(js, stream: str, consumer: str) -> bool:
    info = await js.consumer_info(stream, consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_sink_stores_everything_and_publishes_metrics(nc, js, store):
    trades = kraken_trades()
    quotes = huobi_quotes()
    bars = binance_bars()
    dl = binance_frame_dead_letter()
    await publish_trades(js, split(trades, 150))  # 7 batches
    await js.publish(subjects.md("huobi", "quote", quotes.symbol), CODEC.encode(quotes),
                     headers={HDR_MSG_ID: batch_msg_id("quote", quotes)})
    for b in bars:
        await js.publish(subjects.bar(b.tf, b.venue, b.symbol), CODEC.encode(b), headers={HDR_MSG_ID: bar_msg_id(b)})
    dl_ack = await js.publish(subjects.dlq(dl.stage, dl.venue), CODEC.encode(dl))
    fs = FeatureSet()
    values, _ = FeatureBook(fs).on_bars(bars)
    vectors = [FeatureVector(b.venue, b.symbol, b.tf, b.start_ns, list(fs.names), v.tobytes(), fs.digest)
               for b, v in zip(bars, values)]
    for v in vectors + vectors[:2]:  # two redelivered: stored once
        await js.publish(subjects.feat(v.tf, v.venue, v.symbol), CODEC.encode(v))
    metrics = await nc.subscribe(METRICS_SUBJECT)

    expected = {"trades": 1000, "quotes": 10, "bars": 21, "features": 21, "dead_letters": 1}
    async with Running(Sink(js, store, batch=4, metrics_interval_s=0.2)) as sink:  # small batch: many fetches
        await until(lambda: _counts_are(store, expected), "all rows in the store")
        for stream, consumer in ((streams.MD_STREAM, streams.SINK_MD), (streams.BARS_STREAM, streams.SINK_BARS),
                                 (streams.FEAT_STREAM, streams.SINK_FEAT), (streams.DLQ_STREAM, streams.SINK_DLQ)):
            await until(lambda: consumer_settled(js, stream, consumer), f"{consumer} acked everything")
        snap = json.loads((await asyncio.wait_for(metrics.next_msg(WAIT_S), WAIT_S)).data)

    stats = sink.stats
    assert (stats.trades, stats.quotes, stats.bars, stats.features, stats.dead_letters) == (1000, 10, 21, 23, 1)
    assert stats.messages == 7 + 1 + 21 + 23 + 1
    assert stats.insert_errors == 0 and stats.lag == 0
    assert set(snap) >= set(msgspec.structs.asdict(stats)) | {"ts_ns"}
    assert [Bar(**r) for r in await store.run(store.bars, "binance", "ADA-BTC", "1m")] == bars
    (row,) = await store.run(store.dead_letters)
    assert (row.pop("stream"), row.pop("stream_seq")) == (streams.DLQ_STREAM, dl_ack.seq)
    assert DeadLetter(**row) == dl
    got = await store.run(store.features, "binance", "ADA-BTC", "1m")
    assert got["names"] == list(fs.names) and got["start_ns"] == [b.start_ns for b in bars]
    np.testing.assert_array_equal(np.array(got["values"]), values)


async def _counts_are(store: Store, expected: dict[str, int]) -> bool:
    counts = await store.run(store.counts)
    return all(counts[k] == v for k, v in expected.items())


async def test_bad_messages_become_sink_dead_letters(js, store):
    garbage = b"\xc1 definitely not msgpack"
    ragged = TradeBatch("kraken", "BTC-USDT", ts_ns=b"\x01" * 8, recv_ns=b"", px=b"", qty=b"", side=b"",
                        trade_id=b"")
    misplaced_bar = binance_bars()[0]
    good = kraken_trades(20)
    seq = {
        "garbage": (await js.publish("md.x.trade.y", garbage)).seq,
        "ragged": (await js.publish(subjects.md("kraken", "trade", "BTC-USDT"), CODEC.encode(ragged))).seq,
        "bar_on_md": (await js.publish(subjects.md("binance", "trade", "ADA-BTC"), CODEC.encode(misplaced_bar))).seq,
        "trades_on_bar": (await js.publish(subjects.bar("1m", "kraken", "BTC-USDT"), CODEC.encode(good))).seq,
        # same venue and (first) sequence as "garbage", other stream: must not replace it
        "garbage_on_dlq": (await js.publish("dlq.edge.x", b"")).seq,
    }
    await publish_trades(js, [good])

    async with Running(Sink(js, store)) as sink:
        await until(lambda: _counts_are(store, {"dead_letters": 5, "trades": 20}), "dead letters and good trades")
        await until(lambda: consumer_settled(js, streams.MD_STREAM, streams.SINK_MD), "md acked")
        await until(lambda: consumer_settled(js, streams.BARS_STREAM, streams.SINK_BARS), "bars acked")
        await until(lambda: consumer_settled(js, streams.DLQ_STREAM, streams.SINK_DLQ), "dlq acked")

    rows = await store.run(store.dead_letters, "sink")
    assert len(rows) == 5 and sink.stats.dead_letters == 5 and sink.stats.insert_errors == 0
    assert seq["garbage"] == seq["garbage_on_dlq"] == 1
    by_subject = {r["detail"].removeprefix("subject="): r for r in rows}
    row = by_subject["md.x.trade.y"]
    assert (row["venue"], row["symbol"], row["raw"]) == ("x", "y", garbage)
    assert (row["stream"], row["stream_seq"]) == (streams.MD_STREAM, seq["garbage"])
    assert "undecodable" in row["reason"]
    assert by_subject["dlq.edge.x"]["stream"] == streams.DLQ_STREAM
    assert "undecodable" in by_subject["dlq.edge.x"]["reason"]
    assert "rows, expected" in by_subject["md.kraken.trade.BTC-USDT"]["reason"]
    assert by_subject["md.kraken.trade.BTC-USDT"]["raw"] == CODEC.encode(ragged)
    assert "unexpected Bar on md.binance.trade.ADA-BTC" in by_subject["md.binance.trade.ADA-BTC"]["reason"]
    assert "unexpected TradeBatch on bar.1m.kraken.BTC-USDT" in by_subject["bar.1m.kraken.BTC-USDT"]["reason"]
    assert by_subject["bar.1m.kraken.BTC-USDT"]["stream"] == streams.BARS_STREAM


async def test_redelivery_after_crash_before_ack_stores_once(js, store):
    batches = split(kraken_trades(300), 100)
    await publish_trades(js, batches)

    # First sink: writes the rows, then "crashes" before acking (nak = redeliver now).
    first = Sink(js, store)
    sub = await js.pull_subscribe_bind(durable=streams.SINK_MD, stream=streams.MD_STREAM)
    msgs = await asyncio.wait_for(sub.fetch(10, timeout=5), WAIT_S)
    assert len(msgs) == 3
    stored, failed = await first.write(streams.SINK_MD, msgs)
    assert (len(stored), failed) == (3, [])
    assert (await store.run(store.counts))["trades"] == 300
    for m in msgs:
        await m.nak()
    await sub.unsubscribe()

    # Second sink on the same durable: gets them again, inserts again, the store counts once.
    async with Running(Sink(js, store)) as second:
        await until(lambda: _stats_trades(second, 300), "redelivered trades inserted again")
        await until(lambda: consumer_settled(js, streams.MD_STREAM, streams.SINK_MD), "md acked")
    assert (await store.run(store.counts))["trades"] == 300
    assert len(await store.run(store.trades, "kraken", "BTC-USDT", None, None, 10_000)) == 300


async def _stats_trades(sink: Sink, n: int) -> bool:
    return sink.stats.trades >= n


async def test_failed_insert_is_retried_not_lost(js, store):
    # A real ClickHouse failure: the trades table disappears under the running sink.
    await store.run(store._client.command, f"DROP TABLE {store.database}.trades")
    await publish_trades(js, [kraken_trades(40)])

    async with Running(Sink(js, store, retry_s=0.05)) as sink:
        await until(lambda: _insert_errors(sink), "a counted insert error")
        info = await js.consumer_info(streams.MD_STREAM, streams.SINK_MD)
        assert info.ack_floor.stream_seq == 0  # nothing acked while the insert fails
        await store.run(store.apply_ddl)  # ClickHouse "comes back"
        await until(lambda: _counts_are(store, {"trades": 40}), "trades stored after the table came back")
        await until(lambda: consumer_settled(js, streams.MD_STREAM, streams.SINK_MD), "md acked")
    assert sink.stats.insert_errors >= 1 and sink.stats.trades == 40


async def _insert_errors(sink: Sink) -> bool:
    return sink.stats.insert_errors > 0


async def test_missing_consumer_is_a_clear_error(nc, store):
    from core.errors import TickmeshError

    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig(), consumers=False)
    with pytest.raises(TickmeshError, match="tickmesh streams ensure"):
        await asyncio.wait_for(Sink(js, store).run(asyncio.Event()), WAIT_S)
