"""The collector loop and ``tickmesh replay`` on recorded frames, against a real nats-server."""

from __future__ import annotations

import asyncio
import collections
import json

import nats
import numpy as np
import pytest

from core import subjects
from core.cli import main as tickmesh_main
from core.config import StreamsConfig
from core.schema import Codec, HDR_REASON, DeadLetter, QuoteBatch, TradeBatch
from core.streams import DLQ_STREAM, MD_STREAM, ensure
from edge.adapters.kraken import KrakenAdapter
from edge.collector import collect
from edge.metrics import metrics_subject
from edge.publisher import BatchPublisher
from edge.readers import RECORDED
from tests.conftest import shared_file
from tests.test_publisher import WAIT_S, read_stream

CODEC = Codec()  # one codec for this module, as every component builds its own


def recorded_lines(relpath: str) -> list[tuple[int, str]]:
    """(line number, frame text) of every frame line, read here without the project's reader."""
    lines = shared_file(relpath).read_text(encoding="utf-8").splitlines()
    url = lines[0].partition(" <-> ")[0]
    return [(i, line.partition(": ")[2]) for i, line in enumerate(lines[1:], start=2)
            if line and not line.startswith(url + " <- ")]


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure(js, StreamsConfig(), consumers=False)
    return js


async def replay(js, relpath: str, adapter=None, frames=None, **pub_kwargs):
    path = shared_file(relpath)
    adapter = adapter or RECORDED.adapter(path)
    pub = BatchPublisher(js, adapter.venue, flush_clock="recv", **pub_kwargs)
    async with pub:
        stats = await asyncio.wait_for(
            collect(frames if frames is not None else RECORDED.frames(path), adapter, pub,
                    max_skew_ns=RECORDED.max_skew_ns), WAIT_S)
    return stats


def md_counts(msgs) -> tuple[list[TradeBatch], list[QuoteBatch]]:
    batches = [CODEC.decode(m.data) for m in msgs]
    return ([b for b in batches if isinstance(b, TradeBatch)], [b for b in batches if isinstance(b, QuoteBatch)])


async def test_coinbase_replay_accounts_for_every_frame(js):
    frames = recorded_lines("ws/coinbase.ws.txt")
    types = collections.Counter(json.loads(f)["type"] for _, f in frames)
    unparseable = [f for _, f in frames if json.loads(f)["type"] in ("l2update", "snapshot")]
    assert types["match"] and types["ticker"] and len(unparseable) == types["l2update"] + types["snapshot"]

    stats = await replay(js, "ws/coinbase.ws.txt")

    trades, quotes = md_counts(await read_stream(js, MD_STREAM))
    assert sum(len(b) for b in trades) == types["match"] + types["last_match"]
    assert sum(len(b) for b in quotes) == types["ticker"]
    assert {b.venue for b in trades + quotes} == {"coinbase"}
    dlq = await read_stream(js, DLQ_STREAM, subjects.dlq("edge", "coinbase"))
    assert all(m.headers.get(HDR_REASON) for m in dlq)
    dead = [CODEC.decode(m.data) for m in dlq]
    assert all(isinstance(d, DeadLetter) and d.stage == "edge" for d in dead)
    assert sorted(d.raw.decode() for d in dead) == sorted(unparseable)
    assert {d.reason.partition(":")[0] for d in dead} == {"UnknownChannelError"}

    assert stats.frames == len(frames)
    assert (stats.event_frames + stats.control_frames + stats.empty_frames + stats.failed_frames) == len(frames)
    assert stats.failed_frames == len(unparseable) and stats.rejected == 0
    assert stats.publish_errors == 0 and stats.overflow_dropped == 0


async def test_replaying_the_same_file_twice_stores_nothing_new(js):
    first = await replay(js, "ws/coinbase.ws.txt")
    md = (await js.stream_info(MD_STREAM)).state.messages
    dlq = (await js.stream_info(DLQ_STREAM)).state.messages
    assert md > 0 and dlq > 0
    second = await replay(js, "ws/coinbase.ws.txt")
    assert (await js.stream_info(MD_STREAM)).state.messages == md
    assert (await js.stream_info(DLQ_STREAM)).state.messages == dlq
    assert second.batches == first.batches == second.duplicates == md


