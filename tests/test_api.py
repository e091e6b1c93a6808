"""The API end to end: real nats-server, real chDB in a temp dir, the app served by uvicorn on a free port.

Data goes in the way production sends it (JetStream publishes with deterministic Nats-Msg-Id), through
the sink the API runs, into chDB, and back out over HTTP and WebSocket. The bars and trades are real
recorded ones from ../shared/data.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from math import nan
from decimal import Decimal
from typing import Any, Awaitable, Callable, TypeVar

import httpx
import msgspec
import pytest
import uvicorn
import websockets
from websockets.asyncio.client import connect as ws_connect

from api.app import create_app
from api.fanout import BarFanout, BarFilter
from api.params import parse_time_ns
from api.telemetry import Telemetry, render_prometheus
from core import streams, subjects
from core.config import Config, NatsConfig
from core.natsserver import free_port
from core.features.book import FeatureBook
from core.features.featureset import FeatureSet
from core.alerts import AlertSettings, Alerter
from core.portfolio import Portfolio
from core.signals import Execution, Feedback, execution_key, feedback_key
from core.schema import (Codec, HDR_MSG_ID, Bar, FeatureVector, Prediction, Signal, TradeBatch, bar_msg_id,
                         batch_msg_id, feat_msg_id, pred_msg_id, sig_id)
from tests.conftest import shared_file

CODEC = Codec()  # one codec for this module, as every component builds its own

T = TypeVar("T")

WAIT_S = 30.0  # bound on every wait for data to flow through the pipeline


# ---------------------------------------------------------------------- real data


def binance_klines_bars() -> list[Bar]:
    """Binance ADA/BTC 1m klines as Bars: every field from the file (sell volume = volume - taker buy)."""
    bars = []
    with open(shared_file("bars/binance_adabtc_1m_klines.csv"), newline="") as fh:
        for row in csv.reader(fh):
            open_ms, o, h, l, c, vol, close_ms, quote_vol, n, taker_buy = row[:10]
            volume, buy = float(vol), float(taker_buy)
            bars.append(Bar(venue="binance", symbol="ADA-BTC", tf="1m", start_ns=int(open_ms) * 1_000_000,
                            open=float(o), high=float(h), low=float(l), close=float(c), volume=volume,
                            vwap=float(quote_vol) / volume, n_trades=int(n), buy_volume=buy,
                            sell_volume=volume - buy, last_recv_ns=int(close_ms) * 1_000_000))
    return bars


def kraken_ohlc_bars() -> list[Bar]:
    """Kraken's REST OHLC for XBT/USDT 1m as Bars (the REST answer has no buy/sell split: both 0)."""
    data = json.loads(shared_file("bars/kraken_xbtusdt_1m_rest.json").read_text())
    return [Bar(venue="kraken", symbol="BTC-USDT", tf="1m", start_ns=int(t) * 1_000_000_000, open=float(o),
                high=float(h), low=float(l), close=float(c), volume=float(v), vwap=float(vw), n_trades=int(n),
                buy_volume=0.0, sell_volume=0.0, last_recv_ns=0)
            for t, o, h, l, c, vw, v, n in data["result"]["XBTUSDT"]]


def kraken_trades() -> TradeBatch:
    """Kraken's REST trades for XBT/USDT as one batch; exact ns from the decimal seconds, recv = ts."""
    data = json.loads(shared_file("ticks/kraken_xbtusdt_trades_rest.json").read_text(), parse_float=Decimal)
    rows = data["result"]["XBTUSDT"]
    ts_ns = [int(r[2] * 1_000_000_000) for r in rows]
    return TradeBatch.from_columns(
        "kraken", "BTC-USDT", ts_ns=ts_ns, recv_ns=ts_ns, px=[float(r[0]) for r in rows],
        qty=[float(r[1]) for r in rows], side=[1 if r[3] == "b" else -1 for r in rows],
        trade_id=[r[6] for r in rows])


def bar_dict(bar: Bar) -> dict[str, Any]:
    return msgspec.structs.asdict(bar)


# ---------------------------------------------------------------------- the stack


@dataclass
class ApiStack:
    """A running API with its NATS server; ``http`` talks to the API."""

    base_url: str
    ws_url: str
    http: httpx.AsyncClient
    nc: Any
    js: Any

    async def publish_bars(self, bars: list[Bar]) -> None:
        for bar in bars:
            await self.js.publish(subjects.bar(bar.tf, bar.venue, bar.symbol), CODEC.encode(bar),
                                  headers={HDR_MSG_ID: bar_msg_id(bar)})

    async def publish_trades(self, batch: TradeBatch) -> None:
        await self.js.publish(subjects.md(batch.venue, "trade", batch.symbol), CODEC.encode(batch),
                              headers={HDR_MSG_ID: batch_msg_id("trade", batch)})


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = WAIT_S) -> T:
    """Calls ``probe`` until it returns something other than None; fails the test after ``timeout_s``."""

    async def loop() -> T:
        while True:
            result = await probe()
            if result is not None:
                return result
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(loop(), timeout_s)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


