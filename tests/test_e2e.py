"""End to end with real servers: recorded trades -> edge collector -> nats-server -> bar worker ->
sink -> chDB -> /api/bars, compared with `tickmesh bars` on the same input and with an independent
aggregation written here."""

import asyncio
import csv
import json
from datetime import datetime
from decimal import Decimal

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core import streams
from core.bar_worker import BarWorker
from core.cli import main as tickmesh
from core.config import Config, NatsConfig, StoreConfig, WorkerConfig
from core.schema import TIMEFRAME_NS
from edge.collector import collect
from edge.publisher import BatchPublisher
from edge.readers import reader_for
from tests.conftest import shared_file
from tests.test_worker import stream_messages

KRAKEN_REST = "ticks/kraken_xbtusdt_trades_rest.json"
COINBASE_WS = "ws/coinbase.ws.txt"
BAR_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "n_trades", "buy_volume", "sell_volume")


def independent_trades() -> list[tuple[str, str, int, float, float, int]]:
    """(venue, symbol, ts_ns, px, qty, side) of every trade in both files, read with json only."""
    out = []
    rest = json.loads(shared_file(KRAKEN_REST).read_text())["result"]["XBTUSDT"]
    for px, qty, t_s, side, *_ in rest:
        out.append(("kraken", "BTC-USDT", int(Decimal(str(t_s)) * 10**9), float(px), float(qty),
                    1 if side == "b" else -1))
    for line in shared_file(COINBASE_WS).read_text().splitlines()[1:]:
        if not line.strip() or " <- " in line:
            continue  # a blank line or a subscribe request we sent
        msg = json.loads(line.split(": ", 1)[1])
        if msg.get("type") in ("match", "last_match"):
            whole, frac = msg["time"].rstrip("Z").split(".")
            ts_ns = int(datetime.fromisoformat(whole + "+00:00").timestamp()) * 10**9 + int(frac.ljust(9, "0"))
            # Coinbase's side is the maker's: the aggressor took the other side.
            out.append(("coinbase", msg["product_id"], ts_ns, float(msg["price"]), float(msg["size"]),
                        -1 if msg["side"] == "buy" else 1))
    return out


