"""BarBuilder against an independent per-trade aggregation, on real Kraken trades."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import msgspec
import pytest

from core import bars as bars_module
from core.bars import BarBuilder, LateTrades
from core.errors import ConfigError, SchemaError, ValidationError
from core.schema import TIMEFRAME_NS, Bar, TradeBatch
from tests.conftest import shared_file

ALL_TF = list(TIMEFRAME_NS)
SEC = 1_000_000_000
VENUE, SYMBOL = "kraken", "BTC-USDT"
FLOAT_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "buy_volume", "sell_volume")
EXACT_FIELDS = ("venue", "symbol", "tf", "start_ns", "n_trades", "last_recv_ns")


def kraken_trades() -> list[tuple[int, int, float, float, int, int]]:
    """The recorded Kraken REST trades as (ts_ns, recv_ns, px, qty, side, trade_id), arrival order.

    The REST response has no receive time; recv_ns is the event time plus a deterministic delay
    that is not monotonic, so that taking the max per bar is actually exercised.
    """
    doc = json.loads(shared_file("ticks/kraken_xbtusdt_trades_rest.json").read_text(), parse_float=Decimal)
    out = []
    for price, volume, time_s, side, _ordertype, _misc, trade_id in doc["result"]["XBTUSDT"]:
        ts_ns = int(time_s * 10**9)  # Decimal: exact, no float rounding
        out.append((ts_ns, ts_ns + (trade_id * 7919 % 1000) * 1000, float(price), float(volume),
                    {"b": 1, "s": -1}[side], trade_id))
    assert len(out) == 1000
    return out


def looped(trades, times: int):
    """The trades repeated ``times`` times, each copy shifted after the previous one."""
    span = trades[-1][0] - trades[0][0] + SEC
    return [(t[0] + i * span, t[1] + i * span, *t[2:5], t[5] + i * 10**6) for i in range(times) for t in trades]


def locally_shuffled(trades, block: int = 5):
    """Arrival order reversed within blocks: out-of-order event times, as from a venue with jitter."""
    out = []
    for i in range(0, len(trades), block):
        out.extend(reversed(trades[i:i + block]))
    return out


def batch(trades, venue=VENUE, symbol=SYMBOL) -> TradeBatch:
    cols = list(zip(*trades)) if trades else [[]] * 6
    return TradeBatch.from_columns(venue, symbol, ts_ns=cols[0], recv_ns=cols[1], px=cols[2], qty=cols[3],
                                   side=cols[4], trade_id=cols[5])


def run(trades, chunk: int, timeframes=ALL_TF, lateness_ns=SEC, venue=VENUE, symbol=SYMBOL):
    """BarBuilder over the trades cut into batches of ``chunk``; returns (bars in output order, builder)."""
    builder = BarBuilder(timeframes, lateness_ns)
    bars = []
    for i in range(0, len(trades), chunk):
        bars += builder.update(batch(trades[i:i + chunk], venue, symbol))
    bars += builder.flush()
    return bars, builder


def reference(series, timeframes=ALL_TF, lateness_ns=SEC):
    """Plain-Python aggregation, one trade at a time, written independently of core.bars.

    Args:
        series: list of ((venue, symbol), trades) processed in this order.

    Returns:
        (bars keyed by (venue, symbol, tf, start_ns), late trade ids keyed by (venue, tf)).
    """
    acc: dict[tuple, dict] = {}
    late: dict[tuple, list[int]] = {}
    max_ts: dict[tuple, int] = {}
    for (venue, symbol), trades in series:
        for ts, recv, px, qty, side, tid in trades:
            max_ts[venue, symbol] = max(max_ts.get((venue, symbol), ts), ts)
            watermark = max_ts[venue, symbol] - lateness_ns
            for tf in timeframes:
                tf_ns = TIMEFRAME_NS[tf]
                start = (ts // tf_ns) * tf_ns
                if start + tf_ns <= watermark:
                    late.setdefault((venue, tf), []).append(tid)
                    continue
                b = acc.get((venue, symbol, tf, start))
                if b is None:
                    acc[venue, symbol, tf, start] = dict(
                        open_ts=ts, open=px, close_ts=ts, close=px, high=px, low=px, volume=qty, pxq=px * qty,
                        n=1, buy=qty if side == 1 else 0.0, sell=qty if side == -1 else 0.0, recv=recv)
                    continue
                if ts < b["open_ts"]:
                    b["open_ts"], b["open"] = ts, px
                if ts >= b["close_ts"]:
                    b["close_ts"], b["close"] = ts, px
                b["high"] = max(b["high"], px)
                b["low"] = min(b["low"], px)
                b["volume"] += qty
                b["pxq"] += px * qty
                b["n"] += 1
                if side == 1:
                    b["buy"] += qty
                elif side == -1:
                    b["sell"] += qty
                b["recv"] = max(b["recv"], recv)
    bars = {
        key: Bar(key[0], key[1], key[2], key[3], b["open"], b["high"], b["low"], b["close"], b["volume"],
                 b["pxq"] / b["volume"] if b["volume"] > 0 else b["close"], b["n"], b["buy"], b["sell"], b["recv"])
        for key, b in acc.items()
    }
    return bars, late


def assert_bars_match(bars: list[Bar], expected: dict[tuple, Bar]) -> None:
    got = {(b.venue, b.symbol, b.tf, b.start_ns): b for b in bars}
    assert len(got) == len(bars), "a bar was emitted twice"
    assert got.keys() == expected.keys()
    for key, bar in got.items():
        want = expected[key]
        for name in EXACT_FIELDS:
            assert getattr(bar, name) == getattr(want, name), (key, name)
        for name in FLOAT_FIELDS:
            assert math.isclose(getattr(bar, name), getattr(want, name), rel_tol=1e-12, abs_tol=0.0), (key, name)


def canonical(bars: list[Bar]) -> list[Bar]:
    return sorted(bars, key=lambda b: (b.venue, b.symbol, ALL_TF.index(b.tf), b.start_ns))


@pytest.mark.parametrize("chunk", [1, 7, 500, 1000])
def test_matches_reference_on_real_trades_every_timeframe(chunk):
    trades = kraken_trades()
    bars, builder = run(trades, chunk)
    expected, late = reference([((VENUE, SYMBOL), trades)])
    assert late == {} and builder.late == {}  # the REST trades are in time order
    assert {b.tf for b in bars} == set(ALL_TF)
    assert sum(b.n_trades for b in bars if b.tf == "1h") == len(trades)
    assert_bars_match(bars, expected)


@pytest.mark.parametrize("lateness_ns", [0, SEC, 3600 * SEC])
def test_out_of_order_real_trades_match_reference_including_late_ones(lateness_ns):
    trades = locally_shuffled(kraken_trades())
    bars, builder = run(trades, 7, lateness_ns=lateness_ns)
    expected, late_ids = reference([((VENUE, SYMBOL), trades)], lateness_ns=lateness_ns)
    assert_bars_match(bars, expected)
    assert builder.late == {key: len(ids) for key, ids in late_ids.items()}
    if lateness_ns == 0:
        assert late_ids, "the shuffled data should produce late trades with no lateness allowed"
    if lateness_ns == 3600 * SEC:
        assert not late_ids


def test_late_trades_are_handed_back_per_timeframe():
    trades = locally_shuffled(kraken_trades())
    builder = BarBuilder(ALL_TF, 0)
    got: dict[tuple, list[int]] = {}
    for i in range(0, len(trades), 7):
        builder.update(batch(trades[i:i + 7]))
        for item in builder.late_trades():
            assert isinstance(item, LateTrades) and item.trades.venue == VENUE
            got.setdefault((VENUE, item.tf), []).extend(item.trades.columns()["trade_id"].tolist())
    assert builder.late_trades() == []  # taking them empties the list
    _, late_ids = reference([((VENUE, SYMBOL), trades)], lateness_ns=0)
    assert got == late_ids


@pytest.mark.parametrize("data", ["sorted", "shuffled"])
def test_chunking_does_not_change_a_single_bit(data, monkeypatch):
    monkeypatch.setattr(bars_module, "_MAX_SLICE", 1024)  # all-at-once also crosses the internal slicing
    trades = looped(kraken_trades(), 3)
    if data == "shuffled":
        trades = locally_shuffled(trades, 9)
    results = {}
    for chunk in (1, 7, 500, len(trades)):
        bars, builder = run(trades, chunk, lateness_ns=SEC // 2)
        results[chunk] = (canonical(bars), builder.late)
    first = results[1]
    assert len(first[0]) > 900
    assert bool(first[1]) == (data == "shuffled")  # late trades exercised on the shuffled data
    for chunk, result in results.items():
        assert result == first, f"chunk size {chunk} differs from chunk size 1"  # == on floats: exact


def runs_of_two_series(trades):
    """Batches of 1 to 700 trades of two series, in runs of one series (a, a, a, b, b, a, ...)."""
    other = [(t[0], t[1], t[2] * 2, *t[3:]) for t in trades]
    sizes = [1, 7, 300, 50, 700, 120]
    out, pos, i = [], {"a": 0, "b": 0}, 0
    while pos["a"] < len(trades) or pos["b"] < len(other):
        for name, source, venue in (("a", trades, VENUE), ("b", other, "coinbase")):
            for _ in range(1 + i % 3):  # run lengths 1, 2, 3
                size = sizes[i % len(sizes)]
                i += 1
                if pos[name] < len(source):
                    out.append(batch(source[pos[name]:pos[name] + size], venue=venue))
                    pos[name] += size
    return out


@pytest.mark.parametrize("data", ["busy", "shuffled"])
def test_update_many_equals_one_batch_at_a_time(data, monkeypatch):
    monkeypatch.setattr(bars_module, "_MAX_SLICE", 64)  # runs and batches cross the internal slicing
    trades = looped(kraken_trades(), 3)
    if data == "busy":  # time gaps / 1000: long runs of one bar, bars closed mid-run
        t0 = trades[0][0]
        trades = [(t0 + (t[0] - t0) // 1000, *t[1:]) for t in trades]
    else:
        trades = locally_shuffled(trades, 9)
    batches = runs_of_two_series(trades)
    one = BarBuilder(ALL_TF, SEC // 2)
    want = [(one.update(b), one.late_trades()) for b in batches]
    for group in (1, 5, len(batches)):
        many = BarBuilder(ALL_TF, SEC // 2)
        got = [result for i in range(0, len(batches), group) for result in many.update_many(batches[i:i + group])]
        # Bars, their order, their batch, and the late trades of each batch: bit for bit.
        assert msgspec.msgpack.encode(got) == msgspec.msgpack.encode(want), f"groups of {group}"
        assert many.snapshot() == one.snapshot() and many.late_trades() == []
    closing = [i for i, (bars, _) in enumerate(want) if bars]
    assert len(closing) > 10 and len(closing) < len(batches)
    assert any(late for _, late in want) == (data == "shuffled")
    for _, late in want:  # one entry per timeframe and batch, whatever the internal slicing
        tfs = [ALL_TF.index(entry.tf) for entry in late]
        assert tfs == sorted(set(tfs))


def test_update_many_refuses_all_or_nothing_with_the_error_of_the_bad_batch():
    trades = kraken_trades()
    good = [batch(trades[i:i + 100]) for i in range(0, 400, 100)]
    nan = batch([(trades[300][0], 0, float("nan"), 1.0, 1, 9)])
    builder = BarBuilder(ALL_TF, 0)
    builder.update(good[0])
    before = builder.snapshot()
    with pytest.raises(ValidationError) as in_run:
        builder.update_many([good[1], good[2], nan, good[3]])
    assert builder.snapshot() == before  # the good batches before the bad one were not applied
    with pytest.raises(ValidationError) as alone:
        builder.update(nan)
    assert str(in_run.value) == str(alone.value)
    ragged = TradeBatch(VENUE, SYMBOL, ts_ns=b"\0" * 16, recv_ns=b"\0" * 8, px=b"\0" * 16, qty=b"\0" * 16,
                        side=b"\0" * 2, trade_id=b"\0" * 16)
    with pytest.raises(SchemaError, match="recv_ns"):
        builder.update_many([good[1], ragged])
    assert builder.snapshot() == before


def test_update_returns_bars_by_timeframe_then_start():
    builder = BarBuilder(ALL_TF, 0)
    trades = kraken_trades()
    mixed = 0
    for i in range(0, len(trades), 100):
        out = builder.update(batch(trades[i:i + 100]))
        keys = [(ALL_TF.index(b.tf), b.start_ns) for b in out]
        assert keys == sorted(keys)
        mixed += len({b.tf for b in out}) > 1
    assert mixed > 0
    late = builder.update(batch([(trades[-1][0] + 10 * 3600 * SEC, 0, 1.0, 1.0, 1, 1)]))
    assert {b.tf for b in late} == set(ALL_TF)  # a trade ten hours later closes every timeframe
    assert builder.open_bar_count() == len(ALL_TF)


@pytest.mark.parametrize("cuts", [(1,), (3, 50, 97), (142, 143)])
def test_snapshot_restore_resumes_with_identical_output(cuts):
    trades = locally_shuffled(kraken_trades())
    chunks = [trades[i:i + 7] for i in range(0, len(trades), 7)]
    clean, clean_builder = run(trades, 7, lateness_ns=SEC // 4)

    builder = BarBuilder(ALL_TF, SEC // 4)
    out, late = [], []
    for i, chunk in enumerate(chunks):
        if i in cuts:  # a worker killed here resumes from its last snapshot
            builder = BarBuilder.restore(builder.snapshot())
        out += builder.update(batch(chunk))
        late += builder.late_trades()
    out += builder.flush()
    assert out == clean  # same bars, same order, exact floats
    assert builder.late == clean_builder.late and builder.late
    assert sum(len(item.trades) for item in late) == sum(clean_builder.late.values())


def test_snapshot_keeps_pending_late_trades_and_rejects_garbage():
    builder = BarBuilder(["1s"], 0)
    builder.update(batch([(5 * SEC, 0, 1.0, 1.0, 1, 1)]))
    builder.update(batch([(1 * SEC, 0, 1.0, 1.0, 1, 2)]))
    restored = BarBuilder.restore(builder.snapshot())
    assert restored.late == {(VENUE, "1s"): 1}
    assert [item.trades.columns()["trade_id"].tolist() for item in restored.late_trades()] == [[2]]
    assert repr(restored) == repr(builder)
    with pytest.raises(SchemaError):
        BarBuilder.restore(b"\x01not a snapshot")


def test_a_trade_after_its_bucket_closed_is_late_counted_returned_and_left_out():
    builder = BarBuilder(["1s", "5s"], lateness_ns=SEC)
    assert builder.update(batch([(SEC // 2, 10, 100.0, 1.0, 1, 1)])) == []
    closed = builder.update(batch([(3 * SEC, 20, 101.0, 2.0, -1, 2)]))  # watermark 2 s closes [0, 1)
    assert [(b.tf, b.start_ns, b.n_trades) for b in closed] == [("1s", 0, 1)]
    assert builder.late_trades() == []
    assert builder.update(batch([(SEC * 8 // 10, 30, 99.0, 4.0, 1, 3)])) == []  # old trade after the fact
    late = builder.late_trades()
    assert [(item.tf, item.trades.columns()["trade_id"].tolist()) for item in late] == [("1s", [3])]
    assert builder.late == {(VENUE, "1s"): 1}
    bars = {(b.tf, b.start_ns): b for b in builder.flush()}
    assert (("1s", 0)) not in bars  # emitted once already, never reopened
    five = bars["5s", 0]  # still on time for 5 s
    assert (five.n_trades, five.open, five.close, five.low, five.volume) == (3, 100.0, 101.0, 99.0, 7.0)
    assert five.buy_volume == 5.0 and five.sell_volume == 2.0 and five.last_recv_ns == 30


def test_out_of_order_trades_within_lateness_land_in_their_bar():
    builder = BarBuilder(["1s"], lateness_ns=SEC)
    t = [(200_000_000, 1, 10.0, 1.0, 1, 1), (1_500_000_000, 2, 20.0, 1.0, 1, 2),
         (700_000_000, 3, 12.0, 1.0, -1, 3), (100_000_000, 4, 9.0, 1.0, 1, 4)]
    assert builder.update(batch(t[:2])) == []
    assert builder.update(batch(t[2:])) == []  # watermark 0.5 s: [0, 1) still open
    assert builder.late == {}
    first = builder.update(batch([(2_100_000_000, 5, 30.0, 1.0, 1, 5)]))
    assert len(first) == 1
    bar = first[0]
    # open is the earliest by event time (arrived last), close the latest by event time
    assert (bar.start_ns, bar.n_trades, bar.open, bar.close, bar.high, bar.low) == (0, 3, 9.0, 12.0, 12.0, 9.0)
    assert bar.last_recv_ns == 4 and bar.sell_volume == 1.0 and bar.buy_volume == 2.0


def test_equal_event_times_break_ties_by_arrival_across_batches():
    builder = BarBuilder(["1s"], 0)
    builder.update(batch([(100, 0, 1.0, 1.0, 1, 1), (100, 0, 2.0, 1.0, 1, 2)]))
    builder.update(batch([(100, 0, 3.0, 1.0, 1, 3), (50, 0, 4.0, 1.0, 1, 4), (50, 0, 5.0, 1.0, 1, 5)]))
    (bar,) = builder.flush()
    assert (bar.open, bar.close) == (4.0, 3.0)


def test_series_are_independent():
    trades = kraken_trades()
    day = 86400 * SEC
    other = [(t[0] - day, t[1] - day, t[2] / 2, t[3] * 3, -t[4], t[5]) for t in trades]
    eth = [(t[0] + 7 * SEC, t[1], t[2] / 30, t[3], t[4], t[5]) for t in trades]
    series = [(("kraken", "BTC-USDT"), trades), (("coinbase", "BTC-USD"), other), (("kraken", "ETH-USDT"), eth)]

    builder = BarBuilder(ALL_TF, SEC)
    bars = []
    for i in range(0, len(trades), 50):  # interleave: a day-old series must not be made late
        for (venue, symbol), t in series:
            bars += builder.update(batch(t[i:i + 50], venue, symbol))
    bars += builder.flush()
    assert builder.late == {}
    expected, _ = reference(series)
    assert_bars_match(bars, expected)
    for (venue, symbol), t in series:
        solo, _ = run(t, 50, venue=venue, symbol=symbol)
        assert canonical([b for b in bars if (b.venue, b.symbol) == (venue, symbol)]) == canonical(solo)
    assert builder.watermark_ns("coinbase", "BTC-USD") == trades[-1][0] - day - SEC
    assert builder.watermark_ns("nope", "X") is None


def test_bad_input_is_rejected_before_any_state_changes():
    builder = BarBuilder(["1s"], 0)
    builder.update(batch([(SEC // 2, 0, 1.0, 1.0, 1, 1)]))
    before = builder.snapshot()
    for bad in ([(SEC, 0, float("nan"), 1.0, 1, 2)], [(SEC, 0, 1.0, -1.0, 1, 2)], [(SEC, 0, 1.0, float("inf"), 1, 2)]):
        with pytest.raises(ValidationError, match="finite"):
            builder.update(batch(bad))
        assert builder.snapshot() == before
    assert builder.update(batch([])) == []
    with pytest.raises(ConfigError, match="unknown timeframes"):
        BarBuilder(["2m"])
    with pytest.raises(ConfigError):
        BarBuilder(["1s"], -1)


def test_zero_volume_bar_has_close_as_vwap():
    builder = BarBuilder(["1s"], 0)
    builder.update(batch([(0, 0, 5.0, 0.0, 0, 1), (1, 0, 6.0, 0.0, 0, 2)]))
    (bar,) = builder.flush()
    assert (bar.volume, bar.vwap, bar.buy_volume, bar.sell_volume) == (0.0, 6.0, 0.0, 0.0)