async def start_api(nats_url: str, data_dir: str, port: int | None = None):
    """Starts create_app(cfg) under uvicorn in this event loop; returns (server, task, base_url)."""
    cfg = Config(data_dir=data_dir, nats=NatsConfig(url=nats_url))
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, lifespan="on",
                                          log_level="warning"))
    task = asyncio.create_task(server.serve())

    async def started():
        if task.done():
            pytest.fail(f"API server exited during startup: {task.exception()!r}")
        return True if server.started else None

    await eventually(started, "the API to start")
    return server, task, f"http://127.0.0.1:{port}"


async def stop_api(server: uvicorn.Server, task: asyncio.Task) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, WAIT_S)


@pytest.fixture
async def api(nats_server, nc, tmp_path):
    """The API on a free port, backed by the test's nats-server and a chDB dir in tmp_path."""
    server, task, base_url = await start_api(nats_server.url, str(tmp_path / "data"))
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S) as http:
            yield ApiStack(base_url, base_url.replace("http://", "ws://"), http, nc, nc.jetstream())
    finally:
        await stop_api(server, task)


async def ws_clients(api: ApiStack) -> int:
    text = (await api.http.get("/metrics")).text
    return int(float(re.search(r"^tickmesh_api_ws_clients (\S+)$", text, re.M).group(1)))


# ---------------------------------------------------------------------- tests


async def test_health_ok_with_nats_store_sink_and_components(api: ApiStack):
    resp = await api.http.get("/health")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok"
    assert body["nats"]["connected"] is True
    assert body["store"] == {"ok": True, "error": None}
    assert body["sink"]["owned"] is True and body["sink"]["running"] is True
    assert set(body["sink"]["pending"]) == {"sink-md", "sink-bars", "sink-feat", "sink-dlq"}
    assert body["sink"]["lag"] == sum(body["sink"]["pending"].values())

    snapshot = {"events": 1234, "dead_letters": 2, "ts": 1.0}
    await api.nc.publish("tickmesh.metrics.edge.testvenue", json.dumps(snapshot).encode())

    async def components():
        comps = (await api.http.get("/health")).json()["components"]
        return comps if "edge.testvenue" in comps and "sink" in comps else None

    comps = await eventually(components, "the edge snapshot and the sink's own snapshot in /health")
    edge = comps["edge.testvenue"]
    assert edge["subject"] == "tickmesh.metrics.edge.testvenue"
    assert edge["snapshot"] == snapshot
    assert edge["age_s"] >= 0
    assert "lag" in comps["sink"]["snapshot"]


async def test_health_503_when_nats_is_down(nats_server, tmp_path):
    server, task, base_url = await start_api(nats_server.url, str(tmp_path / "data"))
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S) as http:
            assert (await http.get("/health")).status_code == 200
            nats_server.stop()

            async def degraded():
                resp = await http.get("/health")
                return resp if resp.status_code == 503 else None

            body = (await eventually(degraded, "/health to answer 503 with NATS down")).json()
            assert body["status"] == "degraded"
            assert body["nats"]["connected"] is False
            assert body["store"]["ok"] is True
    finally:
        await stop_api(server, task)


