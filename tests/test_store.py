"""core.store on real chDB in temp dirs, fed with recorded venue data."""

from __future__ import annotations

import csv
import json
import threading

import msgspec
import numpy as np
import pytest

from core.errors import StoreError
from core.schema import BUY, SELL, Bar, DeadLetter, Prediction, QuoteBatch, TradeBatch
from core.store import TABLES, Store
from tests.conftest import shared_file


# ---------------------------------------------------------------------- recorded data as wire types


def kraken_trades(n: int | None = None) -> TradeBatch:
    """Kraken REST trades (XBT/USDT) as one TradeBatch; receive time = exchange time + 1 ms."""
    doc = json.loads(shared_file("ticks/kraken_xbtusdt_trades_rest.json").read_text())
    rows = doc["result"]["XBTUSDT"][:n]
    ts_ns = np.array([round(r[2] * 1e9) for r in rows], dtype=np.int64)
    return TradeBatch.from_columns(
        "kraken", "BTC-USDT", ts_ns=ts_ns, recv_ns=ts_ns + 1_000_000,
        px=[float(r[0]) for r in rows], qty=[float(r[1]) for r in rows],
        side=[BUY if r[3] == "b" else SELL for r in rows], trade_id=[r[6] for r in rows])


def huobi_quotes() -> QuoteBatch:
    """Tardis huobi-dm-swap BTC-USD quotes as one QuoteBatch."""
    with shared_file("ticks/tardis_huobi_quotes_BTC-USD.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return QuoteBatch.from_columns(
        "huobi", "BTC-USD-PERP",
        ts_ns=[int(r["timestamp"]) * 1000 for r in rows], recv_ns=[int(r["local_timestamp"]) * 1000 for r in rows],
        bid_px=[float(r["bid_price"]) for r in rows], bid_qty=[float(r["bid_amount"]) for r in rows],
        ask_px=[float(r["ask_price"]) for r in rows], ask_qty=[float(r["ask_amount"]) for r in rows])


def binance_bars() -> list[Bar]:
    """Binance ADA/BTC 1m klines as Bars (vwap = quote volume / volume)."""
    bars = []
    with shared_file("bars/binance_adabtc_1m_klines.csv").open() as fh:
        for r in csv.reader(fh):
            volume, buy = float(r[5]), float(r[9])
            bars.append(Bar(
                venue="binance", symbol="ADA-BTC", tf="1m", start_ns=int(r[0]) * 1_000_000,
                open=float(r[1]), high=float(r[2]), low=float(r[3]), close=float(r[4]), volume=volume,
                vwap=float(r[7]) / volume, n_trades=int(r[8]), buy_volume=buy, sell_volume=volume - buy,
                last_recv_ns=int(r[6]) * 1_000_000))
    return bars


def binance_frame_dead_letter() -> DeadLetter:
    """A real Binance frame, dead-lettered, with bytes that are not valid UTF-8 appended."""
    raw = shared_file("ws/binance_spot_trade_single.json").read_bytes() + b"\x00\xff\xfe"
    return DeadLetter(stage="edge", venue="binance", reason="unknown symbol ETHUSDT", raw=raw,
                      recv_ns=1_639_351_062_000_000_000, symbol="", detail="line 1")


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"chdb:///{tmp_path / 'ch'}")
    yield s
    s.close()


# ---------------------------------------------------------------------- tests


def test_ddl_applies_twice_and_keeps_data(tmp_path):
    dsn = f"chdb:///{tmp_path / 'ch'}"
    with Store.open(dsn) as s:
        s.apply_ddl()  # second application on the same client
        s.insert_trades([kraken_trades(10)])
    with Store.open(dsn) as s:  # third application, on reopen
        assert s.counts()["trades"] == 10
        assert set(s.counts()) == set(TABLES)


