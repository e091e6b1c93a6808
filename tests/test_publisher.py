"""BatchPublisher against a real nats-server: batching, Msg-Id dedup, overflow policies, failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from core import subjects
from core.config import StreamsConfig
from core.schema import Codec, HDR_MSG_ID, HDR_REASON, HDR_SCHEMA, SCHEMA_VERSION, DeadLetter, QuoteBatch, TradeBatch
from core.streams import DLQ_STREAM, MD_STREAM, ensure
from edge.adapters.coinbase import CoinbaseAdapter
from edge.adapters.kraken_rest import KrakenRestAdapter
from edge.events import FrameEvents, Quote, Trade
from edge.publisher import BatchPublisher
from edge.recorded import open_recorded
from tests.conftest import shared_file

CODEC = Codec()  # one codec for this module, as every component builds its own

WAIT_S = 20.0


async def read_stream(js, stream: str, subject: str = ">", timeout_s: float = WAIT_S) -> list:
    """Every message currently stored in ``stream`` on ``subject``, in stream order."""

    async def run() -> list:
        info = await js.stream_info(stream, subjects_filter=subject)
        total = sum((info.state.subjects or {}).values()) if subject != ">" else info.state.messages
        if not total:
            return []
        sub = await js.pull_subscribe(subject, stream=stream)
        msgs: list = []
        while len(msgs) < total:
            batch = await sub.fetch(min(1000, total - len(msgs)), timeout=5)
            for m in batch:
                await m.ack()
            msgs.extend(batch)
        await sub.unsubscribe()
        return msgs

    return await asyncio.wait_for(run(), timeout_s)


def coinbase_frames_events() -> list[tuple[int, list]]:
    """(recv_ns, events) of every match/last_match/ticker frame of the recorded Coinbase session."""
    adapter = CoinbaseAdapter()
    out = []
    for recv_ns, raw in open_recorded(shared_file("ws/coinbase.ws.txt")).frames():
        if '"type":"match"' in raw or '"type":"last_match"' in raw or '"type":"ticker"' in raw:
            out.append((recv_ns, adapter.parse(raw, recv_ns)))
    assert out, "no trade or ticker frames parsed from coinbase.ws.txt"
    return out


def decode_md(msgs) -> tuple[list[TradeBatch], list[QuoteBatch]]:
    trades, quotes = [], []
    for m in msgs:
        batch = CODEC.decode(m.data)
        assert m.headers[HDR_SCHEMA] == str(SCHEMA_VERSION)
        assert m.headers[HDR_MSG_ID].startswith(f"{batch.venue}.")
        assert subjects.parse(m.subject).symbol == batch.symbol
        (trades if isinstance(batch, TradeBatch) else quotes).append(batch)
    return trades, quotes


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure(js, StreamsConfig(), consumers=False)
    return js


async def publish_all(js, frames, **kwargs) -> BatchPublisher:
    pub = BatchPublisher(js, "coinbase", **kwargs)
    async with pub:
        for recv_ns, events in frames:
            await pub.add(events, recv_ns)
    return pub


async def test_batches_hold_every_event_with_headers_and_max_batch(js):
    frames = coinbase_frames_events()
    pub = await publish_all(js, frames, max_batch=7, flush_clock="recv")
    expect_trades = [ev for _, evs in frames for ev in evs if isinstance(ev, Trade)]
    expect_quotes = [ev for _, evs in frames for ev in evs if isinstance(ev, Quote)]

    trades, quotes = decode_md(await read_stream(js, MD_STREAM))
    assert all(len(b) <= 7 for b in trades + quotes)
    got_ids = sorted(int(i) for b in trades for i in b.columns()["trade_id"])
    assert got_ids == sorted(ev.trade_id for ev in expect_trades)
    assert sum(len(b) for b in quotes) == len(expect_quotes)
    # Columns keep the events' values per symbol, in arrival order.
    for sym in {ev.symbol for ev in expect_trades}:
        cols = [b.columns() for b in trades if b.symbol == sym]
        px = np.concatenate([c["px"] for c in cols])
        assert px.tolist() == [ev.px for ev in expect_trades if ev.symbol == sym]
        assert np.concatenate([c["side"] for c in cols]).tolist() == [ev.side for ev in expect_trades
                                                                      if ev.symbol == sym]
    s = pub.stats
    assert (s.events, s.trades, s.quotes) == (len(expect_trades) + len(expect_quotes), len(expect_trades),
                                              len(expect_quotes))
    assert s.batches == len(trades) + len(quotes) and s.publish_errors == 0 and pub.pending == 0


async def test_republishing_the_same_events_stores_nothing_new(js):
    frames = coinbase_frames_events()
    first = await publish_all(js, frames, flush_clock="recv")
    stored = (await js.stream_info(MD_STREAM)).state.messages
    second = await publish_all(js, frames, flush_clock="recv")
    assert (await js.stream_info(MD_STREAM)).state.messages == stored
    assert second.stats.batches == first.stats.batches == stored
    assert second.stats.duplicates == stored


async def test_buffers_flush_by_wall_clock_age_without_more_input(js):
    trade = Trade("BTC-USD", 1_618_677_817_089_723_000, 60000.0, 0.5, 1, 1)
    async with BatchPublisher(js, "coinbase", flush_ms=10, flush_clock="wall") as pub:
        await pub.add([trade], trade.ts_ns)

        async def wait_stored():
            while (await js.stream_info(MD_STREAM)).state.messages < 1:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(wait_stored(), WAIT_S)
        assert pub.stats.batches == 1


async def test_drop_overflow_is_counted_and_dead_lettered(js):
    frames = coinbase_frames_events()
    # Nothing yields to the event loop between adds, so no ack drains: the bound is hit at once.
    pub = BatchPublisher(js, "coinbase", max_pending_events=10, overflow="drop", flush_clock="recv")
    async with pub:
        accepted = 0
        for recv_ns, events in frames:
            accepted += await pub.add(events, recv_ns)
    total = sum(len(evs) for _, evs in frames)
    s = pub.stats
    assert s.overflow_dropped > 0 and accepted >= 10 and s.events == accepted
    assert accepted + s.overflow_dropped == total

    trades, quotes = decode_md(await read_stream(js, MD_STREAM))
    assert sum(len(b) for b in trades + quotes) == accepted
    dlq = await read_stream(js, DLQ_STREAM)
    summaries = [CODEC.decode(m.data) for m in dlq if m.headers[HDR_REASON].startswith("overflow")]
    assert summaries and all(isinstance(d, DeadLetter) for d in summaries)
    assert sum(int(d.detail.split()[1]) for d in summaries) == s.overflow_dropped


async def test_block_overflow_waits_and_loses_nothing(js):
    frames = coinbase_frames_events()
    pub = await publish_all(js, frames, max_batch=3, max_pending_events=5, overflow="block", flush_clock="recv")
    trades, quotes = decode_md(await read_stream(js, MD_STREAM))
    total = sum(len(evs) for _, evs in frames)
    assert sum(len(b) for b in trades + quotes) == total
    assert pub.stats.overflow_dropped == 0 and pub.stats.events == total


async def test_unencodable_events_are_dead_lettered_and_the_rest_published(js):
    good = Trade("BTC-USD", 1_618_677_817_089_723_000, 60000.0, 0.5, 1, 1)
    huge_id = good._replace(trade_id=2**70)
    no_symbol = good._replace(symbol="", trade_id=2)
    async with BatchPublisher(js, "coinbase", flush_clock="recv") as pub:
        await pub.add([good, huge_id, no_symbol, good._replace(trade_id=3)], good.ts_ns)
    trades, _ = decode_md(await read_stream(js, MD_STREAM))
    assert sorted(int(i) for b in trades for i in b.columns()["trade_id"]) == [1, 3]
    dls = [CODEC.decode(m.data) for m in await read_stream(js, DLQ_STREAM)]
    assert len(dls) == 2 and all(d.reason.startswith("unencodable event") for d in dls)
    assert pub.stats.rejected == 2 and pub.pending == 0


async def test_dead_letter_has_reason_header_and_deterministic_id(js):
    async with BatchPublisher(js, "coinbase") as pub:
        for _ in range(2):
            assert await pub.dead_letter("bad price: px=-1.0\r\nsecond line", '{"x":1}', 5, symbol="BTC-USD")
    msgs = await read_stream(js, DLQ_STREAM, subjects.dlq("edge", "coinbase"))
    assert len(msgs) == 1  # the same input twice is stored once
    assert msgs[0].headers[HDR_REASON] == "bad price: px=-1.0 second line"
    dl = CODEC.decode(msgs[0].data)
    assert (dl.reason, dl.raw, dl.recv_ns, dl.symbol, dl.venue) == (
        "bad price: px=-1.0\r\nsecond line", b'{"x":1}', 5, "BTC-USD", "coinbase")


async def test_publish_failures_are_counted_retried_and_bounded(nc):
    # No stream captures md.>: every publish gets "no responders", the loop must not crash.
    pub = BatchPublisher(nc.jetstream(), "coinbase", flush_clock="recv", max_attempts=3, ack_timeout_s=1.0)
    trade = Trade("BTC-USD", 1_618_677_817_089_723_000, 60000.0, 0.5, 1, 1)
    await pub.add([trade, trade._replace(trade_id=2)], trade.ts_ns)
    await asyncio.wait_for(pub.close(), WAIT_S)
    s = pub.stats
    assert s.publish_errors == 3 and s.publish_failed == 2 and s.batches == 0
    assert "NoStreamResponse" in s.last_error and pub.pending == 0


async def test_shift_offsets_apply_to_events_added_after_it_even_in_an_open_buffer(js):
    frames = coinbase_frames_events()
    trades = [(recv_ns, evs) for recv_ns, evs in frames if isinstance(evs[0], Trade)]
    half = len(trades) // 2
    offset_ns, id_step = 3_600 * 10**9, 10**12
    # Size-only flushing (flush_ms huge): the shift happens while buffers are open.
    async with BatchPublisher(js, "coinbase", flush_ms=1e12, flush_clock="recv") as pub:
        for recv_ns, evs in trades[:half]:
            await pub.add(evs, recv_ns)
        pub.shift(offset_ns, id_step)
        for recv_ns, evs in trades[half:]:
            await pub.add(evs, recv_ns)
    batches, _ = decode_md(await read_stream(js, MD_STREAM))
    got = {}
    for b in batches:
        c = b.columns()
        for ts, recv, tid in zip(c["ts_ns"].tolist(), c["recv_ns"].tolist(), c["trade_id"].tolist()):
            got[tid] = (ts, recv)
    expect = {}
    for i, (recv_ns, evs) in enumerate(trades):
        shift, step = (0, 0) if i < half else (offset_ns, id_step)
        for ev in evs:
            expect[ev.trade_id + step] = (ev.ts_ns + shift, recv_ns + shift)
    assert got == expect
    # At least one batch holds events from both sides of the shift (two offset segments).
    assert any(min(b.columns()["trade_id"]) < id_step <= max(b.columns()["trade_id"]) for b in batches)


def kraken_rest_events() -> tuple[int, FrameEvents]:
    """(recv_ns, parsed events) of the recorded Kraken REST response: one block of 1,000 trades."""
    text = shared_file("ticks/kraken_xbtusdt_trades_rest.json").read_text()
    events = KrakenRestAdapter().parse(text, 0)
    assert isinstance(events, FrameEvents) and len(events) == 1000
    return events[-1].ts_ns, events


async def captured_publishes(nc, js, feed, **kwargs) -> list[tuple[str, str, bytes]]:
    """(subject, Nats-Msg-Id, payload) of every MD message a publisher sends while ``feed(pub)`` runs."""
    seen: list = []

    async def on_msg(m):
        seen.append((m.subject, m.headers[HDR_MSG_ID], m.data))

    sub = await nc.subscribe("md.>", cb=on_msg)
    pub = BatchPublisher(js, "kraken", **kwargs)
    async with pub:
        await feed(pub)

    async def all_seen():
        while len(seen) < pub.stats.batches:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(all_seen(), WAIT_S)
    await sub.unsubscribe()
    assert len(seen) == pub.stats.batches and pub.stats.publish_errors == 0
    return seen


async def test_blocks_publish_the_same_batches_as_their_events_one_by_one(nc, js):
    recv_ns, events = kraken_rest_events()
    singles = list(events)
    other = Trade("ETH-USD", 1_700_000_000_000_000_000, 2000.0, 1.0, -1, 5)
    # 1,000 rows, 3 loops, 300 per batch: blocks are cut inside and across frames and shifts, and a
    # single event of the same symbol sits between two blocks.
    kwargs = dict(max_batch=300, flush_ms=1e12, flush_clock="recv")

    async def as_blocks(pub):
        for loop in range(3):
            pub.shift(loop * 10**12, loop * 10**9)
            await pub.add(events, recv_ns)
            await pub.add([other._replace(trade_id=loop), singles[loop]], recv_ns + 1)

    async def one_by_one(pub):
        for loop in range(3):
            pub.shift(loop * 10**12, loop * 10**9)
            for ev in singles:
                await pub.add([ev], recv_ns)
            await pub.add([other._replace(trade_id=loop)], recv_ns + 1)
            await pub.add([singles[loop]], recv_ns + 1)

    got = await captured_publishes(nc, js, as_blocks, **kwargs)
    want = await captured_publishes(nc, js, one_by_one, **kwargs)
    assert sorted(got, key=lambda m: m[0]) == sorted(want, key=lambda m: m[0])  # per subject, in order
    batches = [CODEC.decode(data) for _, _, data in got]
    assert [len(b) for b in batches if b.symbol == "BTC-USDT"] == [300] * 10 + [3]
    ids = np.concatenate([b.columns()["trade_id"] for b in batches if b.symbol == "BTC-USDT"])
    assert ids.tolist() == [ev.trade_id + loop * 10**9 for loop in range(3) for ev in singles + [singles[loop]]]


async def test_add_nowait_publishes_the_same_batches_as_add(nc, js):
    frames = coinbase_frames_events()
    # Small batches and a short age: buffers fill up and age out often, and a shift mid-way.
    kwargs = dict(max_batch=7, flush_ms=50, flush_clock="recv")
    taken = []

    async def nowait_first(pub):
        for i, (recv_ns, events) in enumerate(frames):
            if i == len(frames) // 2:
                pub.shift(10**12, 10**9)
            if pub.add_nowait(events, recv_ns):
                taken.append(i)
            else:
                await pub.add(events, recv_ns)

    async def awaited(pub):
        for i, (recv_ns, events) in enumerate(frames):
            if i == len(frames) // 2:
                pub.shift(10**12, 10**9)
            await pub.add(events, recv_ns)

    got = await captured_publishes(nc, js, nowait_first, **kwargs)
    want = await captured_publishes(nc, js, awaited, **kwargs)
    assert sorted(got, key=lambda m: m[0]) == sorted(want, key=lambda m: m[0])  # per subject, in order
    # Both paths ran: the first event of a symbol (no open buffer) and the one that fills a batch
    # are never taken without waiting.
    assert 0 < len(taken) < len(frames) and 0 not in taken


async def test_add_nowait_declines_when_full_or_closed(js):
    t = Trade("BTC-USD", 1_618_677_817_089_723_000, 60000.0, 0.5, 1, 1)
    pub = BatchPublisher(js, "coinbase", max_pending_events=2, flush_ms=1e12, flush_clock="recv")
    async with pub:
        assert not pub.add_nowait([t], t.ts_ns)  # no buffer open yet
        await pub.add([t], t.ts_ns)
        assert pub.add_nowait([t._replace(trade_id=2)], t.ts_ns)
        assert not pub.add_nowait([t._replace(trade_id=3)], t.ts_ns)  # the memory bound
        assert not pub.add_nowait([t, t._replace(trade_id=4)], t.ts_ns)  # more than one event
        assert pub.stats.events == 2
    assert not pub.add_nowait([t], t.ts_ns)
    with pytest.raises(RuntimeError, match="closed"):
        await pub.add([t], t.ts_ns)


async def test_time_range_covers_exchange_and_receive_times_while_tracked(js):
    t = Trade("BTC-USD", 2_000, 60000.0, 0.5, 1, 1)
    async with BatchPublisher(js, "coinbase", flush_clock="recv") as pub:
        with pytest.raises(RuntimeError, match="track_time_range"):
            pub.time_range_ns
        pub.track_time_range = True
        assert pub.time_range_ns is None
        await pub.add([t, t._replace(ts_ns=500, trade_id=2)], 1_000)  # exchange time before receipt
        await pub.add([t._replace(ts_ns=3_000, trade_id=3)], 2_500)
        await pub.flush()
        assert pub.time_range_ns == (500, 3_000)


async def test_drop_overflow_splits_a_block(js):
    recv_ns, events = kraken_rest_events()
    async with BatchPublisher(js, "kraken", max_pending_events=700, overflow="drop", flush_clock="recv") as pub:
        assert await pub.add(events, recv_ns) == 700
    assert (pub.stats.events, pub.stats.overflow_dropped) == (700, 300)
    trades, _ = decode_md(await read_stream(js, MD_STREAM))
    ids = np.concatenate([b.columns()["trade_id"] for b in trades]).tolist()
    assert ids == [ev.trade_id for ev in events[:700]]
    dlq = [CODEC.decode(m.data) for m in await read_stream(js, DLQ_STREAM)]
    assert [d.detail.split("; by symbol: ")[1] for d in dlq] == ["BTC-USDT=300"]


async def test_an_unanswered_publish_times_out_and_is_retried_then_given_up(nc):
    # A plain subscriber owns md.> (no stream): the server does not answer "no responders",
    # and nobody acks, so only the ack timeout can settle the batch.
    got: list = []

    async def silent(msg):
        got.append(msg.subject)

    await nc.subscribe("md.>", cb=silent)
    pub = BatchPublisher(nc.jetstream(), "coinbase", flush_clock="recv", max_attempts=2, ack_timeout_s=0.2)
    trade = Trade("BTC-USD", 1_618_677_817_089_723_000, 60000.0, 0.5, 1, 1)
    await pub.add([trade], trade.ts_ns)
    await asyncio.wait_for(pub.close(), WAIT_S)
    s = pub.stats
    assert (s.publish_errors, s.publish_failed, s.batches, pub.pending) == (2, 1, 0, 0)
    assert "no ack within 0.2 s" in s.last_error and got == ["md.coinbase.trade.BTC-USD"] * 2


async def test_an_error_reply_is_a_failed_attempt_with_the_servers_reason(nc):
    js = nc.jetstream()
    await js.add_stream(name="TINY", subjects=["md.>"], max_msg_size=64)  # any batch is too large
    pub = BatchPublisher(js, "coinbase", flush_clock="recv", max_attempts=2)
    trade = Trade("BTC-USD", 1_618_677_817_089_723_000, 60000.0, 0.5, 1, 1)
    await pub.add([trade], trade.ts_ns)
    await asyncio.wait_for(pub.close(), WAIT_S)
    s = pub.stats
    assert (s.publish_errors, s.publish_failed, s.batches) == (2, 1, 0)
    assert "BadRequestError" in s.last_error and "message size exceeds maximum" in s.last_error
