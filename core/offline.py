"""``tickmesh bars``: OHLCV bars from a recorded trade file, with the live bar engine.

The file is read by a reader found through the ``tickmesh.readers`` entry-point group (core never
imports edge): an object with ``name``, ``sniff(path) -> bool`` and
``read(path) -> Iterator[TradeBatch | DeadLetter]``. The batches go through the same
:class:`core.bars.BarBuilder` as the live worker, then every still-open bar is flushed.

Example:
    tickmesh bars ../shared/data/ticks/kraken_xbtusdt_trades_rest.json -o bars.csv --timeframe 1m
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from datetime import datetime, timezone
from importlib.metadata import entry_points
from typing import IO, Any, Iterable

import msgspec

from core.bars import DEFAULT_LATENESS_NS, BarBuilder
from core.config import Config
from core.errors import DataFileError, ValidationError
from core.schema import TIMEFRAME_NS, Bar, DeadLetter, TradeBatch

__all__ = ["CSV_COLUMNS", "READER_GROUP", "BarStats", "compute_bars", "write_csv", "load_readers", "find_reader",
           "register"]

READER_GROUP = "tickmesh.readers"
CSV_COLUMNS = ("venue", "symbol", "tf", "start_ns", "start_iso", "open", "high", "low", "close", "volume", "vwap",
               "n_trades", "buy_volume", "sell_volume")
_TF_ORDER = {tf: i for i, tf in enumerate(TIMEFRAME_NS)}


class BarStats(msgspec.Struct, kw_only=True):
    """What one offline run read and produced.

    Attributes:
        trades_read: trades in the TradeBatches read (late ones included).
        batches_read: TradeBatches read.
        bars_per_tf: bars produced per timeframe.
        dead_letters: DeadLetters per reason (the reader's, plus batches the builder rejected).
        late_per_tf: late trades per timeframe (left out of that timeframe's bars).
        skipped: items that were neither trades nor dead letters (e.g. quote batches), per type.
    """

    trades_read: int = 0
    batches_read: int = 0
    bars_per_tf: dict[str, int] = msgspec.field(default_factory=dict)
    dead_letters: dict[str, int] = msgspec.field(default_factory=dict)
    late_per_tf: dict[str, int] = msgspec.field(default_factory=dict)
    skipped: dict[str, int] = msgspec.field(default_factory=dict)


def compute_bars(
    batches: Iterable[TradeBatch | DeadLetter],
    timeframes: Iterable[str] = tuple(TIMEFRAME_NS),
    lateness_ns: int = DEFAULT_LATENESS_NS,
) -> tuple[list[Bar], BarStats]:
    """Runs the live bar engine over a whole input, then flushes the bars still open.

    Args:
        batches: a reader's output, in file order.
        timeframes: timeframe names from ``TIMEFRAME_NS``.
        lateness_ns: the watermark lateness, as in the worker.

    Returns:
        (bars sorted by venue, symbol, timeframe, start_ns; the run's counters).

    Raises:
        ConfigError: an unknown timeframe or a negative lateness.
    """
    builder = BarBuilder(timeframes, lateness_ns)
    stats = BarStats()
    bars: list[Bar] = []
    for item in batches:
        if isinstance(item, TradeBatch):
            stats.batches_read += 1
            stats.trades_read += len(item)
            try:
                bars.extend(builder.update(item))
            except ValidationError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                stats.dead_letters[reason] = stats.dead_letters.get(reason, 0) + 1
            builder.late_trades()  # counted in builder.late; offline has no dead-letter subject
        elif isinstance(item, DeadLetter):
            stats.dead_letters[item.reason] = stats.dead_letters.get(item.reason, 0) + 1
        else:
            kind = type(item).__name__
            stats.skipped[kind] = stats.skipped.get(kind, 0) + 1
    bars.extend(builder.flush())
    bars.sort(key=lambda b: (b.venue, b.symbol, _TF_ORDER[b.tf], b.start_ns))
    for bar in bars:
        stats.bars_per_tf[bar.tf] = stats.bars_per_tf.get(bar.tf, 0) + 1
    for (_venue, tf), count in builder.late.items():
        stats.late_per_tf[tf] = stats.late_per_tf.get(tf, 0) + count
    return bars, stats


def _iso(ts_ns: int) -> str:
    sec, frac = divmod(ts_ns, 1_000_000_000)
    text = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:09d}Z" if frac else f"{text}Z"


def write_csv(bars: Iterable[Bar], out: str | os.PathLike | IO[str]) -> int:
    """Writes bars as CSV with a header (``CSV_COLUMNS``); floats in repr form, so they round-trip.

    Args:
        bars: the bars, written in the order given.
        out: a path, or a text file opened with ``newline=""``.

    Returns:
        The number of bars written.

    Raises:
        DataFileError: the file cannot be written.
    """
    if isinstance(out, (str, os.PathLike)):
        try:
            with open(out, "w", newline="", encoding="utf-8") as fh:
                return write_csv(bars, fh)
        except OSError as exc:
            raise DataFileError(f"cannot write {out}: {exc.strerror or exc}") from None
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for b in bars:
        # repr(): the shortest text that reads back as the same float.
        writer.writerow((b.venue, b.symbol, b.tf, b.start_ns, _iso(b.start_ns), repr(b.open), repr(b.high),
                         repr(b.low), repr(b.close), repr(b.volume), repr(b.vwap), b.n_trades, repr(b.buy_volume),
                         repr(b.sell_volume)))
        count += 1
    return count


def load_readers() -> tuple[list[Any], list[str]]:
    """The readers registered under ``tickmesh.readers``, in name order.

    Returns:
        (readers that loaded, a warning line per entry point that did not).
    """
    readers, problems = [], []
    for ep in sorted(entry_points(group=READER_GROUP), key=lambda e: e.name):
        try:
            readers.append(ep.load())
        except (ImportError, AttributeError) as exc:
            problems.append(f"reader {ep.name!r} unavailable: {exc}")
    return readers, problems


def find_reader(path: str | os.PathLike, fmt: str | None = None, readers: list[Any] | None = None) -> Any:
    """The reader for a file: the one named ``fmt``, or else the first whose ``sniff`` accepts it.

    Raises:
        DataFileError: the file is missing, ``fmt`` names no reader, or no reader recognizes it;
            the message lists the known formats.
    """
    if readers is None:
        readers, _ = load_readers()
    names = ", ".join(r.name for r in readers) or "none installed"
    if fmt is not None:
        chosen = next((r for r in readers if r.name == fmt), None)
        if chosen is None:
            raise DataFileError(f"unknown input format {fmt!r}; known formats: {names}")
    if not os.path.isfile(path):
        raise DataFileError(f"input file not found: {path}")
    if fmt is not None:
        return chosen
    for reader in readers:
        if reader.sniff(path):
            return reader
    raise DataFileError(f"cannot tell the format of {path}; known formats: {names} (choose one with --format)")


def _timeframes(values: list[str] | None) -> list[str]:
    if not values:
        return ["1m"]
    if "all" in values:
        return list(TIMEFRAME_NS)
    return [tf for tf in TIMEFRAME_NS if tf in values]


def _summary(path: str, reader_name: str, out: str, stats: BarStats, timeframes: list[str]) -> str:
    lines = [f"tickmesh bars: {stats.trades_read:,} trades in {stats.batches_read:,} batches read from {path} "
             f"({reader_name})"]
    lines.append("  bars written to " + out + ": "
                 + ", ".join(f"{tf} {stats.bars_per_tf.get(tf, 0):,}" for tf in timeframes))
    n_dead = sum(stats.dead_letters.values())
    lines.append(f"  dead letters: {n_dead:,}" if n_dead else "  dead letters: none")
    ranked = sorted(stats.dead_letters.items(), key=lambda kv: (-kv[1], kv[0]))
    for reason, count in ranked[:10]:
        lines.append(f"    {count:>8,}  {reason[:160]}")
    if len(ranked) > 10:
        lines.append(f"    ... and {len(ranked) - 10} more reasons")
    lines.append("  late trades (left out of that timeframe's bars): "
                 + ", ".join(f"{tf} {stats.late_per_tf.get(tf, 0):,}" for tf in timeframes))
    for kind, count in stats.skipped.items():
        lines.append(f"  skipped {count:,} {kind} (not trades)")
    return "\n".join(lines)


def _bars_command(args: argparse.Namespace, cfg: Config) -> int:
    readers, problems = load_readers()
    for line in problems:
        print(f"tickmesh bars: warning: {line}", file=sys.stderr)
    reader = find_reader(args.input, args.format, readers)
    timeframes = _timeframes(args.timeframe)
    lateness_ms = cfg.worker.lateness_ms if args.lateness_ms is None else args.lateness_ms
    bars, stats = compute_bars(reader.read(args.input), timeframes, int(round(lateness_ms * 1_000_000)))
    write_csv(bars, args.output)
    print(_summary(args.input, reader.name, args.output, stats, timeframes), file=sys.stderr)
    return 0


def _non_negative_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``tickmesh bars`` to the command line."""
    p = subparsers.add_parser(
        "bars", help="OHLCV bars from a recorded trade file, with the live bar engine",
        description="Reads trades from INPUT and writes event-time OHLCV bars as CSV. Late trades (after "
                    "their bar closed) are left out and counted; the summary goes to stderr.")
    p.add_argument("input", metavar="INPUT", help="trade file (format sniffed unless --format is given)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="CSV file to write")
    p.add_argument("--timeframe", action="append", choices=[*TIMEFRAME_NS, "all"], metavar="TF",
                   help=f"bar timeframe, repeatable, or 'all' (one of {', '.join(TIMEFRAME_NS)}; default 1m)")
    p.add_argument("--format", metavar="F", help="input format, a tickmesh.readers name (default: sniffed)")
    p.add_argument("--lateness-ms", type=_non_negative_ms, metavar="MS",
                   help="watermark lateness in milliseconds (default: worker.lateness_ms from the config)")
    p.set_defaults(func=_bars_command)
