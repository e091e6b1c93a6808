"""Offline readers over the recorded files: format sniffing, frames, batches, dead letters, pacing."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from importlib.metadata import entry_points

import numpy as np
import pytest

from core.errors import DataFileError
from core.schema import DeadLetter, TradeBatch
from edge.readers import KRAKEN_REST, READERS, RECORDED, TARDIS, reader_for
from edge.recorded import open_recorded, paced, replay_offsets_s
from tests.conftest import shared_file

WS_FILES = ("ws/binance_spot.ws.txt", "ws/coinbase.ws.txt", "ws/kraken_trade.ws.txt", "ws/kraken_ticker.ws.txt")


def _split(items):
    batches = [m for m in items if isinstance(m, TradeBatch)]
    dead = [m for m in items if isinstance(m, DeadLetter)]
    assert len(batches) + len(dead) == len(items)
    return batches, dead


def _column(batches, name):
    return np.concatenate([b.columns()[name] for b in batches]) if batches else np.array([])


# --- Kraken REST -------------------------------------------------------------------------------

def test_kraken_rest_reads_1000_trades_in_order():
    path = shared_file("ticks/kraken_xbtusdt_trades_rest.json")
    batches, dead = _split(list(KRAKEN_REST.read(path)))
    assert dead == [] and len(batches) == 1
    [batch] = batches
    assert (batch.venue, batch.symbol, len(batch)) == ("kraken", "BTC-USDT", 1000)
    cols = batch.columns()
    assert cols["trade_id"].tolist() == list(range(10218208, 10219208))
    # Independent check from the JSON text, times kept exact with Decimal.
    rows = json.loads(path.read_text(), parse_float=Decimal)["result"]["XBTUSDT"]
    assert cols["ts_ns"].tolist() == [int(r[2] * 1_000_000_000) for r in rows]
    assert cols["ts_ns"][0] == 1762795433971744500
    assert cols["px"].tolist() == [float(r[0]) for r in rows]
    assert cols["qty"].tolist() == [float(r[1]) for r in rows]
    assert cols["side"].tolist() == [1 if r[3] == "b" else -1 for r in rows]
    # The response has no receive time: its `last` cursor stands in.
    assert set(cols["recv_ns"].tolist()) == {1762820035982277754}


def test_kraken_rest_error_response_becomes_dead_letter(tmp_path):
    path = tmp_path / "err.json"
    path.write_text('{"error": ["EGeneral:Too many requests"], "result": {}}')
    assert reader_for(path) is KRAKEN_REST
    [dl] = list(KRAKEN_REST.read(path))
    assert isinstance(dl, DeadLetter) and dl.venue == "kraken" and "EGeneral:Too many requests" in dl.reason


# --- Tardis ------------------------------------------------------------------------------------

def test_tardis_reads_10_trades():
    path = shared_file("ticks/tardis_bitmex_trades_XBTUSD.csv")
    lines = path.read_text().splitlines()
    header, rows = lines[0].split(","), [dict(zip(lines[0].split(","), ln.split(","))) for ln in lines[1:] if ln]
    batches, dead = _split(list(TARDIS.read(path)))
    assert dead == [] and len(rows) == 10
    assert {(b.venue, b.symbol) for b in batches} == {("bitmex", "BTC-USD-PERP")}
    assert _column(batches, "ts_ns").tolist() == [int(r["timestamp"]) * 1000 for r in rows]
    assert _column(batches, "recv_ns").tolist() == [int(r["local_timestamp"]) * 1000 for r in rows]
    assert _column(batches, "px").tolist() == [float(r["price"]) for r in rows]
    assert _column(batches, "qty").tolist() == [float(r["amount"]) for r in rows]
    assert _column(batches, "side").tolist() == [{"buy": 1, "sell": -1}[r["side"]] for r in rows]
    ids = _column(batches, "trade_id").tolist()
    assert len(set(ids)) == 10 and "id" in header
    assert _column(_split(list(TARDIS.read(path)))[0], "trade_id").tolist() == ids  # UUID -> same int64 every time


def test_tardis_bad_lines_become_dead_letters(tmp_path):
    lines = shared_file("ticks/tardis_bitmex_trades_XBTUSD.csv").read_text().splitlines()
    bad = lines[2].replace("8531.5", "0")
    path = tmp_path / "t.csv"
    path.write_text("\n".join([lines[0], lines[1], "bitmex,XBTUSD,garbage", bad, lines[3]]) + "\n")
    batches, dead = _split(list(TARDIS.read(path)))
    assert len(batches) == 2
    assert [d.reason.split(":")[0] for d in dead] == ["ParseError", "ValidationError"]
    assert "bad price" in dead[1].reason and dead[1].symbol == "BTC-USD-PERP" and dead[1].raw == bad.encode()


# --- recorded WebSocket sessions ---------------------------------------------------------------

@pytest.mark.parametrize("relpath", WS_FILES)
def test_recorded_file_url_sent_and_frames(relpath):
    path = shared_file(relpath)
    lines = path.read_text().split("\n")
    url = lines[0].split(" <-> ")[0]
    sent = [ln for ln in lines[1:] if ln.startswith(url + " <- ")]
    data = [ln for ln in lines[1:] if ln and not ln.startswith(url + " <- ")]
    rec = open_recorded(path)
    assert rec.url == url and rec.connect_s == float(lines[0].split(" <-> ")[1])
    assert rec.sent == [ln.split(": ", 1)[1] for ln in sent]
    frames = list(rec.frames())
    assert [raw for _, raw in frames] == [ln.split(": ", 1)[1] for ln in data]
    assert [ns for ns, _ in frames] == [int(Decimal(ln.split(": ", 1)[0]) * 10**9) for ln in data]
    expected = {"ws/binance_spot.ws.txt": (265, 0), "ws/coinbase.ws.txt": (9946, 3),
                "ws/kraken_trade.ws.txt": (49, 1), "ws/kraken_ticker.ws.txt": (60, 1)}[relpath]
    assert (len(frames), len(rec.sent)) == expected  # README frame counts, verified


def test_recorded_reader_coinbase_trades_and_dead_letters():
    path = shared_file("ws/coinbase.ws.txt")
    types = [json.loads(raw)["type"] for _, raw in open_recorded(path).frames()]
    batches, dead = _split(list(RECORDED.read(path)))
    assert sum(len(b) for b in batches) == types.count("match") + types.count("last_match") == 107
    assert {b.venue for b in batches} == {"coinbase"}
    assert len(dead) == types.count("l2update") + types.count("snapshot")
    assert all(d.reason.startswith("UnknownChannelError") for d in dead)
    # Recorded receive times are real, so the skew check applies; last_match replays trades up
    # to ~107 s old, inside the limit.
    skew_ns = np.abs(_column(batches, "recv_ns") - _column(batches, "ts_ns"))
    assert 100 * 10**9 < skew_ns.max() < RECORDED.max_skew_ns


def test_recorded_reader_binance_and_kraken():
    batches, dead = _split(list(RECORDED.read(shared_file("ws/binance_spot.ws.txt"))))
    assert [(b.symbol, len(b)) for b in batches] == [("NKN-USDT", 1), ("LRC-BTC", 1)]
    assert len(dead) == 177 + 2  # depth and kline frames; bookTicker quotes are not trades
    batches, dead = _split(list(RECORDED.read(shared_file("ws/kraken_trade.ws.txt"))))
    assert dead == [] and sum(len(b) for b in batches) == 10
    two = [b for b in batches if len(b) == 2]
    assert two and all(len(set(b.columns()["recv_ns"].tolist())) == 1 for b in two)  # one frame, one batch


def test_recorded_bad_files(tmp_path):
    with pytest.raises(DataFileError, match="not a recorded"):
        open_recorded(shared_file("ticks/tardis_bitmex_trades_XBTUSD.csv"))
    path = tmp_path / "broken.ws.txt"
    path.write_text("wss://ws.kraken.com <-> 1618678132.3\n1618678133.5: {\"event\":\"heartbeat\"}\nnot a frame line\n")
    with pytest.raises(DataFileError, match=r"broken.ws.txt:3"):
        list(open_recorded(path).frames())
    # A real recording of a venue without an adapter: recognized as recorded, but no adapter.
    bitmex = shared_file("ws/bitmex.ws.txt")
    assert reader_for(bitmex) is RECORDED
    with pytest.raises(DataFileError, match="no adapter for URL"):
        list(RECORDED.read(bitmex))


# --- pacing ------------------------------------------------------------------------------------

def test_replay_offsets_follow_recorded_gaps_over_speed():
    frames = list(open_recorded(shared_file("ws/kraken_trade.ws.txt")).frames())
    recv = [ns for ns, _ in frames]
    for speed in (1.0, 10.0, 250.0):
        offsets = list(replay_offsets_s(recv, speed))
        assert offsets == pytest.approx([(ns - recv[0]) / 1e9 / speed for ns in recv])
    assert 2.9 < list(replay_offsets_s(recv, 10.0))[-1] < 3.1  # a 30 s recording at 10x
    assert set(replay_offsets_s(recv, None)) == {0.0}
    # A receive time that steps back is replayed at once, never reordered.
    assert list(replay_offsets_s([0, 2 * 10**9, 10**9, 3 * 10**9], 2.0)) == [0.0, 1.0, 1.0, 1.5]
    for bad in (0, -1.0):
        with pytest.raises(ValueError):
            list(replay_offsets_s(recv, bad))


def test_paced_yields_every_frame_in_order():
    frames = list(open_recorded(shared_file("ws/kraken_ticker.ws.txt")).frames())

    async def collect(source, speed):
        return [f async for f in paced(source, speed)]

    assert asyncio.run(asyncio.wait_for(collect(frames, None), timeout=30)) == frames
    # 30 s of recording at 1e5x is well under a second of waiting.
    assert asyncio.run(asyncio.wait_for(collect(iter(frames), 1e5), timeout=30)) == frames

    async def agen():
        for f in frames:
            yield f

    assert asyncio.run(asyncio.wait_for(collect(agen(), None), timeout=30)) == frames
    with pytest.raises(ValueError):
        asyncio.run(asyncio.wait_for(collect(frames, 0.0), timeout=30))


# --- format selection --------------------------------------------------------------------------

def test_reader_for_sniffs_each_format():
    expected = {relpath: RECORDED for relpath in WS_FILES}
    expected.update({"ticks/kraken_xbtusdt_trades_rest.json": KRAKEN_REST,
                     "ticks/tardis_bitmex_trades_XBTUSD.csv": TARDIS})
    for relpath, reader in expected.items():
        path = shared_file(relpath)
        assert [r for r in READERS if r.sniff(path)] == [reader]  # exactly one format claims it
        assert reader_for(path) is reader
    assert reader_for(shared_file("ticks/kraken_xbtusdt_trades_rest.json"), "tardis") is TARDIS  # explicit wins


def test_reader_for_errors_clearly(tmp_path):
    with pytest.raises(DataFileError, match="cannot tell the format"):
        reader_for(shared_file("bars/goog_daily_2004-2013.csv"))
    with pytest.raises(DataFileError, match="cannot tell the format"):
        reader_for(shared_file("ticks/tardis_huobi_quotes_BTC-USD.csv"))  # Tardis quotes, not trades
    with pytest.raises(DataFileError, match="not found"):
        reader_for(tmp_path / "nope.json")
    with pytest.raises(DataFileError, match="unknown input format 'parquet'.*recorded, kraken-rest, tardis"):
        reader_for(shared_file("ticks/kraken_xbtusdt_trades_rest.json"), "parquet")


def test_entry_points_name_the_reader_constants():
    eps = {ep.name: ep.load() for ep in entry_points(group="tickmesh.readers")}
    assert eps == {r.name: r for r in READERS}