def test_trades_round_trip_exactly(store):
    batch = kraken_trades()
    assert store.insert_trades([batch]) == len(batch) == 1000
    rows = store.trades("kraken", "BTC-USDT", limit=10_000)
    cols = batch.columns()
    order = np.lexsort((cols["trade_id"], cols["ts_ns"]))
    assert len(rows) == len(batch)
    for name in TradeBatch.DTYPES:
        got = np.array([r[name] for r in rows], dtype=cols[name].dtype)
        np.testing.assert_array_equal(got, cols[name][order], err_msg=name)
    assert {r["venue"] for r in rows} == {"kraken"} and {r["symbol"] for r in rows} == {"BTC-USDT"}


def test_quotes_round_trip_exactly(store):
    batch = huobi_quotes()
    store.insert_quotes([batch])
    rows = store.quotes("huobi", "BTC-USD-PERP")
    cols = batch.columns()
    order = np.lexsort((cols["recv_ns"], cols["ts_ns"]))
    for name in QuoteBatch.DTYPES:
        got = np.array([r[name] for r in rows], dtype=cols[name].dtype)
        np.testing.assert_array_equal(got, cols[name][order], err_msg=name)


def test_bars_round_trip_exactly(store):
    bars = binance_bars()
    assert store.insert_bars(bars) == 21
    rows = store.bars("binance", "ADA-BTC", "1m")
    assert [Bar(**r) for r in rows] == sorted(bars, key=lambda b: b.start_ns)


def test_dead_letters_round_trip_exactly(store):
    dl = binance_frame_dead_letter()
    store.insert_dead_letters([(dl, 42)], stream="DLQ")
    (row,) = store.dead_letters()
    assert (row.pop("stream"), row.pop("stream_seq")) == ("DLQ", 42)
    assert DeadLetter(**row) == dl
    assert store.dead_letters(stage="sink") == []


def test_dead_letters_from_two_streams_with_equal_seq_are_both_kept(store):
    dl = binance_frame_dead_letter()
    store.insert_dead_letters([(dl, 1)], stream="MD")
    store.insert_dead_letters([(dl, 1)], stream="DLQ")
    store.insert_dead_letters([(dl, 1)], stream="DLQ")  # a redelivery: still one row
    assert store.counts()["dead_letters"] == 2


def test_same_batch_twice_counts_once(store):
    batch, bars, dl = kraken_trades(50), binance_bars(), binance_frame_dead_letter()
    preds = [Prediction("forecast", b.venue, b.symbol, b.tf, b.start_ns, 1, "production",
                        {"MEAN": [0.001, -0.002, 0.0], "P_UP": [0.6, 0.4, 0.5]}, label="up", confidence=0.6,
                        uncertainty=0.01, degraded=i % 2 == 0, reason="x" * (i % 2), latency_us=i)
             for i, b in enumerate(bars)]
    for _ in range(2):
        store.insert_trades([batch])
        store.insert_quotes([huobi_quotes()])
        store.insert_bars(bars)
        store.insert_predictions(preds)
        store.insert_dead_letters([(dl, 7)])
    assert store.counts() == {"trades": 50, "quotes": 10, "bars": 21, "features": 0, "predictions": 21, "signals": 0,
                              "feedback": 0, "alerts": 0, "dead_letters": 1}
    assert len(store.trades("kraken", "BTC-USDT")) == 50
    got = store.predictions("binance", "ADA-BTC", tf="1m", model="forecast")
    assert [msgspec.structs.asdict(p) for p in preds] == [{**r, "degraded": bool(r["degraded"])} for r in got]


def test_bars_range_and_last_limit(store):
    bars = sorted(binance_bars(), key=lambda b: b.start_ns)
    store.insert_bars(bars[::-1])  # insertion order must not matter
    starts = [b.start_ns for b in bars]

    def got(**kw):
        return [r["start_ns"] for r in store.bars("binance", "ADA-BTC", "1m", **kw)]

    assert got() == starts
    assert got(limit=5) == starts[-5:]  # the last five, still ascending
    assert got(start_ns=starts[3]) == starts[3:]
    assert got(end_ns=starts[10]) == starts[:10]  # end is exclusive
    assert got(start_ns=starts[3], end_ns=starts[10], limit=4) == starts[6:10]
    assert got(limit=0) == []
    assert store.bars("binance", "ADA-BTC", "5m") == []
    assert store.bars("binance", "ADA-ETH", "1m") == []
    with pytest.raises(StoreError):
        store.bars("binance", "ADA-BTC", "1m", limit=-1)


