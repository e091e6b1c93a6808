"""Paper portfolio: hand-computed P&L, UTC day roll, mixed sources, snapshots, vectorized fills."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import numpy as np
import pytest

from core.errors import SchemaError, ValidationError
from core.portfolio import NS_PER_DAY, Fill, Portfolio
from core.risk import RiskSettings, Veto, size, stops

BTC = ("kraken", "BTC-USD")
ETH = ("kraken", "ETH-USD")
SOL = ("binance", "SOL-USDT")
HOUR = 3_600 * 1_000_000_000
# 2026-01-05 00:00:00 UTC
T0 = int(datetime(2026, 1, 5, tzinfo=timezone.utc).timestamp()) * 1_000_000_000


def position(p: Portfolio, key) -> dict:
    return next(row for row in p.positions() if (row["venue"], row["symbol"]) == key)


def assert_books_balance(p: Portfolio) -> None:
    """Average-cost accounting: every quote unit of equity change is realized or unrealized."""
    assert p.equity - p.equity_start == pytest.approx(p.realized + p.unrealized, abs=1e-6)


def test_average_price_and_partial_close_by_hand():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC], [2.0], [100.0], T0, "signal")
    p.apply_fills([BTC], [2.0], [110.0], T0 + 1, "signal")
    # (2*100 + 2*110) / 4 = 105
    row = position(p, BTC)
    assert (row["qty"], row["avg_px"], row["realized"]) == (4.0, 105.0, 0.0)
    p.apply_fills([BTC], [-3.0], [120.0], T0 + 2, "signal")
    # 3 * (120 - 105) = 45 realized; 1 left at 105, marked at the fill price 120: 15 unrealized.
    row = position(p, BTC)
    assert (row["qty"], row["avg_px"], row["realized"], row["unrealized"]) == (1.0, 105.0, 45.0, 15.0)
    # cash: 100_000 - 200 - 220 + 360 = 99_940; equity 99_940 + 1*120 = 100_060.
    assert p.cash == 99_940.0 and p.equity == 100_060.0
    assert (p.realized, p.unrealized, p.gross_exposure, p.net_exposure) == (45.0, 15.0, 120.0, 120.0)
    assert_books_balance(p)


def test_flip_and_short_pnl_by_hand():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC, BTC, BTC], [2.0, 2.0, -3.0], [100.0, 110.0, 120.0], T0, "signal")  # long 1 @ 105
    # Sell 3 @ 100 with 1 held: close 1 at 100 (realized -5), open short 2 at 100.
    p.apply_fills([BTC], [-3.0], [100.0], T0 + 1, "signal")
    row = position(p, BTC)
    assert (row["qty"], row["avg_px"], row["realized"]) == (-2.0, 100.0, 40.0)
    # Buy back 1 @ 90: a short gains (100 - 90) * 1 = 10 -> realized 50; still short 1 @ 100.
    p.apply_fills([BTC], [1.0], [90.0], T0 + 2, "signal")
    p.mark([BTC], [80.0], T0 + 3)
    row = position(p, BTC)
    assert (row["qty"], row["avg_px"], row["realized"]) == (-1.0, 100.0, 50.0)
    # Short 1 @ 100 marked at 80: +20 unrealized; exposure -80 net, 80 gross.
    assert (row["unrealized"], row["exposure"]) == (20.0, -80.0)
    assert (p.gross_exposure, p.net_exposure) == (80.0, -80.0)
    assert p.equity == 100_070.0
    assert_books_balance(p)
    # Buy 1 @ 85 closes it exactly: flat, average price reset, realized 50 + 15 = 65.
    p.apply_fills([BTC], [1.0], [85.0], T0 + 4, "signal")
    row = position(p, BTC)
    assert (row["qty"], row["avg_px"], row["realized"], row["unrealized"]) == (0.0, 0.0, 65.0, 0.0)
    assert p.equity == p.cash == 100_065.0


def test_short_from_flat_and_fees():
    p = Portfolio(10_000.0)
    p.apply_fills([ETH], [-5.0], [50.0], T0, "execution", fee=1.0)
    p.apply_fills([ETH], [5.0], [40.0], T0 + 1, "execution", fee=0.5)
    # (50 - 40) * 5 = 50 gross, minus 1.5 of fees = 48.5; cash 10_000 + 250 - 200 - 1.5.
    assert p.realized == 48.5 and p.cash == 10_048.5 and p.equity == 10_048.5
    assert_books_balance(p)


def test_decimal_quantities_close_flat():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC, BTC], [0.1, 0.2], [100.0, 100.0], T0, "signal")
    p.apply_fills([BTC], [-0.3], [110.0], T0 + 1, "signal")  # 0.1 + 0.2 - 0.3 = 5.6e-17 in floats
    row = position(p, BTC)
    assert (row["qty"], row["avg_px"]) == (0.0, 0.0) and row["realized"] == pytest.approx(3.0)
    assert p.gross_exposure == 0.0


def test_drawdown_and_daily_loss_across_utc_midnight():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC], [100.0], [100.0], T0 + 10 * HOUR, "signal")
    assert p.day == T0 // NS_PER_DAY and p.start_of_day_equity == 100_000.0
    p.mark([BTC], [110.0], T0 + 12 * HOUR)  # equity 101_000: the peak
    p.mark([BTC], [95.0], T0 + 23 * HOUR)  # equity 99_500
    assert p.peak_equity == 101_000.0
    assert p.drawdown == pytest.approx(1 - 99_500 / 101_000)  # 0.014851
    assert p.daily_loss == pytest.approx(1 - 99_500 / 100_000)  # 0.005
    # First bar of the next UTC day (exactly midnight counts): the day opens at 99_500.
    p.mark([BTC], [90.0], T0 + 24 * HOUR)  # equity 99_000
    assert p.day == T0 // NS_PER_DAY + 1 and p.start_of_day_equity == 99_500.0
    assert p.daily_loss == pytest.approx(1 - 99_000 / 99_500)  # 0.005025
    assert p.drawdown == pytest.approx(1 - 99_000 / 101_000)  # 0.019802
    # A late event stamped on the previous day does not roll the day back.
    p.mark([BTC], [91.0], T0 + 23 * HOUR + 1)
    assert p.day == T0 // NS_PER_DAY + 1 and p.equity == 99_000.0  # older than the last mark: ignored
    p.mark([BTC], [100.0], T0 + 30 * HOUR)  # equity 100_000: above the day's open
    assert p.daily_loss == 0.0 and p.drawdown == pytest.approx(1 - 100_000 / 101_000)
    # A new day's high raises the peak; drawdown is back to 0.
    p.mark([BTC], [120.0], T0 + 49 * HOUR)
    assert p.start_of_day_equity == 100_000.0 and p.peak_equity == 102_000.0 and p.drawdown == 0.0


def test_one_call_spanning_midnight_rolls_between_the_days():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC], [100.0], [100.0], T0, "signal")
    # Marks of two days in one call: the day-0 mark (equity 99_000) applies, then the day rolls.
    p.mark([BTC, BTC], [95.0, 90.0], [T0 + 24 * HOUR + 5, T0 + 23 * HOUR])
    assert p.start_of_day_equity == 99_000.0 and p.equity == 99_500.0


def test_executions_and_paper_fills_mixed():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC, ETH], [1.0, 10.0], [100.0, 20.0], T0, "signal", ids=["sig-1", "sig-2"])
    p.apply_fills([BTC], [0.5], [102.0], T0 + 5, "execution", ids=["kraken-exec-77"], fee=0.1)
    p.apply_fills([SOL], [-3.0], [10.0], T0 + 6, "execution")
    assert [(f.source, f.symbol, f.qty, f.id) for f in p.fills] == [
        ("signal", "BTC-USD", 1.0, "sig-1"), ("signal", "ETH-USD", 10.0, "sig-2"),
        ("execution", "BTC-USD", 0.5, "kraken-exec-77"), ("execution", "SOL-USDT", -3.0, "")]
    assert [f.seq for f in p.fills] == [0, 1, 2, 3]
    # Both sources move the same position: (1*100 + 0.5*102) / 1.5 = 100.6667.
    assert position(p, BTC)["qty"] == 1.5 and position(p, BTC)["avg_px"] == pytest.approx(151 / 1.5)
    before = p.snapshot()
    # The user posts the same execution again, and a signal replays after a restart: no effect.
    assert p.apply_fills([BTC], [0.5], [102.0], T0 + 5, "execution", ids=["kraken-exec-77"]) == 0
    assert p.apply_fills([ETH, ETH], [10.0, 10.0], [20.0, 20.0], T0, "signal", ids=["sig-2", "sig-3"]) == 1
    assert position(p, ETH)["qty"] == 20.0 and len(p.fills) == 5
    # Duplicate ids within one call apply once.
    assert p.apply_fills([SOL, SOL], [1.0, 1.0], [10.0, 10.0], T0 + 7, "execution", ids=["x", "x"]) == 1
    assert position(p, SOL)["qty"] == -2.0
    assert before["positions"][0] == p.snapshot()["positions"][0]  # BTC untouched by the replays
    # A reader that has seen the first 4 fills gets the rest.
    assert [(f.seq, f.symbol, f.id) for f in p.fills_since(4)] == [(4, "ETH-USD", "sig-3"), (5, "SOL-USDT", "x")]
    assert p.n_fills == 6 and p.fills_since(6) == []


def test_late_execution_does_not_overwrite_a_newer_mark():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC], [1.0], [100.0], T0 + 10, "signal")
    p.mark([BTC], [105.0], T0 + 20)
    p.apply_fills([BTC], [1.0], [99.0], T0 + 15, "execution")  # recorded after the mark, happened before
    row = position(p, BTC)
    assert row["last_px"] == 105.0 and row["avg_px"] == 99.5 and row["unrealized"] == 11.0


def test_marks_ignore_unknown_keys_and_newest_wins():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC], [1.0], [100.0], T0, "signal")
    p.mark([ETH, BTC, BTC, BTC], [1.0, 103.0, 101.0, 102.0], [T0 + 1, T0 + 3, T0 + 2, T0 + 3])
    assert p.keys == [BTC] and position(p, BTC)["last_px"] == 102.0  # equal times: the last given
    np.testing.assert_array_equal(p.position_notional([ETH, BTC]), [0.0, 102.0])


def test_bad_input_changes_nothing():
    p = Portfolio(100_000.0)
    p.apply_fills([BTC], [1.0], [100.0], T0, "signal")
    state = p.to_bytes()
    for call in (
        lambda: p.apply_fills([BTC], [1.0], [100.0], T0, "paper"),
        lambda: p.apply_fills([BTC], [0.0], [100.0], T0, "signal"),
        lambda: p.apply_fills([BTC], [1.0], [np.nan], T0, "signal"),
        lambda: p.apply_fills([BTC], [1.0], [-1.0], T0, "signal"),
        lambda: p.apply_fills([BTC], [1.0], [100.0], -1, "signal"),
        lambda: p.apply_fills([BTC, ETH], [1.0, 2.0, 3.0], [100.0], T0, "signal"),
        lambda: p.apply_fills([BTC], [1.0], [100.0], T0, "signal", ids=["a", "b"]),
        lambda: p.apply_fills([BTC], [1.0], [100.0], T0, "signal", fee=np.inf),
        lambda: p.mark([BTC], [0.0], T0),
        lambda: p.mark([BTC], [100.0, 1.0], T0),
    ):
        with pytest.raises(ValidationError):
            call()
    assert p.to_bytes() == state
    with pytest.raises(ValidationError):
        Portfolio(0.0)


def test_snapshot_round_trip_and_continuation():
    p = Portfolio(50_000.0)
    p.apply_fills([BTC, ETH, SOL], [1.0, -10.0, 100.0], [100.0, 20.0, 10.0], T0, "signal", ids=["a", "b", "c"])
    p.mark([BTC, ETH, SOL], [90.0, 25.0, 11.0], T0 + 25 * HOUR)
    p.apply_fills([ETH], [4.0], [22.0], T0 + 26 * HOUR, "execution", fee=0.2)
    q = Portfolio.from_bytes(p.to_bytes())
    assert q.snapshot() == p.snapshot()
    assert q.fills == p.fills and q.to_bytes() == p.to_bytes()
    snap = q.snapshot()
    assert set(snap) >= {"equity", "cash", "realized", "unrealized", "gross_exposure", "net_exposure",
                         "drawdown", "daily_loss", "positions"}
    assert set(snap["positions"][0]) == {"venue", "symbol", "qty", "avg_px", "last_px", "unrealized", "realized",
                                         "exposure", "stop_px", "take_px"}
    assert msgspec.json.decode(msgspec.json.encode(snap)) == snap  # JSON-ready
    # Both continue identically, ids remembered across the restart.
    for book in (p, q):
        assert book.apply_fills([BTC], [1.0], [100.0], T0, "signal", ids=["a"]) == 0
        book.apply_fills([BTC, ("x", "NEW-USD")], [-2.0, 3.0], [95.0, 1.5], T0 + 50 * HOUR, "signal")
        book.mark([BTC], [97.0], T0 + 51 * HOUR)
    assert q.to_bytes() == p.to_bytes()


def test_empty_round_trip():
    p = Portfolio(1_000.0)
    q = Portfolio.from_bytes(p.to_bytes())
    assert q.snapshot() == p.snapshot() and q.fills == [] and q.equity == 1_000.0


def test_from_bytes_rejects_garbage():
    with pytest.raises(SchemaError):
        Portfolio.from_bytes(b"\x00not msgpack")
    good = msgspec.msgpack.decode(Portfolio(1.0).to_bytes())
    good[0] = 99
    with pytest.raises(SchemaError):
        Portfolio.from_bytes(msgspec.msgpack.encode(good))
    good[0] = 1
    good[6] = [["v", "s"]]  # a key without its columns
    with pytest.raises(SchemaError):
        Portfolio.from_bytes(msgspec.msgpack.encode(good))


def test_vectorized_fills_equal_one_by_one():
    rng = np.random.default_rng(11)
    keys = [(("kraken", "binance")[i % 2], f"S{i}-USD") for i in range(300)]
    base_px = rng.uniform(1, 500, len(keys))
    batch, single = Portfolio(1e6), Portfolio(1e6)
    ts = T0
    for _ in range(20):
        # 400 fills per call over 300 keys: many keys repeat inside a call; sizes flip positions.
        idx = rng.integers(0, len(keys), 400)
        qty = rng.choice([-1.0, 1.0], 400) * rng.integers(1, 20, 400)
        px = base_px[idx] * rng.uniform(0.9, 1.1, 400)
        fee = rng.uniform(0, 0.5, 400)
        call_keys = [keys[i] for i in idx]
        ts += 6 * HOUR  # crosses midnights
        batch.apply_fills(call_keys, qty, px, ts, "signal", fee=fee)
        for k, q, x, f in zip(call_keys, qty, px, fee):
            single.apply_fills([k], [q], [x], ts, "signal", fee=f)
        marks = base_px * rng.uniform(0.8, 1.2, len(keys))
        batch.mark(keys, marks, ts + HOUR)
        for k, m in zip(keys, marks):
            single.mark([k], [m], ts + HOUR)
    a, b = batch.snapshot(), single.snapshot()
    assert len(a["positions"]) == len(keys) > 16  # grew past the initial capacity
    rows_a = sorted(a.pop("positions"), key=lambda r: (r["venue"], r["symbol"]))
    rows_b = sorted(b.pop("positions"), key=lambda r: (r["venue"], r["symbol"]))
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for name, value in ra.items():
            assert value == (pytest.approx(rb[name], rel=1e-12, abs=1e-6) if isinstance(value, float) else rb[name])
    # The peak is taken after each call, so one call per fill sees more peaks than one call per batch.
    assert b.pop("peak_equity") >= a.pop("peak_equity")
    del a["drawdown"], b["drawdown"]
    for name, value in a.items():
        assert value == (pytest.approx(b[name], rel=1e-12, abs=1e-6) if isinstance(value, float) else b[name])
    assert_books_balance(batch)
    # The log holds the same fills in the same order.
    assert [(f.symbol, f.qty, f.px) for f in batch.fills] == [(f.symbol, f.qty, f.px) for f in single.fills]


def test_portfolio_figures_feed_risk_sizing():
    s = RiskSettings()
    p = Portfolio(s.equity_start)
    p.apply_fills([BTC], [60.0], [100.0], T0, "signal")  # long 6_000 = 6% of equity
    keys = [BTC, ETH]
    action = np.array([1, 1], np.int8)
    px = np.array([100.0, 20.0])
    stop, tp = stops(action, px, px * 0.01, s)
    z = size(action, [60.0, 60.0], px, stop, tp, p.equity, p.drawdown, p.daily_loss, p.gross_exposure,
             p.position_notional(keys), s)
    # BTC: 10_000 limit - 6_000 held = 4_000; ETH: the full 10_000.
    np.testing.assert_allclose(z.notional, [4_000.0, 10_000.0])
    assert list(z.veto) == [Veto.NONE, Veto.NONE]
    p.apply_fills(keys, z.qty, px, T0 + 1, "signal")
    assert p.gross_exposure == pytest.approx(20_000.0)
    assert isinstance(p.fills[-1], Fill)


# --- exits ------------------------------------------------------------------------------------
NAN = float("nan")


def levels(p: Portfolio, key) -> tuple:
    row = position(p, key)
    return row["stop_px"], row["take_px"]


def book_with_levels() -> Portfolio:
    """Long 2 BTC @ 100 (stop 95, take 110), short 10 ETH @ 20 (stop 22, take 17), long 5 SOL @ 10
    without levels."""
    p = Portfolio(100_000.0)
    p.apply_fills([BTC, ETH, SOL], [2.0, -10.0, 5.0], [100.0, 20.0, 10.0], T0, "signal")
    assert p.set_exits([BTC, ETH, SOL], [95.0, 22.0, NAN], [110.0, 17.0, NAN]) == 3
    return p


def test_exits_long_and_short_by_hand():
    p = book_with_levels()
    assert (levels(p, BTC), levels(p, ETH), levels(p, SOL)) == ((95.0, 110.0), (22.0, 17.0), (None, None))
    state = p.to_bytes()
    # Inside the levels, or no levels at all (SOL at 1, far below its entry): nothing.
    none = p.exits([BTC, ETH, SOL], [95.01, 21.99, 1.0], T0 + HOUR)
    assert none.keys == [] and none.qty.shape == (0,) and none.reason == []
    # Long: the stop is hit at the level itself and below it; the take at and above it.
    for px, reason in ((95.0, "stop_loss"), (90.0, "stop_loss"), (110.0, "take_profit"), (111.0, "take_profit")):
        ex = p.exits([BTC], [px], T0 + HOUR)
        assert (ex.keys, ex.qty.tolist(), ex.px.tolist(), ex.reason) == ([BTC], [-2.0], [px], [reason])
    # Short: the stop is above, the take below; the closing order buys the 10 back.
    for px, reason in ((22.0, "stop_loss"), (25.0, "stop_loss"), (17.0, "take_profit"), (16.5, "take_profit")):
        ex = p.exits([ETH], [px], T0 + HOUR)
        assert (ex.keys, ex.qty.tolist(), ex.px.tolist(), ex.reason) == ([ETH], [10.0], [px], [reason])
    # Several keys at once: the orders come in query order, with their index in the query.
    ex = p.exits([SOL, ETH, BTC], [1.0, 16.0, 90.0], [T0 + HOUR, T0 + HOUR, T0 + 2 * HOUR])
    assert ex.index.tolist() == [1, 2] and ex.keys == [ETH, BTC] and ex.reason == ["take_profit", "stop_loss"]
    assert ex.ts_ns.tolist() == [T0 + HOUR, T0 + 2 * HOUR]
    assert p.to_bytes() == state  # a query changes nothing
    # Applied as fills: BTC closes at 90, 2 * (90 - 100) = -20; ETH at 16, 10 * (20 - 16) = +40.
    ids = [f"exit.{k[1]}.{t}" for k, t in zip(ex.keys, ex.ts_ns.tolist())]
    assert p.apply_fills(ex.keys, ex.qty, ex.px, ex.ts_ns, "signal", ids=ids) == 2
    assert (position(p, BTC)["qty"], position(p, BTC)["realized"]) == (0.0, -20.0)
    assert (position(p, ETH)["qty"], position(p, ETH)["realized"]) == (0.0, 40.0)
    # Flat positions lose their levels and exit no more; the same exits replayed count once.
    assert levels(p, BTC) == levels(p, ETH) == (None, None)
    assert p.exits([BTC, ETH], [1.0, 1_000.0], T0 + 3 * HOUR).keys == []
    assert p.apply_fills(ex.keys, ex.qty, ex.px, ex.ts_ns, "signal", ids=ids) == 0
    assert_books_balance(p)


def test_exit_levels_follow_the_position():
    p = book_with_levels()
    # Adding keeps the levels (the portfolio does not invent any); the caller's newest replace them.
    p.apply_fills([BTC], [1.0], [104.0], T0 + 1, "signal")
    assert levels(p, BTC) == (95.0, 110.0)
    assert p.set_exits([BTC], [99.0], [115.0]) == 1 and levels(p, BTC) == (99.0, 115.0)
    # Reducing keeps them too.
    p.apply_fills([BTC], [-1.0], [105.0], T0 + 2, "execution")
    assert position(p, BTC)["qty"] == 2.0 and levels(p, BTC) == (99.0, 115.0)
    # A flip drops them: 101 would be a long's take-profit level misread as a short's stop.
    p.apply_fills([BTC], [-5.0], [105.0], T0 + 3, "signal")
    assert position(p, BTC)["qty"] == -3.0 and levels(p, BTC) == (None, None)
    assert p.exits([BTC], [120.0], T0 + 4).keys == []
    # The flip's signal sets the short's levels; NaN sets none (a take-profit only here).
    assert p.set_exits([BTC], [NAN], [98.0]) == 1 and levels(p, BTC) == (None, 98.0)
    assert p.exits([BTC], [98.0], T0 + 4).reason == ["take_profit"]
    # Flat and unknown keys take no levels (they would guard the next position, either side).
    p.apply_fills([ETH], [10.0], [19.0], T0 + 5, "signal")
    assert p.set_exits([ETH, ("x", "NEW-USD")], [18.0, 1.0], [25.0, 2.0]) == 0
    assert levels(p, ETH) == (None, None) and p.keys == [BTC, ETH, SOL]
    # Of several entries for one key the last wins.
    assert p.set_exits([SOL, SOL], [9.0, 8.0], [12.0, 13.0]) == 1 and levels(p, SOL) == (8.0, 13.0)


def test_exits_use_the_earliest_crossing_and_ignore_stale_prices():
    p = book_with_levels()
    p.mark([BTC], [101.0], T0 + 10 * HOUR)
    # Several prices of one key: one order, at the earliest crossing (not the deepest).
    ex = p.exits([BTC, BTC, BTC, BTC], [94.0, 90.0, 112.0, 100.0],
                 [T0 + 13 * HOUR, T0 + 14 * HOUR, T0 + 12 * HOUR, T0 + 11 * HOUR])
    assert (ex.index.tolist(), ex.px.tolist(), ex.reason) == ([2], [112.0], ["take_profit"])
    # Equal times: the first given.
    assert p.exits([BTC, BTC], [90.0, 120.0], T0 + 11 * HOUR).px.tolist() == [90.0]
    # A price older than the key's newest event (the 10h mark) says nothing about the position now.
    assert p.exits([BTC], [90.0], T0 + 9 * HOUR).keys == []
    assert p.exits([BTC], [90.0], T0 + 10 * HOUR).keys == [BTC]


def test_exits_bad_input_changes_nothing():
    p = book_with_levels()
    state = p.to_bytes()
    for call in (
        lambda: p.set_exits([BTC, ETH], [95.0, 22.0, 1.0], [110.0]),
        lambda: p.set_exits([BTC], [np.inf], [110.0]),
        lambda: p.set_exits([BTC], [0.0], [110.0]),
        lambda: p.set_exits([BTC], [95.0], [-1.0]),
        lambda: p.set_exits([BTC], [111.0], [110.0]),  # a long's stop above its take-profit
        lambda: p.set_exits([SOL, ETH], [9.0, 17.0], [12.0, 22.0]),  # a short's levels swapped
        lambda: p.set_exits([BTC], [110.0], [110.0]),
        lambda: p.exits([BTC, ETH], [100.0, 20.0, 1.0], T0),
        lambda: p.exits([BTC], [np.nan], T0),
        lambda: p.exits([BTC], [0.0], T0),
        lambda: p.exits([BTC], [100.0], -1),
    ):
        with pytest.raises(ValidationError):
            call()
    assert p.to_bytes() == state


def test_exit_levels_round_trip_and_version_1_state_loads():
    p = book_with_levels()
    q = Portfolio.from_bytes(p.to_bytes())
    assert q.snapshot() == p.snapshot() and q.to_bytes() == p.to_bytes()
    assert (levels(q, BTC), levels(q, ETH), levels(q, SOL)) == ((95.0, 110.0), (22.0, 17.0), (None, None))
    assert msgspec.json.decode(msgspec.json.encode(q.snapshot())) == q.snapshot()  # None, not NaN, in JSON
    for book in (p, q):
        assert book.exits([BTC, ETH], [94.0, 23.0], T0 + 1).reason == ["stop_loss", "stop_loss"]
    # Written by the version 1 code: long 2 BTC @ 100 and short 10 ETH @ 20 from T0 ("a", "b"),
    # both marked an hour later at 104 and 19.
    v1 = bytes.fromhex(
        "dc001301cb40c3880000000000cb40c3880000000000cb40c3910000000000cb40c3880000000000cd4fea9292a66b72616b"
        "656ea74254432d55534492a66b72616b656ea74554482d555344c410000000000000004000000000000024c0c41000000000"
        "000059400000000000003440c41000000000000000000000000000000000c4100000000000005a400000000000003340c410"
        "00a0ee63eaaf871800a0ee63eaaf8718c41000003633a4ac871800003633a4ac8718c41000000000000000000100000000000"
        "000c410000000000000004000000000000024c0c41000000000000059400000000000003440c410000000000000000000000"
        "00000000000c4020000929200a1619201a162")
    old = Portfolio.from_bytes(v1)
    assert (old.equity, old.unrealized, old.n_fills) == (10_018.0, 18.0, 2)
    assert levels(old, BTC) == levels(old, ETH) == (None, None)
    assert old.exits([BTC, ETH], [1.0, 1_000.0], T0 + 2 * HOUR).keys == []
    assert old.apply_fills([BTC], [1.0], [100.0], T0, "signal", ids=["a"]) == 0  # its ids came along
    assert old.set_exits([BTC], [103.0], [108.0]) == 1
    assert Portfolio.from_bytes(old.to_bytes()).exits([BTC], [103.0], T0 + 2 * HOUR).reason == ["stop_loss"]
    # Level columns that do not match the keys, or in a version 1 state, are rejected.
    bad = msgspec.msgpack.decode(p.to_bytes())
    bad[-1] = bad[-1][:-8]
    with pytest.raises(SchemaError):
        Portfolio.from_bytes(msgspec.msgpack.encode(bad))
    bad = msgspec.msgpack.decode(p.to_bytes())
    bad[0] = 1
    with pytest.raises(SchemaError):
        Portfolio.from_bytes(msgspec.msgpack.encode(bad))


def test_vectorized_exits_equal_one_key_at_a_time():
    rng = np.random.default_rng(5)
    keys = [(("kraken", "binance")[i % 2], f"S{i}-USD") for i in range(300)]
    p = Portfolio(1e7)
    entry_px = rng.uniform(1, 500, len(keys))
    qty = rng.choice([-1.0, 0.0, 1.0], len(keys)) * rng.integers(1, 20, len(keys))
    held = np.flatnonzero(qty)
    p.apply_fills([keys[i] for i in held], qty[held], entry_px[held], T0, "signal")
    direction = np.sign(qty)
    stop = entry_px * (1 - direction * rng.uniform(0.01, 0.1, len(keys)))
    take = entry_px * (1 + direction * rng.uniform(0.01, 0.1, len(keys)))
    stop[rng.random(len(keys)) < 0.2] = np.nan
    take[rng.random(len(keys)) < 0.2] = np.nan
    stop[qty == 0] = take[qty == 0] = np.nan  # flat keys take none anyway
    assert p.set_exits(keys, stop, take) == held.shape[0]
    # 600 prices over 300 keys and a few unknown ones: repeats, crossings both ways, equal times.
    idx = rng.integers(0, len(keys) + 5, 600)
    query = [keys[i] if i < len(keys) else ("x", f"U{i}") for i in idx]
    px = np.where(idx < len(keys), entry_px[np.minimum(idx, len(keys) - 1)], 1.0) * rng.uniform(0.85, 1.15, 600)
    ts = T0 + rng.integers(0, 4, 600) * HOUR
    batch = p.exits(query, px, ts)
    assert 50 < len(batch.keys) <= held.shape[0] and {"stop_loss", "take_profit"} == set(batch.reason)
    # One key at a time, its prices in time order (equal times: as given), the first crossing wins.
    single = []
    for key in dict.fromkeys(query):
        at = [i for i in range(600) if query[i] == key]
        for i in sorted(at, key=lambda i: (ts[i], i)):
            ex = p.exits([key], [px[i]], ts[i])
            if ex.keys:
                single.append((i, key, ex.qty[0], ex.px[0], ex.ts_ns[0], ex.reason[0]))
                break
    single.sort()
    assert list(zip(batch.index.tolist(), batch.keys, batch.qty.tolist(), batch.px.tolist(), batch.ts_ns.tolist(),
                    batch.reason)) == single
