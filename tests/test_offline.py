"""compute_bars and `tickmesh bars` end to end, on the recorded files through the registered readers."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from decimal import Decimal

import pytest

from core.bars import BarBuilder
from core.cli import main
from core.offline import CSV_COLUMNS, BarStats, compute_bars, find_reader, load_readers, write_csv
from core.schema import TIMEFRAME_NS, DeadLetter, QuoteBatch, TradeBatch
from tests.conftest import shared_file

KRAKEN_REST = "ticks/kraken_xbtusdt_trades_rest.json"
COINBASE_WS = "ws/coinbase.ws.txt"
SEC = 1_000_000_000


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def assert_csv_equals(rows: list[dict[str, str]], bars) -> None:
    """Every CSV row is the bar at the same position, floats bit for bit."""
    assert len(rows) == len(bars)
    for row, bar in zip(rows, bars):
        assert (row["venue"], row["symbol"], row["tf"]) == (bar.venue, bar.symbol, bar.tf)
        assert int(row["start_ns"]) == bar.start_ns and int(row["n_trades"]) == bar.n_trades
        start = datetime.fromisoformat(row["start_iso"].replace("Z", "+00:00"))
        assert start.tzinfo is not None and int(start.timestamp()) * SEC == bar.start_ns
        for name in ("open", "high", "low", "close", "volume", "vwap", "buy_volume", "sell_volume"):
            assert float(row[name]) == getattr(bar, name), name


def reader_batches(relpath: str):
    path = shared_file(relpath)
    return list(find_reader(path).read(path))


def test_readers_are_found_through_entry_points():
    readers, problems = load_readers()
    assert problems == []
    assert {r.name for r in readers} >= {"recorded", "kraken-rest", "tardis"}
    assert find_reader(shared_file(KRAKEN_REST)).name == "kraken-rest"
    assert find_reader(shared_file(COINBASE_WS)).name == "recorded"


def test_compute_bars_is_the_live_builder_plus_flush():
    items = reader_batches(KRAKEN_REST)
    bars, stats = compute_bars(items, list(TIMEFRAME_NS), SEC)
    builder = BarBuilder(list(TIMEFRAME_NS), SEC)
    live = []
    for item in items:
        live += builder.update(item)
    live += builder.flush()
    assert sorted(bars, key=lambda b: (list(TIMEFRAME_NS).index(b.tf), b.start_ns)) == \
        sorted(live, key=lambda b: (list(TIMEFRAME_NS).index(b.tf), b.start_ns))
    assert stats.trades_read == 1000 and stats.batches_read == len(items)
    assert stats.bars_per_tf == {tf: sum(b.tf == tf for b in bars) for tf in TIMEFRAME_NS}
    assert sum(b.n_trades for b in bars if b.tf == "1h") == 1000
    assert stats.dead_letters == {} and stats.late_per_tf == {}


def test_compute_bars_counts_dead_letters_rejects_and_other_items():
    items = reader_batches(KRAKEN_REST)
    bad = TradeBatch.from_columns("kraken", "BTC-USDT", ts_ns=[1], recv_ns=[1], px=[float("nan")], qty=[1.0],
                                  side=[1], trade_id=[1])
    quote = QuoteBatch.from_columns("kraken", "BTC-USDT", ts_ns=[1], recv_ns=[1], bid_px=[1.0], bid_qty=[1.0],
                                    ask_px=[2.0], ask_qty=[1.0])
    extra = [DeadLetter("edge", "kraken", "ParseError: broken"), bad, quote, DeadLetter("edge", "kraken", "ParseError: broken")]
    bars, stats = compute_bars(items + extra, ["1m"], SEC)
    clean, _ = compute_bars(items, ["1m"], SEC)
    assert bars == clean
    assert stats.dead_letters["ParseError: broken"] == 2
    assert [r for r in stats.dead_letters if r.startswith("ValidationError")]
    assert stats.skipped == {"QuoteBatch": 1}


def test_write_csv_round_trips_floats(tmp_path):
    bars, _ = compute_bars(reader_batches(KRAKEN_REST), list(TIMEFRAME_NS), SEC)
    out = tmp_path / "bars.csv"
    assert write_csv(bars, out) == len(bars)
    assert_csv_equals(read_csv(out), bars)


@pytest.mark.parametrize("relpath", [KRAKEN_REST, COINBASE_WS])
def test_cli_bars_equals_compute_bars(relpath, tmp_path, capsys):
    out = tmp_path / "bars.csv"
    assert main(["bars", str(shared_file(relpath)), "-o", str(out), "--timeframe", "all"]) == 0
    expected, stats = compute_bars(reader_batches(relpath), list(TIMEFRAME_NS), SEC)
    assert expected
    assert_csv_equals(read_csv(out), expected)
    err = capsys.readouterr().err
    assert f"{stats.trades_read:,} trades" in err
    for tf in TIMEFRAME_NS:
        assert f"{tf} {stats.bars_per_tf[tf]:,}" in err
    assert ("dead letters: none" in err) == (not stats.dead_letters)
    assert "late trades" in err


def test_cli_timeframe_selection(tmp_path, capsys):
    path = str(shared_file(KRAKEN_REST))
    out = tmp_path / "bars.csv"
    assert main(["bars", path, "-o", str(out)]) == 0
    assert {r["tf"] for r in read_csv(out)} == {"1m"}
    assert main(["bars", path, "-o", str(out), "--timeframe", "1h", "--timeframe", "1s"]) == 0
    rows = read_csv(out)
    assert {r["tf"] for r in rows} == {"1s", "1h"}
    assert sum(int(r["n_trades"]) for r in rows if r["tf"] == "1h") == 1000
    with pytest.raises(SystemExit) as exc:
        main(["bars", path, "-o", str(out), "--timeframe", "2m"])
    assert exc.value.code == 2


def test_cli_lateness_comes_from_the_flag_or_the_config(tmp_path, capsys):
    # The recorded Kraken rows with their order reversed in blocks of 5: real trades arriving out of order.
    doc = json.loads(shared_file(KRAKEN_REST).read_text(), parse_float=Decimal)
    rows = doc["result"]["XBTUSDT"]
    shuffled = [r for i in range(0, len(rows), 5) for r in reversed(rows[i:i + 5])]
    text = ",".join("[" + ",".join(str(v) if isinstance(v, Decimal) else json.dumps(v) for v in r) + "]"
                    for r in shuffled)
    src = tmp_path / "shuffled.json"
    src.write_text('{"error":[],"result":{"XBTUSDT":[' + text + '],"last":"' + doc["result"]["last"] + '"}}')
    items = list(find_reader(src).read(src))

    out = tmp_path / "bars.csv"
    assert main(["bars", str(src), "-o", str(out), "--timeframe", "1s", "--lateness-ms", "0"]) == 0
    strict, strict_stats = compute_bars(items, ["1s"], 0)
    assert strict_stats.late_per_tf["1s"] > 0
    assert_csv_equals(read_csv(out), strict)
    assert f"1s {strict_stats.late_per_tf['1s']:,}" in capsys.readouterr().err.split("late trades")[1]

    config = tmp_path / "tickmesh.toml"
    config.write_text("[worker]\nlateness_ms = 3600000\n")
    assert main(["--config", str(config), "bars", str(src), "-o", str(out), "--timeframe", "1s"]) == 0
    lenient, lenient_stats = compute_bars(items, ["1s"], 3600 * SEC)
    assert lenient_stats.late_per_tf == {}
    assert_csv_equals(read_csv(out), lenient)
    assert len(lenient) > len(strict)


def test_cli_bad_format_missing_or_unknown_file_exit_2(tmp_path, capsys):
    path = str(shared_file(KRAKEN_REST))
    out = str(tmp_path / "bars.csv")
    assert main(["bars", path, "-o", out, "--format", "parquet"]) == 2
    err = capsys.readouterr().err
    assert "unknown input format 'parquet'" in err and "kraken-rest" in err and "recorded" in err

    assert main(["bars", str(tmp_path / "nope.json"), "-o", out]) == 2
    assert "input file not found" in capsys.readouterr().err

    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    assert main(["bars", str(junk), "-o", out]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the format" in err and "tardis" in err

    assert main(["bars", path, "-o", str(tmp_path / "no_dir" / "bars.csv")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_bar_stats_defaults_are_independent():
    a, b = BarStats(), BarStats()
    a.dead_letters["x"] = 1
    assert b.dead_letters == {}
