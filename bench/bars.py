"""Throughput of the bar engine: BarBuilder vs a naive per-trade Python aggregation.

Builds >= 2M trades by looping the recorded Kraken REST trades (../shared/data) with shifted
timestamps, cuts them into wire batches of 500 trades and feeds them to one BarBuilder over all
five timeframes on one core. The baseline, measured in the same run on a subset, is the obvious
per-trade loop (a dict of bars per bucket). Two time scales are run: the recorded spacing (about
one trade per 25 s, so nearly every trade opens a new 1 s and 5 s bar) and the same trades with
their time gaps divided by 1000 (about 40 trades/s, a busy venue). Each scale is also run through
`BarBuilder.update_many` with runs of batches of up to ``--run-trades`` trades per call, as the
bar worker feeds consecutive messages of one series (same bars; the engine's fixed cost per call
is paid once per run).

Usage:
    .venv/bin/python bench/bars.py [--trades 2000000] [--batch 500] [--baseline-trades 200000] [--run-trades 8192]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.bars import BarBuilder  # noqa: E402
from core.schema import TIMEFRAME_NS, TradeBatch  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ticks" / "kraken_xbtusdt_trades_rest.json"
TIMEFRAMES = list(TIMEFRAME_NS)


def load_kraken(path: Path) -> dict[str, np.ndarray]:
    """The recorded trades as columns (event time exact via Decimal)."""
    if not path.exists():
        sys.exit(f"bench/bars.py: recorded data file missing: {path}")
    rows = json.loads(path.read_text(), parse_float=Decimal)["result"]["XBTUSDT"]
    ts = np.array([int(r[2] * 10**9) for r in rows], np.int64)
    return {
        "ts_ns": ts,
        "recv_ns": ts + 2_000_000,
        "px": np.array([float(r[0]) for r in rows]),
        "qty": np.array([float(r[1]) for r in rows]),
        "side": np.array([1 if r[3] == "b" else -1 for r in rows], np.int8),
        "trade_id": np.array([r[6] for r in rows], np.int64),
    }


def build(base: dict[str, np.ndarray], n_trades: int, compress: int) -> dict[str, np.ndarray]:
    """``base`` repeated until ``n_trades``, each copy shifted after the previous; gaps / compress."""
    ts = base["ts_ns"]
    rel = (ts - ts[0]) // compress
    span = int(rel[-1]) + 1_000_000
    reps = -(-n_trades // ts.shape[0])
    shift = np.repeat(np.arange(reps, dtype=np.int64) * span, ts.shape[0])[:n_trades]
    out = {name: np.tile(col, reps)[:n_trades] for name, col in base.items()}
    out["ts_ns"] = ts[0] + np.tile(rel, reps)[:n_trades] + shift
    out["recv_ns"] = out["ts_ns"] + 2_000_000
    out["trade_id"] = np.arange(n_trades, dtype=np.int64)
    return out


def batches(cols: dict[str, np.ndarray], size: int) -> list[TradeBatch]:
    n = cols["ts_ns"].shape[0]
    return [TradeBatch.from_columns("kraken", "BTC-USDT", **{k: v[i:i + size] for k, v in cols.items()})
            for i in range(0, n, size)]


def run_builder(items: list[TradeBatch], lateness_ns: int) -> tuple[float, int]:
    builder = BarBuilder(TIMEFRAMES, lateness_ns)
    n_bars = 0
    t0 = time.perf_counter()
    for b in items:
        n_bars += len(builder.update(b))
    n_bars += len(builder.flush())
    return time.perf_counter() - t0, n_bars


def run_builder_many(items: list[TradeBatch], lateness_ns: int, run_trades: int) -> tuple[float, int]:
    """`BarBuilder.update_many` over runs of consecutive batches of up to ``run_trades`` trades,
    as the bar worker feeds them (`core.bar_worker.RUN_TRADES`)."""
    builder = BarBuilder(TIMEFRAMES, lateness_ns)
    n_bars = 0
    t0 = time.perf_counter()
    lo = 0
    while lo < len(items):
        hi, n = lo + 1, len(items[lo])
        while hi < len(items) and n < run_trades:
            n += len(items[hi])
            hi += 1
        n_bars += sum(len(bars) for bars, _ in builder.update_many(items[lo:hi]))
        lo = hi
    n_bars += len(builder.flush())
    return time.perf_counter() - t0, n_bars


def run_naive(cols: dict[str, np.ndarray], lateness_ns: int) -> tuple[float, int]:
    """The baseline: one Python iteration per trade and timeframe, bars in a dict per bucket."""
    rows = list(zip(*(cols[k].tolist() for k in ("ts_ns", "recv_ns", "px", "qty", "side"))))
    tfs = [(tf, TIMEFRAME_NS[tf]) for tf in TIMEFRAMES]
    t0 = time.perf_counter()
    open_bars: dict[tuple, list] = {}
    max_ts = None
    n_bars = 0
    for ts, recv, px, qty, side in rows:
        max_ts = ts if max_ts is None or ts > max_ts else max_ts
        wm = max_ts - lateness_ns
        for tf, tf_ns in tfs:
            start = ts // tf_ns * tf_ns
            if start + tf_ns <= wm:
                continue
            bar = open_bars.get((tf, start))
            if bar is None:
                open_bars[tf, start] = [ts, px, ts, px, px, px, qty, px * qty, 1,
                                        qty if side == 1 else 0.0, qty if side == -1 else 0.0, recv]
                continue
            if ts < bar[0]:
                bar[0], bar[1] = ts, px
            if ts >= bar[2]:
                bar[2], bar[3] = ts, px
            bar[4] = max(bar[4], px)
            bar[5] = min(bar[5], px)
            bar[6] += qty
            bar[7] += px * qty
            bar[8] += 1
            if side == 1:
                bar[9] += qty
            elif side == -1:
                bar[10] += qty
            bar[11] = max(bar[11], recv)
        # Close as the builder does, so both produce the same bars.
        for key in [k for k in open_bars if k[1] + TIMEFRAME_NS[k[0]] <= wm]:
            del open_bars[key]
            n_bars += 1
    n_bars += len(open_bars)
    return time.perf_counter() - t0, n_bars


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--baseline-trades", type=int, default=200_000)
    parser.add_argument("--lateness-ms", type=float, default=1000.0)
    parser.add_argument("--run-trades", type=int, default=8192,
                        help="trades per update_many call, whole batches (the worker's RUN_TRADES; default 8192)")
    args = parser.parse_args()
    lateness_ns = int(args.lateness_ms * 1e6)
    base = load_kraken(DATA)

    print(f"BarBuilder, {len(TIMEFRAMES)} timeframes {TIMEFRAMES}, batches of {args.batch}, one core")
    header = f"{'time scale':<22}{'engine':<12}{'trades':>10}{'bars':>10}{'seconds':>9}{'trades/s':>13}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for label, compress in (("recorded (~0.04/s)", 1), ("gaps / 1000 (~40/s)", 1000)):
        cols = build(base, args.trades, compress)
        items = batches(cols, args.batch)
        sub = {k: v[: args.baseline_trades] for k, v in cols.items()}
        naive_s, naive_bars = run_naive(sub, lateness_ns)
        sub_s, sub_bars = run_builder(batches(sub, args.batch), lateness_ns)
        if sub_bars != naive_bars:
            print(f"  warning: bar counts differ on the subset: builder {sub_bars}, naive {naive_bars}")
        vec_s, vec_bars = run_builder(items, lateness_ns)
        naive_rate = len(sub["ts_ns"]) / naive_s
        vec_rate = args.trades / vec_s
        print(f"{label:<22}{'naive':<12}{len(sub['ts_ns']):>10,}{naive_bars:>10,}{naive_s:>9.2f}{naive_rate:>13,.0f}{1.0:>8.2f}")
        print(f"{'':<22}{'BarBuilder':<12}{args.trades:>10,}{vec_bars:>10,}{vec_s:>9.2f}{vec_rate:>13,.0f}"
              f"{vec_rate / naive_rate:>8.2f}")
        many_s, many_bars = run_builder_many(items, lateness_ns, args.run_trades)
        if many_bars != vec_bars:
            print(f"  warning: bar counts differ: update_many {many_bars}, update {vec_bars}")
        many_rate = args.trades / many_s
        print(f"{'':<22}{'update_many':<12}{args.trades:>10,}{many_bars:>10,}{many_s:>9.2f}{many_rate:>13,.0f}"
              f"{many_rate / naive_rate:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