async def test_bars_reach_api_through_sink_with_every_field_equal(api: ApiStack):
    bars = binance_klines_bars()
    assert len(bars) > 5
    await api.publish_bars(bars)
    # Published twice: the same Nats-Msg-Id is stored once, and FINAL reads count a row once anyway.
    await api.publish_bars(bars[:3])
    query = {"venue": "binance", "symbol": "ADA-BTC", "timeframe": "1m"}

    async def all_bars():
        got = (await api.http.get("/api/bars", params=query)).json()
        return got if len(got) >= len(bars) else None

    got = await eventually(all_bars, f"{len(bars)} bars in /api/bars")
    assert got == [bar_dict(b) for b in bars]

    # limit keeps the latest bars, still ascending
    latest = (await api.http.get("/api/bars", params={**query, "limit": 5})).json()
    assert latest == [bar_dict(b) for b in bars[-5:]]

    # start inclusive / end exclusive, as ISO-8601, epoch ms, epoch s and epoch ns
    start_ns, end_ns = bars[3].start_ns, bars[8].start_ns
    iso = datetime.fromtimestamp(start_ns / 1e9, tz=timezone.utc).isoformat()
    for start, end in ((iso, str(end_ns // 1_000_000)), (str(start_ns // 10**9), str(end_ns))):
        window = (await api.http.get("/api/bars", params={**query, "start": start, "end": end})).json()
        assert window == [bar_dict(b) for b in bars[3:8]], (start, end)

    # another timeframe of the same series is a different series
    assert (await api.http.get("/api/bars", params={**query, "timeframe": "5m"})).json() == []


async def test_features_reach_api_through_sink(api: ApiStack):
    bars = binance_klines_bars()
    fs = FeatureSet()
    values, _ = FeatureBook(fs).on_bars(bars)
    for bar, row in zip(bars, values):
        vec = FeatureVector(bar.venue, bar.symbol, bar.tf, bar.start_ns, list(fs.names), row.tobytes(), fs.digest)
        await api.js.publish(subjects.feat(bar.tf, bar.venue, bar.symbol), CODEC.encode(vec),
                             headers={HDR_MSG_ID: feat_msg_id(vec)})
    query = {"venue": "binance", "symbol": "ADA-BTC", "timeframe": "1m"}

    async def stored():
        got = (await api.http.get("/api/features", params=query)).json()
        return got if len(got["rows"]) >= len(bars) else None

    got = await eventually(stored, f"{len(bars)} feature vectors in /api/features")
    assert got["names"] == list(fs.names)
    want = [[None if v != v else v for v in row] for row in values.tolist()]
    assert got["rows"] == [[b.start_ns, w] for b, w in zip(bars, want)]
    assert any(v is not None for v in got["rows"][-1][1]) and any(v is None for v in got["rows"][0][1])

    names = ["rsi_14", "sma_10", "no_such_feature"]
    some = (await api.http.get("/api/features", params={**query, "names": ",".join(names), "limit": 3})).json()
    idx = [fs.names.index(n) for n in names[:2]]
    assert some["names"] == names
    assert some["rows"] == [[b.start_ns, [w[i] for i in idx] + [None]] for b, w in zip(bars[-3:], want[-3:])]


async def test_predictions_reach_api_through_sink(api: ApiStack):
    bars = binance_klines_bars()
    preds = []
    for i, bar in enumerate(bars):
        for model, degraded in (("forecast", i % 3 == 0), ("regime", False)):
            outputs = ({"MEAN": [1e-4 * i, 2e-4, -3e-4], "STD": [1e-3, 2e-3, 4e-3], "P_UP": [0.6, 0.55, 0.4]}
                       if model == "forecast" else {"PROBS": [0.7, 0.2, 0.1], "LABEL": [0.0]})
            preds.append(Prediction(model, bar.venue, bar.symbol, bar.tf, bar.start_ns, 0 if degraded else 2,
                                    "fallback" if degraded else "production", outputs, label="up", confidence=0.6,
                                    uncertainty=1e-3, degraded=degraded, reason="circuit open" if degraded else "",
                                    latency_us=1500 + i))
    for p in preds:
        await api.js.publish(subjects.pred(p.model, p.venue, p.symbol), CODEC.encode(p),
                             headers={HDR_MSG_ID: pred_msg_id(p)})
    query = {"venue": "binance", "symbol": "ADA-BTC", "limit": 1000}

    async def stored():
        got = (await api.http.get("/api/predictions", params=query)).json()
        return got if len(got) >= len(preds) else None

    got = await eventually(stored, f"{len(preds)} predictions in /api/predictions")
    want = sorted((msgspec.structs.asdict(p) for p in preds), key=lambda d: (d["start_ns"], d["model"]))
    assert got == want
    only = (await api.http.get("/api/predictions", params={**query, "model": "forecast", "limit": 2})).json()
    assert [(p["model"], p["start_ns"]) for p in only] == [("forecast", b.start_ns) for b in bars[-2:]]
    assert (await api.http.get("/api/predictions", params={**query, "timeframe": "5m"})).json() == []


def _signal(bar, i: int) -> Signal:
    action = ("BUY", "SELL", "HOLD")[i % 3]
    traded = action != "HOLD"
    return Signal(id=sig_id(bar.tf, bar.venue, bar.symbol, bar.start_ns), venue=bar.venue, symbol=bar.symbol,
                  tf=bar.tf, start_ns=bar.start_ns, action=action, price=bar.close, confidence=50.0 + 2 * i,
                  score=0.1 * (i % 5), expected_return=1e-4 * i, uncertainty=2e-3, risk_reward=1.5 if traded else nan,
                  expected_value=0.2, kelly_fraction=0.1, position_fraction=0.05 if traded else 0.0,
                  position_size=5000.0 if action == "BUY" else -5000.0 if traded else 0.0,
                  qty=(5000.0 if action == "BUY" else -5000.0) / bar.close if traded else 0.0,
                  stop_loss=bar.close * (1 - 0.005 * (1 + i % 4)) if traded else nan,  # risk 0.5-2 %
                  take_profit=bar.close * 1.03 if traded else nan,
                  contributions={"trend": 0.2, "forecast": -0.05}, top_features={"rsi_14": 61.5, "adx_14": nan},
                  model_versions={"forecast": 2, "regime": 1}, degraded=i % 4 == 0, veto="", calibrated=False)


async def test_signals_reach_api_through_sink_filtered_as_a_trader_asks(api: ApiStack):
    bars = binance_klines_bars()
    sigs = [_signal(b, i) for i, b in enumerate(bars)]
    for sg in sigs + sigs[:3]:  # three redelivered: stored once
        await api.js.publish(subjects.sig(sg.venue, sg.symbol), CODEC.encode(sg), headers={HDR_MSG_ID: sg.id})
    query = {"symbol": "ADA-BTC", "limit": 1000}

    async def stored():
        got = (await api.http.get("/api/signals", params=query)).json()
        return got if len(got) >= len(sigs) else None

    got = await eventually(stored, f"{len(sigs)} signals in /api/signals")
    assert len(got) == len(sigs) and [g["id"] for g in got] == [sg.id for sg in sigs]
    first = got[0]
    assert first["timestamp"] == datetime.fromtimestamp((bars[0].start_ns + 60 * 10**9) / 1e9,
                                                        tz=timezone.utc).isoformat().replace("+00:00", "Z")
    assert (first["timeframe"], first["action"], first["price"]) == ("1m", "BUY", bars[0].close)
    assert first["top_features"] == {"rsi_14": 61.5, "adx_14": None} and first["model_versions"] == {"forecast": 2,
                                                                                                      "regime": 1}
    hold = got[2]
    assert hold["action"] == "HOLD" and hold["stop_loss"] is None and hold["risk_reward"] is None
    strong = (await api.http.get("/api/signals", params={"symbol": "ADA-BTC", "min_confidence": 75,
                                                          "timeframe": "1m"})).json()
    assert [g["id"] for g in strong] == [sg.id for sg in sigs if sg.confidence >= 75]
    calm = (await api.http.get("/api/signals", params={**query, "max_risk": 1.0})).json()
    want = [sg.id for sg in sigs if sg.action != "HOLD" and 100 * abs(sg.price - sg.stop_loss) / sg.price <= 1.0]
    assert want and len(want) < len(sigs) and [g["id"] for g in calm] == want
    assert all(g["risk_pct"] == pytest.approx(100 * abs(g["price"] - g["stop_loss"]) / g["price"]) for g in calm)
    assert hold["risk_pct"] is None
    buys = (await api.http.get("/api/signals", params={**query, "action": "BUY", "venue": "binance"})).json()
    assert buys and all(g["action"] == "BUY" for g in buys)
    assert (await api.http.get("/api/signals", params={**query, "timeframe": "5m"})).json() == []


async def test_feedback_is_stored_and_handed_to_the_workers(api: ApiStack):
    bars = binance_klines_bars()
    sg = _signal(bars[0], 0)  # a BUY
    await api.js.publish(subjects.sig(sg.venue, sg.symbol), CODEC.encode(sg), headers={HDR_MSG_ID: sg.id})
    await eventually(lambda: _stored_signal(api, sg.id), "the signal stored")
    url = f"/api/signals/{sg.id}/feedback"
    first = await api.http.post(url, json={"kind": "executed", "note": "filled at 2.5e-5"})
    assert first.status_code == 201, first.text
    second = (await api.http.post(url, json={"kind": "note", "note": "slippage 1 tick"})).json()
    assert [(h["kind"], h["note"]) for h in second["history"]] == [("executed", "filled at 2.5e-5"),
                                                                   ("note", "slippage 1 tick")]
    kv = await api.js.key_value(streams.STATE_BUCKET)
    fb = msgspec.json.decode((await kv.get(feedback_key(sg.id))).value, type=Feedback)
    assert (fb.id, fb.kind, fb.action, fb.contributions) == (sg.id, "note", "BUY", sg.contributions)
    missing = await api.http.post("/api/signals/sig.1m.binance.ADA-BTC.1/feedback", json={"kind": "executed"})
    assert missing.status_code == 404
    bad = await api.http.post(url, json={"kind": "liked"})
    assert bad.status_code == 400


async def test_similar_signals_and_how_they_did(api: ApiStack):
    bars = binance_klines_bars()
    await api.publish_bars(bars)
    sigs = [_signal(b, i) for i, b in enumerate(bars)]  # BUY, SELL, HOLD, BUY, ...; score 0.1 * (i % 5)
    for sg in sigs:
        await api.js.publish(subjects.sig(sg.venue, sg.symbol), CODEC.encode(sg), headers={HDR_MSG_ID: sg.id})
    await eventually(lambda: _stored_signal(api, sigs[-1].id), "the signals stored")
    await eventually(lambda: _bars_stored(api, len(bars)), "the bars stored")
    last_buy = max((i for i, sg in enumerate(sigs) if sg.action == "BUY"), key=lambda i: i)
    got = (await api.http.get(f"/api/signals/{sigs[last_buy].id}/similar", params={"horizon": 1})).json()
    earlier = [i for i, sg in enumerate(sigs) if sg.action == "BUY" and i < last_buy]
    assert got["count"] == len(earlier) and got["action"] == "BUY"
    by_id = {s["id"]: s for s in got["similar"]}
    close_at = {b.start_ns: b.close for b in bars}  # the file holds two days: not every bar has a next one
    outcomes = []
    for i in earlier:  # each outcome from the stored closes, by hand
        nxt = close_at.get(sigs[i].start_ns + 60 * 10**9)
        if nxt is None:
            assert by_id[sigs[i].id]["outcome"] is None
        else:
            outcomes.append(math.log(nxt / sigs[i].price))
            assert by_id[sigs[i].id]["outcome"] == pytest.approx(outcomes[-1])
    assert got["with_outcome"] == len(outcomes) >= 3
    scores = [abs(s["score"] - sigs[last_buy].score) for s in got["similar"]]
    assert scores == sorted(scores)  # nearest in score first
    assert got["hit_rate"] == pytest.approx(sum(o > 0 for o in outcomes) / len(outcomes))
    assert (await api.http.get("/api/signals/nosuch/similar")).status_code == 404


async def test_alerts_reach_api_through_sink(api: ApiStack):
    alerter = Alerter(AlertSettings(min_priority="low", window_s=120))
    sigs = [_signal(b, i) for i, b in enumerate(binance_klines_bars())]
    alerts = [a for a in map(alerter.on_signal, sigs) if a is not None]
    assert len(alerts) >= 3  # one per 2-minute window of 1m signals that trade
    for a in alerts:
        await api.js.publish(subjects.alert(a.priority, a.venue, a.symbol), CODEC.encode(a),
                             headers={HDR_MSG_ID: a.id})

    async def stored():
        got = (await api.http.get("/api/alerts", params={"symbol": "ADA-BTC"})).json()
        return got if len(got) >= len(alerts) else None

    got = await eventually(stored, f"{len(alerts)} alerts in /api/alerts")
    assert [g["id"] for g in got] == [a.id for a in reversed(alerts)]  # newest first
    assert got[-1]["context"] == {k: (None if v != v else v) for k, v in alerts[0].context.items()}
    only = (await api.http.get("/api/alerts", params={"priority": alerts[0].priority})).json()
    assert {g["priority"] for g in only} == {alerts[0].priority}
    assert (await api.http.get("/api/alerts", params={"priority": "urgent"})).status_code == 400


async def _bars_stored(api: ApiStack, n: int):
    got = (await api.http.get("/api/bars", params={"venue": "binance", "symbol": "ADA-BTC", "timeframe": "1m"})).json()
    return len(got) >= n or None


async def _stored_signal(api: ApiStack, signal_id: str):
    got = (await api.http.get("/api/signals", params={"symbol": "ADA-BTC"})).json()
    return any(g["id"] == signal_id for g in got) or None


async def test_trades_reach_api_through_sink_with_every_field_equal(api: ApiStack):
    batch = kraken_trades()
    await api.publish_trades(batch)
    query = {"venue": "kraken", "symbol": "BTC-USDT", "limit": 10_000}

    async def all_trades():
        got = (await api.http.get("/api/trades", params=query)).json()
        return got if len(got) >= len(batch) else None

    got = await eventually(all_trades, f"{len(batch)} trades in /api/trades")
    cols = batch.columns()
    order = sorted(range(len(batch)), key=lambda i: (cols["ts_ns"][i], cols["trade_id"][i]))
    expected = [{"venue": "kraken", "symbol": "BTC-USDT", **{k: v[i].item() for k, v in cols.items()}}
                for i in order]
    assert got == expected

    symbols = (await api.http.get("/api/symbols")).json()
    assert symbols["timeframes"] == ["1s", "5s", "1m", "5m", "1h"]
    assert {"venue": "kraken", "symbol": "BTC-USDT", "trades": len(batch),
            "first_ns": int(cols["ts_ns"].min()), "last_ns": int(cols["ts_ns"].max())} in symbols["symbols"]


async def test_ws_pushes_new_bars_matching_its_filter(api: ApiStack):
    one_min, five_min = kraken_ohlc_bars()[:2]
    five_min = msgspec.structs.replace(five_min, tf="5m")
    base = f"{api.ws_url}/ws/bars?venue=kraken&symbol=BTC-USDT"
    async with ws_connect(f"{base}&timeframe=1m") as ws_1m, ws_connect(f"{base}&timeframe=5m") as ws_5m, \
            ws_connect(f"{api.ws_url}/ws/bars") as ws_all:
        await eventually(lambda: _at_least(ws_clients(api), 3), "3 WebSocket clients subscribed")
        await api.publish_bars([one_min, five_min])
        assert json.loads(await asyncio.wait_for(ws_1m.recv(), WAIT_S)) == bar_dict(one_min)
        # the 5m client's first message is the 5m bar: the 1m one was filtered out
        assert json.loads(await asyncio.wait_for(ws_5m.recv(), WAIT_S)) == bar_dict(five_min)
        assert json.loads(await asyncio.wait_for(ws_all.recv(), WAIT_S)) == bar_dict(one_min)
        assert json.loads(await asyncio.wait_for(ws_all.recv(), WAIT_S)) == bar_dict(five_min)


async def test_ws_pushes_new_signals_with_the_rest_filters(api: ApiStack):
    bars = binance_klines_bars()
    sigs = [_signal(b, i) for i, b in enumerate(bars[:9])]  # actions BUY, SELL, HOLD, ...; confidence 50 + 2i
    base = f"{api.ws_url}/ws/signals?symbol=ADA-BTC"
    async with ws_connect(f"{base}&min_confidence=60&timeframe=1m") as strong, \
            ws_connect(f"{base}&action=SELL") as sells, ws_connect(f"{api.ws_url}/ws/signals") as every, \
            ws_connect(f"{base}&max_risk=1") as calm:
        await eventually(lambda: _at_least(ws_clients(api), 4), "4 WebSocket clients subscribed")
        for sg in sigs:
            await api.js.publish(subjects.sig(sg.venue, sg.symbol), CODEC.encode(sg), headers={HDR_MSG_ID: sg.id})
        got_every = [json.loads(await asyncio.wait_for(every.recv(), WAIT_S)) for _ in sigs]

        async def stored():
            got = (await api.http.get("/api/signals", params={"symbol": "ADA-BTC"})).json()
            return got if len(got) >= len(sigs) else None

        assert got_every == await eventually(stored, "the signals stored")  # the same objects as REST's
        want_strong = [sg.id for sg in sigs if sg.confidence >= 60]
        assert [json.loads(await asyncio.wait_for(strong.recv(), WAIT_S))["id"] for _ in want_strong] == want_strong
        want_sells = [sg.id for sg in sigs if sg.action == "SELL"]
        assert [json.loads(await asyncio.wait_for(sells.recv(), WAIT_S))["id"] for _ in want_sells] == want_sells
        want_calm = [sg.id for sg in sigs if sg.risk_pct <= 1.0]  # HOLDs have no stop: NaN, left out
        assert 0 < len(want_calm) < len(sigs)
        assert [json.loads(await asyncio.wait_for(calm.recv(), WAIT_S))["id"] for _ in want_calm] == want_calm
    assert got_every[0]["timeframe"] == "1m" and got_every[2]["stop_loss"] is None  # as /api/signals has them


async def test_portfolio_is_the_paper_book_the_worker_published(api: ApiStack):
    resp = await api.http.get("/api/portfolio")
    assert resp.status_code == 404 and "not taken a decision" in resp.json()["detail"]
    # What the inference worker's snapshot puts (tests/test_inference_worker.py checks that side).
    book = Portfolio(100_000.0)
    book.apply_fills([("binance", "ADA-BTC/1m")], [1000.0], [2.5e-5], [1_700_000_000_000_000_000], "signal")
    book.mark([("binance", "ADA-BTC/1m")], [2.6e-5], [1_700_000_060_000_000_000])
    snap = book.snapshot()
    for row in snap["positions"]:
        row["symbol"], _, row["timeframe"] = row["symbol"].rpartition("/")
    kv = await api.js.key_value(streams.STATE_BUCKET)
    await kv.put(streams.PORTFOLIO_KEY, msgspec.json.encode({**snap, "updated_ns": 1, "last_seq": 7}))
    got = (await api.http.get("/api/portfolio")).json()
    assert got["equity"] == pytest.approx(100_000.0 + 1000 * 1e-6) and got["n_fills"] == 1
    assert got["positions"] == [{"venue": "binance", "symbol": "ADA-BTC", "timeframe": "1m", "qty": 1000.0,
                                 "avg_px": 2.5e-5, "last_px": 2.6e-5, "unrealized": pytest.approx(1000 * 1e-6),
                                 "realized": 0.0, "exposure": pytest.approx(0.026), "stop_px": None,
                                 "take_px": None}]


async def test_executions_are_handed_to_the_workers(api: ApiStack):
    body = {"venue": "kraken", "symbol": "BTC-USD", "timeframe": "1m", "qty": -0.5, "price": 30_000.0,
            "time": "2024-01-02T03:04:05Z", "note": "sold by hand"}
    resp = await api.http.post("/api/executions", json=body)
    assert resp.status_code == 202, resp.text
    ex = resp.json()
    assert (ex["qty"], ex["px"], ex["ts_ns"]) == (-0.5, 30_000.0, 1_704_164_645_000_000_000)
    again = (await api.http.post("/api/executions", json=body)).json()
    assert again["id"] == ex["id"]  # the same fill keeps its id: booked once
    kv = await api.js.key_value(streams.STATE_BUCKET)
    stored = msgspec.json.decode((await kv.get(execution_key(ex["id"]))).value, type=Execution)
    assert (stored.venue, stored.symbol, stored.tf, stored.note) == ("kraken", "BTC-USD", "1m", "sold by hand")
    for bad, param in (({"qty": 0}, "qty"), ({"price": -1}, "price"), ({"timeframe": "2m"}, "timeframe")):
        r = await api.http.post("/api/executions", json={**body, **bad})
        assert r.status_code == 400 and r.json()["param"] == param


async def test_ws_signals_bad_parameter_closes_naming_it(api: ApiStack):
    async with ws_connect(f"{api.ws_url}/ws/signals?min_confidence=150") as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    assert info.value.rcvd.code == 1008 and "min_confidence" in info.value.rcvd.reason


async def _at_least(value: Awaitable[int], n: int) -> int | None:
    got = await value
    return got if got >= n else None


async def test_ws_bad_timeframe_closes_naming_it(api: ApiStack):
    async with ws_connect(f"{api.ws_url}/ws/bars?timeframe=2m") as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    assert info.value.rcvd.code == 1008
    assert "timeframe" in info.value.rcvd.reason


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "timeframe": "2m"}, "timeframe"),
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "limit": "0"}, "limit"),
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "limit": "10001"}, "limit"),
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "limit": "ten"}, "limit"),
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "start": "garbage"}, "start"),
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "end": "2021-13-01"}, "end"),
    ("/api/bars", {"venue": "binance", "symbol": "ADA-BTC", "start": "2021-11-28", "end": "2021-11-27"}, "end"),
    ("/api/bars", {"venue": "binance", "timeframe": "1m"}, "symbol"),
    ("/api/trades", {"symbol": "BTC-USDT"}, "venue"),
    ("/api/features", {"venue": "binance", "symbol": "ADA-BTC", "names": " , "}, "names"),
    ("/api/features", {"venue": "binance", "symbol": "ADA-BTC", "timeframe": "2m"}, "timeframe"),
    ("/api/predictions", {"venue": "binance", "symbol": "ADA-BTC", "timeframe": "2m"}, "timeframe"),
    ("/api/predictions", {"symbol": "ADA-BTC"}, "venue"),
    ("/api/signals", {"symbol": "ADA-BTC", "min_confidence": "101"}, "min_confidence"),
    ("/api/signals", {"symbol": "ADA-BTC", "timeframe": "2m"}, "timeframe"),
    ("/api/signals", {"min_confidence": "50"}, "symbol"),
    ("/api/signals", {"symbol": "ADA-BTC", "max_risk": "-1"}, "max_risk"),
    ("/api/trades", {"venue": "kraken", "symbol": "BTC-USDT", "start": "99999999999999999999999"}, "start"),
])
async def test_bad_parameters_are_400_naming_the_parameter(api: ApiStack, path, params, param):
    resp = await api.http.get(path, params=params)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["status_code"] == 400
    assert body["param"] == param
    assert f"'{param}'" in body["detail"]