def test_trades_last_limit(store):
    batch = kraken_trades(100)
    store.insert_trades([batch])
    ids = np.sort(batch.columns()["trade_id"])
    assert [r["trade_id"] for r in store.trades("kraken", "BTC-USDT", limit=7)] == ids[-7:].tolist()


def test_symbols_and_counts(store):
    kraken = kraken_trades(30)
    cols = kraken.columns()
    other = TradeBatch.from_columns("sim", "ETH-USD", ts_ns=[5, 9], recv_ns=[6, 10], px=[1.0, 2.0],
                                    qty=[1.0, 1.0], side=[1, -1], trade_id=[1, 2])
    store.insert_trades([kraken, other])
    assert store.symbols() == [
        {"venue": "kraken", "symbol": "BTC-USDT", "trades": 30,
         "first_ns": int(cols["ts_ns"].min()), "last_ns": int(cols["ts_ns"].max())},
        {"venue": "sim", "symbol": "ETH-USD", "trades": 2, "first_ns": 5, "last_ns": 9},
    ]
    assert store.counts() == {"trades": 32, "quotes": 0, "bars": 0, "features": 0, "predictions": 0, "signals": 0,
                              "feedback": 0, "alerts": 0, "dead_letters": 0}
    assert store.ping()


def test_empty_inserts_are_no_ops(store):
    empty = TradeBatch.from_columns("kraken", "X-Y", ts_ns=[], recv_ns=[], px=[], qty=[], side=[], trade_id=[])
    assert store.insert_trades([]) == store.insert_trades([empty]) == 0
    assert store.insert_bars([]) == store.insert_dead_letters([]) == 0
    assert store.counts()["trades"] == 0


def test_malformed_values_give_store_error(store):
    ragged = TradeBatch("kraken", "X-Y", ts_ns=b"\x00" * 8, recv_ns=b"", px=b"", qty=b"", side=b"", trade_id=b"")
    with pytest.raises(StoreError, match="trades"):
        store.insert_trades([ragged])
    huge = msgspec.structs.replace(binance_bars()[0], start_ns=2**70)
    with pytest.raises(StoreError, match="bars"):
        store.insert_bars([huge])
    assert store.counts() == {"trades": 0, "quotes": 0, "bars": 0, "features": 0, "predictions": 0, "signals": 0,
                              "feedback": 0, "alerts": 0, "dead_letters": 0}


@pytest.mark.parametrize("dsn, database, match", [
    ("bogus://somewhere", "tickmesh", "unsupported ClickHouse DSN"),
    ("http://127.0.0.1:1", "tickmesh", "cannot open ClickHouse"),
    (None, "tickmesh", "cannot open ClickHouse"),  # a chDB path under a regular file
    (None, "bad-name; DROP", "invalid database name"),
])
def test_bad_dsn_gives_store_error(tmp_path, dsn, database, match):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    dsn = dsn or f"chdb:///{blocker / 'ch'}"
    with pytest.raises(StoreError, match=match):
        Store.open(dsn, database)


def test_closed_store_refuses(tmp_path):
    s = Store.open(f"chdb:///{tmp_path / 'ch'}")
    s.close()
    s.close()  # idempotent
    assert not s.ping()
    with pytest.raises(StoreError, match="closed"):
        s.counts()


async def test_run_uses_one_worker_thread(store):
    names = {await store.run(lambda: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and names != {threading.current_thread().name}
    assert await store.run(store.insert_trades, [kraken_trades(5)]) == 5
    assert (await store.run(store.counts))["trades"] == 5