def _kraken_with_garbage() -> tuple[list[tuple[int, str]], list[str], dict[str, str]]:
    """Kraken's recorded frames with garbage frames after every good trade frame.

    Returns (frames, good trade frames, expected reason prefix by garbage frame).
    """
    path = shared_file("ws/kraken_trade.ws.txt")
    good = list(RECORDED.frames(path))
    trade_frames = [raw for _, raw in good if raw.startswith("[") and '"trade"' in raw]
    assert trade_frames, "no trade frames in kraken_trade.ws.txt"
    sample = json.loads(trade_frames[0])
    negative = [sample[0], [[f"-{sample[1][0][0]}", *sample[1][0][1:]]], "trade", sample[3]]
    garbage = {
        "this is not json": "ParseError",
        json.dumps(negative, separators=(",", ":")): "ValidationError: bad price",
        json.dumps([sample[0], [["1.0", "2.0"]], "book-10", sample[3]]): "UnknownChannelError",
        json.dumps([sample[0], sample[1], "trade", "DOGE/USD"]): "UnknownSymbolError",
        trade_frames[0][: len(trade_frames[0]) // 2]: "ParseError",
    }
    out: list[tuple[int, str]] = []
    bad = iter(garbage)
    for recv_ns, raw in good:
        out.append((recv_ns, raw))
        if raw in trade_frames:
            junk = next(bad, None)
            if junk is not None:
                out.append((recv_ns + 1, junk))
    assert next(bad, None) is None, "not enough trade frames to interleave every garbage frame"
    return out, trade_frames, garbage


async def test_garbage_frames_are_dead_lettered_with_reasons_and_good_trades_arrive(js):
    frames, trade_frames, garbage = _kraken_with_garbage()
    pairs = {json.loads(f)[3] for f in trade_frames}
    # A fixed symbol map makes a pair outside it an unknown symbol.
    adapter = KrakenAdapter({p: p.replace("/", "-").replace("XBT", "BTC") for p in pairs})

    async def source():
        for item in frames:
            yield item

    stats = await replay(js, "ws/kraken_trade.ws.txt", adapter=adapter, frames=source())

    expected_trades = sum(len(json.loads(f)[1]) for f in trade_frames)
    trades, _ = md_counts(await read_stream(js, MD_STREAM))
    assert sum(len(b) for b in trades) == expected_trades
    ids = np.concatenate([b.columns()["trade_id"] for b in trades])
    assert len(set(ids.tolist())) == expected_trades
    dead = {d.raw.decode(): d for d in (CODEC.decode(m.data) for m in await read_stream(js, DLQ_STREAM))}
    assert set(dead) == set(garbage)
    for raw, prefix in garbage.items():
        assert dead[raw].reason.startswith(prefix), (raw, dead[raw].reason)
    assert stats.frames == len(frames) and stats.rejected == 1 and stats.failed_frames == len(garbage) - 1
    assert stats.event_frames + stats.control_frames + stats.empty_frames + stats.failed_frames == len(frames)


async def test_an_internal_error_is_dead_lettered_and_the_loop_continues(js):
    class BrokenAdapter(KrakenAdapter):
        """An adapter bug: returns something that is not an event for one pair."""

        def parse(self, raw, recv_ns):
            events = super().parse(raw, recv_ns)
            return [("not", "an event")] if events and events[0].symbol == "SC-EUR" else events

    path = shared_file("ws/kraken_trade.ws.txt")
    trade_frames = [raw for _, raw in RECORDED.frames(path) if raw.startswith("[") and '"trade"' in raw]
    broken = [f for f in trade_frames if '"SC/EUR"' in f]
    stats = await replay(js, "ws/kraken_trade.ws.txt", adapter=BrokenAdapter())
    dead = [CODEC.decode(m.data) for m in await read_stream(js, DLQ_STREAM)]
    assert broken and sorted(d.raw.decode() for d in dead) == sorted(broken)
    assert all(d.reason.startswith("internal error: ") and "Traceback" in d.detail for d in dead)
    trades, _ = md_counts(await read_stream(js, MD_STREAM))
    assert sum(len(b) for b in trades) == sum(len(json.loads(f)[1]) for f in trade_frames if f not in broken)
    assert stats.failed_frames == len(broken)


async def test_drop_overflow_through_the_collector_is_counted_and_dead_lettered(js):
    frames = recorded_lines("ws/coinbase.ws.txt")
    types = collections.Counter(json.loads(f)["type"] for _, f in frames)
    events_in_file = types["match"] + types["last_match"] + types["ticker"]
    unparseable = types["l2update"] + types["snapshot"]

    stats = await replay(js, "ws/coinbase.ws.txt", max_pending_events=3, overflow="drop")

    assert stats.overflow_dropped > 0
    trades, quotes = md_counts(await read_stream(js, MD_STREAM))
    stored_events = sum(len(b) for b in trades + quotes)
    dead = [CODEC.decode(m.data) for m in await read_stream(js, DLQ_STREAM)]
    summaries = [d for d in dead if d.reason.startswith("overflow: ")]
    assert summaries
    assert sum(int(d.detail.split()[1]) for d in summaries) == stats.overflow_dropped
    # Every event and every unparseable frame is stored or counted as dropped, nothing else.
    assert stored_events + (len(dead) - len(summaries)) + stats.overflow_dropped == events_in_file + unparseable


async def test_metrics_snapshots_are_published_on_core_nats(js, nc):
    got: list[dict] = []

    async def on_metrics(msg) -> None:
        got.append(json.loads(msg.data))

    sub = await nc.subscribe(metrics_subject("kraken"), cb=on_metrics)
    path = shared_file("ws/kraken_trade.ws.txt")
    adapter = RECORDED.adapter(path)

    async def slow_source():
        for item in RECORDED.frames(path):
            await asyncio.sleep(0.002)
            yield item

    async with BatchPublisher(js, adapter.venue, flush_clock="recv") as pub:
        await asyncio.wait_for(collect(slow_source(), adapter, pub, max_skew_ns=None, metrics_interval_s=0.02), WAIT_S)

    async def final_snapshot():
        while not got or got[-1]["frames"] < pub.stats.frames:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(final_snapshot(), WAIT_S)  # the last one carries the final figures
    await sub.unsubscribe()
    assert len(got) >= 2
    assert {"events", "trades", "quotes", "dead_letters", "overflow_dropped", "batches", "ts"} <= set(got[-1])
    assert got[-1]["events"] == pub.stats.events and got[-1]["ts"] > got[0]["ts"]


def test_replay_command_needs_streams_and_says_how_to_make_them(nats_server, capsys):
    rc = tickmesh_main(["replay", str(shared_file("ws/kraken_trade.ws.txt")), "--url", nats_server.url])
    assert rc == 2
    assert "tickmesh streams ensure" in capsys.readouterr().err


def test_replay_command_loops_with_shifted_times_and_distinct_ids(nats_server, capsys):
    path = shared_file("ws/kraken_trade.ws.txt")
    assert tickmesh_main(["streams", "ensure", "--url", nats_server.url]) == 0
    rc = tickmesh_main(["replay", str(path), "--loop", "3", "--url", nats_server.url])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "events/s" in out and "x3" in out

    async def stored_trades():
        nc = await nats.connect(nats_server.url)
        try:
            return md_counts(await read_stream(nc.jetstream(), MD_STREAM))[0]
        finally:
            await nc.close()

    trades = asyncio.run(asyncio.wait_for(stored_trades(), WAIT_S))
    cols = {k: np.concatenate([b.columns()[k] for b in trades]) for k in ("ts_ns", "recv_ns", "trade_id")}
    per_file = sum(len(json.loads(raw)[1]) for _, raw in RECORDED.frames(path)
                   if raw.startswith("[") and '"trade"' in raw)
    assert len(cols["trade_id"]) == 3 * per_file
    assert len(set(cols["trade_id"].tolist())) == 3 * per_file
    # Loops follow each other in time: the k-th third of the (time-sorted) trades is loop k.
    ts = np.sort(cols["ts_ns"])
    thirds = ts.reshape(3, per_file)
    assert (thirds[1:, 0] > thirds[:-1, -1]).all()
    assert (np.abs(cols["ts_ns"] - cols["recv_ns"]) < 300 * 10**9).all()
    assert f"events {3 * per_file:,}" in out