async def test_openapi_lists_the_paths(api: ApiStack):
    resp = await api.http.get("/schema/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    for path in ("/health", "/api/symbols", "/api/bars", "/api/features", "/api/predictions", "/api/signals",
                 "/api/trades", "/metrics"):
        assert path in paths, path
    names = {p["name"] for p in paths["/api/bars"]["get"]["parameters"]}
    assert names == {"venue", "symbol", "timeframe", "start", "end", "limit"}


_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


async def test_metrics_is_prometheus_text(api: ApiStack):
    await api.http.get("/api/bars", params={"venue": "binance", "symbol": "ADA-BTC"})
    await api.http.get("/api/bars", params={"venue": "binance"})  # a 400
    await api.nc.publish("tickmesh.metrics.worker", json.dumps({"bars": 17, "lag": 3, "ts": 2.0}).encode())

    async def with_worker():
        resp = await api.http.get("/metrics")
        return resp if 'component="worker"' in resp.text else None

    resp = await eventually(with_worker, "the worker snapshot in /metrics")
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = resp.text.splitlines()
    for line in lines:
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S", line), line
        else:
            assert _SAMPLE.match(line), line
            float(line.rsplit(" ", 1)[1])
    assert 'tickmesh_api_requests_total{method="GET",path="/api/bars",status="200"} 1' in lines
    assert 'tickmesh_api_requests_total{method="GET",path="/api/bars",status="400"} 1' in lines
    assert 'tickmesh_bars{component="worker"} 17' in lines
    assert 'tickmesh_lag{component="worker"} 3' in lines
    assert "tickmesh_api_nats_connected 1" in lines
    assert "tickmesh_api_store_up 1" in lines
    assert any(line.startswith('tickmesh_sink_consumer_pending{consumer="sink-bars"}') for line in lines)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_cli_serves_and_stops_cleanly_on_a_signal(nats_server, tmp_path, stop_signal):
    """`tickmesh api` as the supervisor runs it: a child process, stopped with SIGINT (or SIGTERM)."""
    port = free_port()
    env = {**os.environ, "TICKMESH_DATA_DIR": str(tmp_path / "data")}
    with open(tmp_path / "api.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "core.cli", "api", "--url", nats_server.url,
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as http:

            async def healthy():
                if proc.poll() is not None:
                    pytest.fail(f"tickmesh api exited with {proc.returncode}: {(tmp_path / 'api.log').read_text()}")
                try:
                    return (await http.get("/health")).json()
                except httpx.TransportError:
                    return None

            body = await eventually(healthy, "tickmesh api to answer /health")
            assert body["status"] == "ok" and body["sink"]["running"] is True
        proc.send_signal(stop_signal)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), WAIT_S) == 0
        log_text = (tmp_path / "api.log").read_text()
        assert "Application shutdown complete" in log_text and "Traceback" not in log_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- units without servers


