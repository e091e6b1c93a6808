"""Venue adapters replayed over every recorded frame, golden values, symbol rules, validation."""

from __future__ import annotations

import asyncio
import calendar
import json
import math
from collections import Counter
from datetime import datetime
from decimal import Decimal

import pytest

from core.config import SimConfig
from core.errors import ConfigError, ParseError, UnknownChannelError, UnknownSymbolError
from edge.adapters import (
    ADAPTERS,
    BinanceAdapter,
    CoinbaseAdapter,
    KrakenAdapter,
    KrakenRestAdapter,
    SimVenue,
    TardisAdapter,
    adapter_for_url,
)
from edge.adapters.base import IsoTimeParser, decimal_to_ns, decimals_to_ns
from edge.events import FrameEvents, Quote, Trade, TradeColumns
from edge.recorded import open_recorded
from edge.validate import process_frame, validate, validate_columns
from tests.conftest import shared_file


def _frames(relpath: str) -> list[tuple[int, str]]:
    return list(open_recorded(shared_file(relpath)).frames())


def _ns(seconds_text: str) -> int:
    """Independent exact conversion of decimal seconds to ns (Decimal, not the adapters' helper)."""
    return int(Decimal(seconds_text) * 1_000_000_000)


def _iso_ns(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return calendar.timegm(dt.utctimetuple()) * 1_000_000_000 + dt.microsecond * 1000


def _replay(adapter, frames):
    """Parses every frame; returns (events, control frame count, {error class: [messages]})."""
    events, errors = [], {}
    for recv_ns, raw in frames:
        try:
            events.extend((recv_ns, raw, ev) for ev in adapter.parse(raw, recv_ns))
        except ParseError as exc:
            errors.setdefault(type(exc), []).append(str(exc))
    return events, adapter.control_frames, errors


# --- Binance -----------------------------------------------------------------------------------

def test_binance_every_recorded_frame_normalizes_or_is_named():
    frames = _frames("ws/binance_spot.ws.txt")
    channels = Counter(json.loads(raw)["stream"].split("@", 1)[1] for _, raw in frames)
    assert channels["aggTrade"] == 2 and channels["bookTicker"] == 84  # README counts, verified
    assert sum(channels.values()) == len(frames) == 265

    events, control, errors = _replay(BinanceAdapter(), frames)
    trades = [e for _, _, e in events if isinstance(e, Trade)]
    quotes = [e for _, _, e in events if isinstance(e, Quote)]
    assert len(trades) == channels["aggTrade"] + channels["trade"]
    assert len(quotes) == channels["bookTicker"]
    assert control == 0
    assert set(errors) == {UnknownChannelError}
    unknown = errors[UnknownChannelError]
    assert len(unknown) == channels["depth@100ms"] + channels["kline_1m"]
    assert sum("'depth@100ms'" in m for m in unknown) == channels["depth@100ms"]
    assert sum("'kline_1m'" in m for m in unknown) == channels["kline_1m"]


def test_binance_events_match_raw_fields():
    for recv_ns, raw, ev in _replay(BinanceAdapter(), _frames("ws/binance_spot.ws.txt"))[0]:
        d = json.loads(raw)["data"]
        base_quote = {"NKNUSDT": "NKN-USDT", "BLZETH": "BLZ-ETH", "LRCBTC": "LRC-BTC", "RUNEEUR": "RUNE-EUR"}
        assert ev.symbol == base_quote[d["s"]]
        if isinstance(ev, Trade):
            assert (ev.ts_ns, ev.px, ev.qty, ev.trade_id) == (d["T"] * 1_000_000, float(d["p"]), float(d["q"]), d["a"])
            assert ev.side == (-1 if d["m"] else 1)
        else:  # bookTicker has no exchange time: the receive time stands in
            assert ev == Quote(ev.symbol, recv_ns, float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"]))


def test_binance_golden_aggtrade_and_bookticker():
    frames = _frames("ws/binance_spot.ws.txt")
    recv_ns, raw = next((ns, raw) for ns, raw in frames if "nknusdt@aggTrade" in raw)
    assert BinanceAdapter().parse(raw, recv_ns) == [Trade("NKN-USDT", 1633998523963000000, 0.3528, 58.0, 1, 15683430)]
    recv_ns, raw = next((ns, raw) for ns, raw in frames if "bookTicker" in raw)
    assert BinanceAdapter().parse(raw, recv_ns) == [Quote("NKN-USDT", 1633998513377805000, 0.3521, 672.0, 0.3526, 3199.0)]


def test_binance_single_trade_file_pretty_printed():
    raw = shared_file("ws/binance_spot_trade_single.json").read_text()
    d = json.loads(raw)["data"]
    [ev] = BinanceAdapter().parse(raw, 0)
    # m is true: the buyer was the maker, so the aggressor sold.
    assert ev == Trade("ETH-USDT", 1639351062243000000, 4149.74, 0.4387, -1, 705291099)
    assert (ev.trade_id, ev.ts_ns) == (d["t"], d["T"] * 1_000_000)


def test_binance_errors_are_named():
    a = BinanceAdapter()
    with pytest.raises(ParseError, match="undecodable"):
        a.parse("{not json", 0)
    bad_symbol = '{"stream":"foobar@aggTrade","data":{"e":"aggTrade","s":"FOOBAR","a":1,"p":"1","q":"1","T":1,"m":false}}'
    with pytest.raises(UnknownSymbolError, match="FOOBAR"):
        a.parse(bad_symbol, 0)
    missing_px = '{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"q":"1","T":1,"m":false}}'
    with pytest.raises(ParseError, match="missing"):
        a.parse(missing_px, 0)
    with pytest.raises(ParseError, match="does not fit stream"):
        a.parse('{"stream":"btcusdt@trade","data":{"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":false}}', 0)
    with pytest.raises(ParseError, match="error reply"):
        a.parse('{"error":{"code":2,"msg":"Invalid request"},"id":1}', 0)
    assert a.parse('{"result":null,"id":1}', 0) == [] and a.control_frames == 1
    mapped = BinanceAdapter({"ETHUSDT": "ETH-USDT"})
    with pytest.raises(UnknownSymbolError, match="not in the configured"):
        mapped.parse(bad_symbol.replace("FOOBAR", "BTCUSDT"), 0)


def test_binance_symbols_and_subscribe():
    a = BinanceAdapter()
    assert [a.normalize_symbol(s) for s in ("NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR", "BTCTUSD", "USDTTRY")] == [
        "NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR", "BTC-TUSD", "USDT-TRY"]
    with pytest.raises(UnknownSymbolError):
        a.normalize_symbol("USDT")
    [sub] = a.subscribe(["BTC-USDT", "ETH-BTC"])
    assert json.loads(sub) == {"method": "SUBSCRIBE", "id": 1,
                               "params": ["btcusdt@trade", "btcusdt@bookTicker", "ethbtc@trade", "ethbtc@bookTicker"]}


# --- Coinbase ----------------------------------------------------------------------------------

def test_coinbase_every_recorded_frame_normalizes_or_is_named():
    frames = _frames("ws/coinbase.ws.txt")
    types = Counter(json.loads(raw)["type"] for _, raw in frames)
    assert (types["match"], types["last_match"], types["ticker"]) == (97, 10, 107)  # README counts, verified
    events, control, errors = _replay(CoinbaseAdapter(), frames)
    assert sum(isinstance(e, Trade) for _, _, e in events) == types["match"] + types["last_match"]
    assert sum(isinstance(e, Quote) for _, _, e in events) == types["ticker"]
    assert control == types["subscriptions"]
    assert set(errors) == {UnknownChannelError}
    assert len(errors[UnknownChannelError]) == types["l2update"] + types["snapshot"]
    assert sum("'l2update'" in m for m in errors[UnknownChannelError]) == types["l2update"]
    assert len(events) + control + len(errors[UnknownChannelError]) == len(frames)


def test_coinbase_events_match_raw_fields():
    events = _replay(CoinbaseAdapter(), _frames("ws/coinbase.ws.txt"))[0]
    for recv_ns, raw, ev in events:
        d = json.loads(raw)
        assert ev.symbol == d["product_id"]
        if isinstance(ev, Trade):
            # Coinbase's side is the maker's: a maker sell means the aggressor bought.
            assert ev.side == {"sell": 1, "buy": -1}[d["side"]]
            assert (ev.ts_ns, ev.px, ev.qty, ev.trade_id) == (_iso_ns(d["time"]), float(d["price"]),
                                                              float(d["size"]), d["trade_id"])
        else:
            # The 2021 ticker carries no top-of-book sizes.
            assert "best_bid_size" not in d and (ev.bid_qty, ev.ask_qty) == (0.0, 0.0)
            assert (ev.ts_ns, ev.bid_px, ev.ask_px) == (_iso_ns(d["time"]), float(d["best_bid"]), float(d["best_ask"]))


def test_coinbase_golden_match():
    recv_ns, raw = next((ns, raw) for ns, raw in _frames("ws/coinbase.ws.txt") if '"trade_id":280232,' in raw)
    assert CoinbaseAdapter().parse(raw, recv_ns) == [Trade("SKL-BTC", 1618677817089723000, 0.00001305, 985.0, 1, 280232)]


def test_coinbase_errors_are_named():
    a = CoinbaseAdapter()
    with pytest.raises(ParseError, match="Failed to subscribe"):
        a.parse('{"type":"error","message":"Failed to subscribe","reason":"BTC-XXX is not a valid product"}', 0)
    with pytest.raises(UnknownChannelError, match="'done'"):
        a.parse('{"type":"done","product_id":"BTC-USD"}', 0)
    with pytest.raises(ParseError, match="missing or bad"):
        a.parse('{"type":"match","trade_id":1,"side":"sell","product_id":"BTC-USD","time":"2021-04-17T16:43:37Z"}', 0)
    with pytest.raises(UnknownSymbolError):
        a.parse('{"type":"match","trade_id":1,"side":"sell","size":"1","price":"1","product_id":"BTCUSD",'
                '"time":"2021-04-17T16:43:37Z"}', 0)
    with pytest.raises(ParseError, match="ISO-8601"):
        a.parse('{"type":"match","trade_id":1,"side":"sell","size":"1","price":"1","product_id":"BTC-USD",'
                '"time":"yesterday"}', 0)
    [sub] = a.subscribe(["BTC-USD"])
    assert json.loads(sub) == {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["matches", "ticker"]}


def test_iso_time_parser_exact():
    iso = IsoTimeParser()
    for text in ("2021-04-17T16:43:37.089723Z", "2021-04-17T16:43:37.089723Z", "2021-04-17T16:43:37Z",
                 "2021-04-17T16:43:37.5Z"):
        assert iso(text) == _iso_ns(text)
    assert iso("2021-04-17T18:43:37.123456789+02:00") == 1618677817123456789
    for bad in ("2021-04-17T16:43:37", "2021-04-17T16:43:37.08_72Z", "2021-04-17 16:43:37Z", ""):
        with pytest.raises(ParseError):
            iso(bad)


# --- Kraken WS ---------------------------------------------------------------------------------

def _kraken_counts(frames):
    arrays, trades, events = Counter(), 0, Counter()
    for _, raw in frames:
        msg = json.loads(raw)
        if isinstance(msg, list):
            arrays[msg[-2]] += 1
            trades += len(msg[1]) if msg[-2] == "trade" else 0
        else:
            events[msg["event"]] += 1
    return arrays, trades, events


def test_kraken_trade_every_recorded_frame():
    frames = _frames("ws/kraken_trade.ws.txt")
    arrays, n_trades, events = _kraken_counts(frames)
    assert arrays == {"trade": 8} and n_trades == 10  # verified against the file
    adapter = KrakenAdapter()
    parsed, control, errors = _replay(adapter, frames)
    assert errors == {}
    assert len(parsed) == n_trades
    assert control == sum(events.values()) == len(frames) - arrays["trade"]
    for recv_ns, raw, ev in parsed:
        msg = json.loads(raw)
        rows = msg[1]
        row = next(r for r in rows if _ns(r[2]) == ev.ts_ns and float(r[0]) == ev.px)
        assert ev.symbol == {"XMR/USD": "XMR-USD", "SC/EUR": "SC-EUR"}[msg[3]]
        assert (ev.qty, ev.side) == (float(row[1]), {"b": 1, "s": -1}[row[3]])
    ids = [ev.trade_id for _, _, ev in parsed]
    assert len(set(ids)) == len(ids) and all(0 <= i < 2**63 for i in ids)
    # Derived ids are deterministic: a second adapter (another region, a restart) gets the same.
    assert [ev.trade_id for _, _, ev in _replay(KrakenAdapter(), frames)[0]] == ids


def test_kraken_golden_two_trade_frame():
    recv_ns, raw = next((ns, raw) for ns, raw in _frames("ws/kraken_trade.ws.txt") if "1618678150.826417" in raw)
    first, second = KrakenAdapter().parse(raw, recv_ns)
    assert first[:5] == ("XMR-USD", 1618678150826417000, 354.04, 0.28245396, -1)
    assert second[:5] == ("XMR-USD", 1618678150827816000, 353.81, 1.71754604, -1)


def test_kraken_ticker_every_recorded_frame():
    frames = _frames("ws/kraken_ticker.ws.txt")
    arrays, _, events = _kraken_counts(frames)
    assert arrays == {"ticker": 18}  # verified against the file
    parsed, control, errors = _replay(KrakenAdapter(), frames)
    assert errors == {} and control == sum(events.values())
    assert len(parsed) == arrays["ticker"]
    for recv_ns, raw, ev in parsed:
        t = json.loads(raw)[1]
        # A ticker has no exchange time: the receive time stands in.
        assert ev == Quote(ev.symbol, recv_ns, float(t["b"][0]), float(t["b"][2]), float(t["a"][0]), float(t["a"][2]))
    assert parsed[0][2] == Quote("WAVES-EUR", 1618678132949649800, 13.2329, 185.18432037, 13.2539, 35.72892241)


def test_kraken_book_frames_are_unknown_channels():
    frames = _frames("ws/kraken_book.ws.txt")
    arrays, _, events = _kraken_counts(frames)
    parsed, control, errors = _replay(KrakenAdapter(), frames)
    assert parsed == [] and control == sum(events.values())
    assert set(errors) == {UnknownChannelError}
    assert len(errors[UnknownChannelError]) == sum(arrays.values())
    assert all("'book-1000'" in m for m in errors[UnknownChannelError])


def test_kraken_errors_and_symbols():
    a = KrakenAdapter()
    with pytest.raises(ParseError, match="Currency pair not supported"):
        a.parse('{"errorMessage":"Currency pair not supported XBT/XXX","event":"subscriptionStatus",'
                '"pair":"XBT/XXX","status":"error","subscription":{"name":"trade"}}', 0)
    with pytest.raises(UnknownChannelError, match="'ownTrades'"):
        a.parse('{"event":"ownTrades"}', 0)
    with pytest.raises(ParseError, match="side"):
        a.parse('[1,[["1.0","1.0","1618678142.557535","x","l",""]],"trade","XBT/USD"]', 0)
    with pytest.raises(ParseError, match="decimal time"):
        a.parse('[1,[["1.0","1.0","16186781e2","b","l",""]],"trade","XBT/USD"]', 0)
    with pytest.raises(UnknownSymbolError):
        a.parse('[1,[["1.0","1.0","1618678142.557535","b","l",""]],"trade","XBTUSD"]', 0)
    assert [a.normalize_symbol(p) for p in ("XBT/USD", "XDG/EUR", "ETH/XBT")] == ["BTC-USD", "DOGE-EUR", "ETH-BTC"]
    subs = [json.loads(s) for s in a.subscribe(["BTC-USD", "DOGE-USD"])]
    assert subs == [{"event": "subscribe", "pair": ["XBT/USD", "XDG/USD"], "subscription": {"name": ch}}
                    for ch in ("trade", "ticker")]


def test_kraken_rest_error_and_symbols():
    a = KrakenRestAdapter()
    with pytest.raises(ParseError, match="EQuery:Unknown asset pair"):
        a.parse('{"error":["EQuery:Unknown asset pair"]}', 0)
    assert a.parse('{"error":[],"result":{"XBTUSDT":[],"last":"0"}}', 0) == [] and a.control_frames == 1
    assert [a.normalize_symbol(p) for p in ("XBTUSDT", "XXBTZUSD", "XETHXXBT", "SOLEUR")] == [
        "BTC-USDT", "BTC-USD", "ETH-BTC", "SOL-EUR"]
    assert a.venue == "kraken" and a.subscribe(["BTC-USD"]) == []


def _kraken_rest_expected(text: str) -> list[Trade]:
    """Trades of a Kraken REST response worked out independently: json + Decimal, row by row."""
    out = []
    for pair, rows in json.loads(text, parse_float=Decimal, parse_int=Decimal)["result"].items():
        if pair == "last":
            continue
        sym = KrakenRestAdapter().normalize_symbol(pair)
        for px, qty, time_s, side, _, _, tid in rows:
            out.append(Trade(sym, int(Decimal(time_s) * 1_000_000_000), float(px), float(qty),
                             {"b": 1, "s": -1}[side], int(tid)))
    return out


def test_kraken_rest_recorded_response_is_one_exact_block():
    text = shared_file("ticks/kraken_xbtusdt_trades_rest.json").read_text()
    events = KrakenRestAdapter().parse(text, 0)
    [block] = events.items
    assert isinstance(events, FrameEvents) and isinstance(block, TradeColumns) and len(block) == len(events) == 1000
    assert [c.dtype.str for c in block.columns()] == ["<i8", "<f8", "<f8", "|i1", "<i8"]
    expected = _kraken_rest_expected(text)
    # Compared as values (plain ints and floats per event), not by container type.
    assert list(events) == events == expected
    assert [tuple(map(type, ev)) for ev in events[:2]] == [(str, int, float, float, int, int)] * 2
    assert events[0] == Trade("BTC-USDT", 1762795433971744500, 105433.6, 0.00027625, 1, 10218208)


@pytest.mark.parametrize("time_text", ["1762795433.9717445", "1762795433", "1.7627954339717445e9",
                                       "1762795433.12345678912", "0.5", '"1762795433.25"'])
def test_kraken_rest_times_are_exact_on_both_paths(time_text):
    # Plain decimals take the columnar path; an integer, an exponent or a quoted time the per-row one.
    template = ('{"error":[],"result":{"XBTUSDT":[["105433.6","0.5",%s,"s","l","",7],'
                '["105433.7","1.5",1762795434.1,"b","m","",8]],"last":"1"}}')
    expected = _kraken_rest_expected(template % ('"%s"' % time_text.strip('"')))
    assert list(KrakenRestAdapter().parse(template % time_text, 0)) == expected


def test_kraken_rest_bad_rows_raise_like_the_per_row_path():
    good = ["1.0", "1.0", 1762795433.5, "b", "l", "", 1]
    a = KrakenRestAdapter()
    with pytest.raises(ParseError, match="XBTUSDT row 1: side 'x' is not 'b' or 's'"):
        a.parse(json.dumps({"error": [], "result": {"XBTUSDT": [good, [*good[:3], "x", *good[4:]]]}}), 0)
    with pytest.raises(ParseError, match="kraken_rest XBTUSDT"):
        a.parse(json.dumps({"error": [], "result": {"XBTUSDT": [good, good[:5]]}}), 0)
    with pytest.raises(UnknownSymbolError):
        a.parse(json.dumps({"error": [], "result": {"FOO": [good]}}), 0)
    two = a.parse(json.dumps({"error": [], "result": {"XBTUSDT": [good], "XETHZUSD": [good, good]}}), 0)
    assert [(e.symbol, len(e) if isinstance(e, TradeColumns) else 1) for e in two.items] == [("BTC-USDT", 1),
                                                                                           ("ETH-USD", 2)]


def test_decimals_to_ns_matches_decimal_to_ns():
    texts = ["1762795433.9717445", "0.5", "8999999999.999999999", "12.0123456789", "1618678142.557535", "7.0"]
    assert decimals_to_ns([t.encode() for t in texts]).tolist() == [decimal_to_ns(t) for t in texts]
    assert decimals_to_ns([]).tolist() == []
    for odd in ("1762795433", "1e9", "-1.5", '"1.5"', "9000000000.5", "12345678901.5", "1.2.3"):
        assert decimals_to_ns([b"1.5", odd.encode()]) is None, odd


def test_tardis_adapter_errors():
    a = TardisAdapter()
    with pytest.raises(ParseError, match="fields"):
        a.parse("bitmex,XBTUSD,1", 0)
    with pytest.raises(ParseError, match="exchange 'deribit'"):
        a.parse("deribit,XBTUSD,1,1,5,buy,1.0,1", 0)
    with pytest.raises(UnknownSymbolError, match="ADAUSD"):
        a.parse("bitmex,ADAUSD,1,1,5,buy,1.0,1", 0)
    with pytest.raises(ParseError):
        a.parse("bitmex,XBTUSD,notatime,1,5,buy,1.0,1", 0)
    assert a.parse("bitmex,XBTUSD,1000,2000,42,unknown,1.5,3", 0) == [Trade("BTC-USD-PERP", 1_000_000, 1.5, 3.0, 0, 42)]
    with pytest.raises(ParseError, match="missing"):
        TardisAdapter(columns=("exchange", "symbol"))


# --- registry ----------------------------------------------------------------------------------

def test_adapter_table_and_urls():
    assert set(ADAPTERS) == {"binance", "coinbase", "kraken", "kraken_rest", "tardis", "sim"}
    for relpath, cls in (("ws/binance_spot.ws.txt", BinanceAdapter), ("ws/coinbase.ws.txt", CoinbaseAdapter),
                         ("ws/kraken_trade.ws.txt", KrakenAdapter)):
        assert adapter_for_url(open_recorded(shared_file(relpath)).url) is cls
    for cls in ADAPTERS.values():
        assert adapter_for_url(cls.url) is cls
        assert set(cls.channels.values()) <= {"trade", "quote"}
    with pytest.raises(ConfigError, match="www.bitmex.com"):
        adapter_for_url("wss://www.bitmex.com/realtime")


def test_decimal_to_ns_exact():
    assert decimal_to_ns("1618678142.557535") == 1618678142557535000
    assert decimal_to_ns("1762795433.9717445") == 1762795433971744500
    assert decimal_to_ns("1583020803145000", -6) == 1583020803145000000
    assert decimal_to_ns("1.0123456789") == 1012345678
    for bad in ("-1.5", "1e9", "", "1.2.3"):
        with pytest.raises(ParseError):
            decimal_to_ns(bad)


# --- validation --------------------------------------------------------------------------------

def _validation_cases() -> tuple[list[tuple[Trade | Quote, str]], list[Trade | Quote]]:
    """([(bad event, what its reason says)], good events), for recv_ns 0 and a 5 s clock limit."""
    t = Trade("BTC-USD", 1_000, 100.0, 1.0, 1, 1)
    q = Quote("BTC-USD", 1_000, 99.0, 1.0, 100.0, 2.0)
    cases = [
        (t._replace(px=0.0), "bad price"),
        (t._replace(px=math.nan), "bad price"),
        (t._replace(px=math.inf), "bad price"),
        (t._replace(qty=-1.0), "bad size"),
        (t._replace(qty=math.nan), "bad size"),
        (q._replace(bid_px=101.0), "crossed quote"),
        (q._replace(ask_px=-1.0), "bad price"),
        (q._replace(bid_qty=-0.5), "bad size"),
        (t._replace(ts_ns=10 * 1_000_000_000), "exchange time off"),
        (q._replace(ts_ns=-10 * 1_000_000_000), "exchange time off"),
    ]
    good_events = [t, q, q._replace(bid_px=100.0), q._replace(bid_qty=0.0, ask_qty=0.0)]  # locked, sizeless
    return cases, good_events


def test_validate_rejects_with_reasons():
    cases, good_events = _validation_cases()
    t = good_events[0]
    good, bad = validate([ev for ev, _ in cases] + good_events, recv_ns=0, max_skew_ns=5 * 1_000_000_000)
    assert good == good_events
    assert [ev for ev, _ in bad] == [ev for ev, _ in cases]
    for (_, reason), (_, expected) in zip(bad, cases):
        assert expected in reason
    # Historical files skip the clock check only.
    good, bad = validate([t._replace(ts_ns=10**18), t._replace(px=0.0)], recv_ns=0, max_skew_ns=None)
    assert len(good) == 1 and len(bad) == 1


def test_process_frame_of_one_event_gives_the_verdicts_and_reasons_of_validate():
    # One-event frames take a copy of validate()'s test inlined in process_frame.
    class OneEvent(CoinbaseAdapter):
        def parse(self, raw, recv_ns):
            return [self.event]

    adapter = OneEvent()
    cases, good_events = _validation_cases()
    for skew in (5 * 1_000_000_000, None):
        for ev in [ev for ev, _ in cases] + good_events:
            adapter.event = ev
            res = process_frame(adapter, "{}", 0, skew)
            good, bad = validate([ev], 0, skew)
            assert res.events == good
            assert [dl.reason for dl in res.dead_letters] == [f"ValidationError: {reason}" for _, reason in bad]
    adapter.event = ("not", "an event")
    with pytest.raises(ValueError):  # an adapter bug: the collector dead-letters it as an internal error
        process_frame(adapter, "{}", 0, None)


def test_process_frame_turns_failures_into_dead_letters():
    a = CoinbaseAdapter()
    bad = process_frame(a, '{"type":"l2update","product_id":"BTC-USD"}', 5, None)
    assert bad.events == [] and len(bad.dead_letters) == 1
    dl = bad.dead_letters[0]
    assert (dl.stage, dl.venue, dl.recv_ns) == ("edge", "coinbase", 5)
    assert dl.reason.startswith("UnknownChannelError:") and dl.raw.startswith(b'{"type":"l2update"')
    crossed = ('{"type":"ticker","product_id":"BTC-USD","best_bid":"101","best_ask":"100",'
               '"time":"2021-04-17T16:43:37Z"}')
    res = process_frame(a, crossed, 1618677817000000000, 10**9)
    assert res.events == [] and res.dead_letters[0].symbol == "BTC-USD"
    assert "crossed quote" in res.dead_letters[0].reason and "Quote(" in res.dead_letters[0].detail
    assert process_frame(a, '{"type":"subscriptions","channels":[]}', 1, None) == ([], [])


def test_validate_columns_applies_the_same_rules_and_reasons():
    t = Trade("BTC-USDT", 1_000, 100.0, 1.0, 1, 1)
    rows = [t, t._replace(px=0.0, trade_id=2), t._replace(qty=math.nan, trade_id=3), t._replace(trade_id=4),
            t._replace(px=math.inf, trade_id=5), t._replace(ts_ns=10 * 1_000_000_000, trade_id=6),
            t._replace(qty=-1.0, trade_id=7), t._replace(ts_ns=-4 * 1_000_000_000, trade_id=8)]
    block = TradeColumns.from_events("BTC-USDT", rows)
    for skew in (5 * 1_000_000_000, None):
        good, bad = validate_columns(block, 0, skew)
        want_good, want_bad = validate(rows, 0, skew)
        # repr: a NaN is not equal to itself.
        assert good.events() == want_good and repr(bad) == repr(want_bad) and len(bad) == (5 if skew else 4)
    assert validate_columns(TradeColumns.from_events("BTC-USDT", [t]), 0, None)[1] == []
    good, bad = validate_columns(TradeColumns.from_events("BTC-USDT", rows[1:3]), 0, None)
    assert good is None and len(bad) == 2


def test_process_frame_splits_a_block_into_good_rows_and_dead_letters():
    rows = [["105433.6", "0.5", 1762795433.5, "b", "l", "", 1], ["-3.0", "0.5", 1762795433.6, "s", "l", "", 2],
            ["105433.8", "0.5", 1762795433.7, "s", "l", "", 3]]
    text = json.dumps({"error": [], "result": {"XBTUSDT": rows, "last": "1"}})
    res = process_frame(KrakenRestAdapter(), text, 5, None)
    expected = _kraken_rest_expected(text)
    assert res.events == [expected[0], expected[2]] and len(res.events) == 2
    [dl] = res.dead_letters
    assert dl.reason == "ValidationError: bad price: px=-3.0 (must be positive and finite)"
    assert (dl.symbol, dl.detail, dl.raw, dl.recv_ns) == ("BTC-USDT", repr(expected[1]), text.encode(), 5)


# --- sim ---------------------------------------------------------------------------------------

def _sim_events(venue: SimVenue, n: int):
    out = []
    for i in range(n):
        raw = venue.trade_frame(1_700_000_000_000_000_000 + i) if i % 3 else venue.quote_frame(i)
        out.extend(venue.parse(raw, 0))
    return out


def test_sim_is_seeded_and_valid():
    a, b, c = SimVenue(seed=3), SimVenue(seed=3), SimVenue(seed=4)
    ev_a, ev_b = _sim_events(a, 600), _sim_events(b, 600)
    assert ev_a == ev_b and ev_a != _sim_events(c, 600)
    assert {e.symbol for e in ev_a} == {"BTC-USD", "ETH-USD", "SOL-USD"}
    good, bad = validate(ev_a, 0, None)
    assert bad == [] and len(good) == 600
    trades = [e for e in ev_a if isinstance(e, Trade)]
    for sym in ("BTC-USD", "ETH-USD"):
        ids = [t.trade_id for t in trades if t.symbol == sym]
        assert ids == list(range(1, len(ids) + 1))
    assert {t.side for t in trades} == {1, -1}


def test_sim_frames_are_paced_async_and_follow_config():
    cfg = SimConfig(symbols=["BTC-USD", "DOGE-USD"], trades_per_s=4000.0, quotes_per_s=1000.0, seed=11)
    venue = SimVenue.from_config(cfg)

    async def take(n):
        out = []
        async for recv_ns, raw in venue.frames():
            out.append((recv_ns, raw))
            if len(out) == n:
                return out

    frames = asyncio.run(asyncio.wait_for(take(400), timeout=30))
    events = [ev for recv_ns, raw in frames for ev in venue.parse(raw, recv_ns)]
    assert [ns for ns, _ in frames] == sorted(ns for ns, _ in frames)
    assert all(ev.ts_ns == ns for (ns, _), ev in zip(frames, events))
    assert {ev.symbol for ev in events} == {"BTC-USD", "DOGE-USD"}
    # Seeded Poisson arrivals at 4:1 give about 80% trades whatever the wall clock does.
    share = sum(isinstance(e, Trade) for e in events) / len(events)
    assert 0.7 < share < 0.9


def test_sim_errors():
    v = SimVenue()
    with pytest.raises(UnknownChannelError, match="'book'"):
        v.parse('{"type":"book","symbol":"BTC-USD"}', 0)
    with pytest.raises(UnknownSymbolError):
        v.parse('{"type":"trade","symbol":"XRP-USD","ts_ns":1,"px":1.0,"qty":1.0,"side":"buy","id":1}', 0)
    with pytest.raises(ParseError, match="bad frame"):
        v.parse('{"type":"trade","symbol":"BTC-USD"}', 0)
    with pytest.raises(ValueError):
        SimVenue(trades_per_s=0)