def aggregate(trades, tf_ns: int, lateness_ns: int) -> dict:
    """Plain bars per (venue, symbol, start): every trade that was not late, closed bars only."""
    bars, newest, closed_until = {}, {}, {}
    for venue, symbol, ts, px, qty, side in trades:
        series = (venue, symbol)
        newest[series] = max(newest.get(series, ts), ts)
        start = ts - ts % tf_ns
        if start + tf_ns <= closed_until.get(series, -1):
            continue  # late for this timeframe
        closed_until[series] = newest[series] - lateness_ns
        bar = bars.setdefault((venue, symbol, start), dict(
            open_ts=ts, open=px, high=px, low=px, close_ts=ts, close=px, volume=0.0, pxq=0.0,
            n_trades=0, buy_volume=0.0, sell_volume=0.0))
        if ts < bar["open_ts"]:
            bar["open_ts"], bar["open"] = ts, px
        if ts >= bar["close_ts"]:
            bar["close_ts"], bar["close"] = ts, px
        bar["high"], bar["low"] = max(bar["high"], px), min(bar["low"], px)
        bar["volume"] += qty
        bar["pxq"] += px * qty
        bar["n_trades"] += 1
        bar["buy_volume"] += qty if side == 1 else 0.0
        bar["sell_volume"] += qty if side == -1 else 0.0
    out = {}
    for (venue, symbol, start), bar in bars.items():
        if start + tf_ns <= closed_until[(venue, symbol)]:
            bar["vwap"] = bar["pxq"] / bar["volume"] if bar["volume"] else bar["close"]
            out[(venue, symbol, start)] = bar
    return out


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@pytest.mark.timeout(240)
async def test_recorded_trades_to_api_bars_equal_offline_and_independent_bars(nc, nats_server, tmp_path):
    cfg = Config(data_dir=str(tmp_path / "data"), nats=NatsConfig(url=nats_server.url),
                 store=StoreConfig(dsn=f"chdb:///{tmp_path / 'ch'}"), worker=WorkerConfig())
    lateness_ns = int(cfg.worker.lateness_ms * 1e6)
    js = nc.jetstream()
    await streams.ensure(js, cfg.streams)

    # Edge: both recordings through the real collector, as fast as possible.
    for rel in (KRAKEN_REST, COINBASE_WS):
        path = shared_file(rel)
        reader = reader_for(path)
        adapter = reader.adapter(path)
        async with BatchPublisher(js, adapter.venue, flush_clock="recv") as publisher:
            await collect(reader.frames(path), adapter, publisher, max_skew_ns=reader.max_skew_ns)

    # Worker until it has consumed every trade batch.
    worker = BarWorker(js, cfg.worker)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def drained():
        while True:
            info = await js.consumer_info(streams.MD_STREAM, streams.BARS_WORKER)
            if worker.stats.messages and not info.num_pending and not info.num_ack_pending:
                return
            await asyncio.sleep(0.1)
    try:
        await asyncio.wait_for(drained(), 60)
    finally:
        stop.set()
        await task
    n_bars = (await js.stream_info(streams.BARS_STREAM)).state.messages
    assert n_bars > 100
    # Trace context: every batch from the edge starts a trace, every bar continues one of them.
    edge_traces = {m.headers["traceparent"].split("-")[1] for m in await stream_messages(js, streams.MD_STREAM)}
    bar_traces = {m.headers["traceparent"].split("-")[1] for m in await stream_messages(js, streams.BARS_STREAM)}
    assert bar_traces and bar_traces <= edge_traces

    # Offline: `tickmesh bars` on the same files.
    offline = {}
    for rel in (KRAKEN_REST, COINBASE_WS):
        out = tmp_path / f"{rel.replace('/', '_')}.csv"
        assert tickmesh(["bars", str(shared_file(rel)), "-o", str(out), "--timeframe", "all"]) == 0
        with open(out) as fh:
            for row in csv.DictReader(fh):
                offline[(row["venue"], row["symbol"], row["tf"], int(row["start_ns"]))] = row

    trades = independent_trades()
    async with AsyncTestClient(app=create_app(cfg)) as client:
        store = client.app.state.store

        async def stored():
            while (await store.run(store.counts))["bars"] < n_bars:
                await asyncio.sleep(0.2)
        await asyncio.wait_for(stored(), 60)
        assert (await client.get("/health")).status_code == 200
        symbols = (await client.get("/api/symbols")).json()["symbols"]
        series = {(s["venue"], s["symbol"]) for s in symbols}
        assert series == {(v, s) for v, s, *_ in trades}
        compared = 0
        for tf, tf_ns in TIMEFRAME_NS.items():
            want = aggregate(trades, tf_ns, lateness_ns)
            for venue, symbol in series:
                resp = await client.get("/api/bars", params=dict(venue=venue, symbol=symbol, timeframe=tf,
                                                                 limit=10000))
                assert resp.status_code == 200, resp.text
                api_bars = resp.json()
                want_here = {k[2]: v for k, v in want.items() if k[:2] == (venue, symbol)}
                assert [b["start_ns"] for b in api_bars] == sorted(want_here), (venue, symbol, tf)
                for bar in api_bars:
                    ref = want_here[bar["start_ns"]]
                    row = offline[(venue, symbol, tf, bar["start_ns"])]
                    for field in BAR_FIELDS:
                        assert close(bar[field], ref[field]), (venue, symbol, tf, bar["start_ns"], field)
                        assert close(bar[field], float(row[field])), (venue, symbol, tf, bar["start_ns"], field)
                    compared += 1
                # Offline also flushes the bars still open at the end of input (within the lateness
                # window, at most two): exactly those are extra.
                extra = {k[3] for k in offline if k[:3] == (venue, symbol, tf)} - set(want_here)
                assert 1 <= len(extra) <= 2 and min(extra) > max(want_here, default=-1)
        assert compared == n_bars