@pytest.mark.parametrize(("text", "ts_ns"), [
    ("1637971200", 1_637_971_200_000_000_000),
    ("1637971200.25", 1_637_971_200_250_000_000),
    ("1637971200000", 1_637_971_200_000_000_000),
    ("1637971200000123", 1_637_971_200_000_123_000),
    ("1637971200000000001", 1_637_971_200_000_000_001),
    ("2021-11-27", 1_637_971_200_000_000_000),
    ("2021-11-27T00:00:00Z", 1_637_971_200_000_000_000),
    ("2021-11-27T01:00:00.000000001+01:00", 1_637_971_200_000_000_001),
    ("2021-11-27T00:00:00.5", 1_637_971_200_500_000_000),
])
def test_time_parameters_follow_the_documented_rule(text, ts_ns):
    assert parse_time_ns("start", text) == ts_ns


def test_fanout_filters_and_marks_a_full_client_too_slow():
    fanout = BarFanout(queue_size=2)
    bars = kraken_ohlc_bars()[:3]
    with fanout.subscribe(BarFilter(venue="kraken", tf="1m")) as slow, \
            fanout.subscribe(BarFilter(tf="5m")) as other:
        assert [fanout.publish(b) for b in bars] == [(1, 0), (1, 0), (0, 1)]
        assert slow.overflowed and len(fanout) == 1  # dropped from the fan-out, its handler closes it
        assert other.queue.empty() and not other.overflowed
        assert [json.loads(slow.queue.get_nowait()) for _ in range(2)] == [bar_dict(b) for b in bars[:2]]
    assert len(fanout) == 0


def test_malformed_metrics_snapshot_is_counted_not_kept():
    telemetry = Telemetry()
    telemetry.on_snapshot("tickmesh.metrics.worker", b"[1, 2]")
    telemetry.on_snapshot("tickmesh.metrics.worker", b"not json")
    assert telemetry.snapshots == {} and telemetry.counters["bad_metric_snapshots"] == 2
    telemetry.on_snapshot("tickmesh.metrics.edge.kraken", b'{"events": 5, "queue": {"depth": 2}, "ts_ns": 1}')
    text = render_prometheus(telemetry.samples())
    assert 'tickmesh_events{component="edge.kraken"} 5' in text
    assert 'tickmesh_queue_depth{component="edge.kraken"} 2' in text
    assert "tickmesh_ts_ns" not in text
    assert "tickmesh_api_bad_metric_snapshots_total 2" in text
