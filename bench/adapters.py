"""Edge parse throughput per recorded source: adapter.parse alone and parse + validate
(`edge.validate.process_frame`), against the format's plain stdlib decoding of the same frames
in the same run (json.loads, or str.split for CSV lines), which normalizes nothing.

Usage: python bench/adapters.py [--events 500000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.readers import reader_for  # noqa: E402
from edge.validate import process_frame  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SOURCES = ["ticks/kraken_xbtusdt_trades_rest.json", "ticks/tardis_bitmex_trades_XBTUSD.csv", "ws/coinbase.ws.txt",
           "ws/kraken_trade.ws.txt", "ws/kraken_ticker.ws.txt", "ws/binance_spot.ws.txt"]


def rate(fn, frames, min_events: int) -> float:
    """Events per CPU second of ``fn`` over ``frames``, repeated until ``min_events``."""
    n = 0
    t0 = time.process_time()
    while n < min_events:
        for recv_ns, raw in frames:
            n += fn(recv_ns, raw)
    return n / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500_000, help="events per measurement (default 500k)")
    args = ap.parse_args()
    print(f"{'source':38s} {'frames':>7s} {'events':>7s} {'parse ev/s':>12s} {'+validate':>12s} "
          f"{'plain ev/s':>16s} {'ratio':>6s}")
    for rel in SOURCES:
        path = DATA / rel
        if not path.exists():
            sys.exit(f"recorded data missing: {path} (the benchmark needs ../shared/data)")
        reader = reader_for(path)
        adapter = reader.adapter(path)
        frames = [(r, raw) for r, raw in reader.frames(path)
                  if process_frame(adapter, raw, r, None).events]  # frames that normalize
        per_frame = {id(raw): len(process_frame(adapter, raw, r, None).events) for r, raw in frames}
        events = sum(per_frame.values())
        parse = rate(lambda r, raw: len(adapter.parse(raw, r)), frames, args.events)
        full = rate(lambda r, raw: len(process_frame(adapter, raw, r, None).events), frames, args.events)
        plain = (lambda raw: raw.split(",")) if reader.name == "tardis" else json.loads
        base = rate(lambda r, raw: (plain(raw), per_frame[id(raw)])[1], frames, args.events)
        print(f"{Path(rel).name:38s} {len(frames):7,d} {events:7,d} {parse:12,.0f} {full:12,.0f} {base:16,.0f} "
              f"{full / base:5.2f}x")


if __name__ == "__main__":
    main()
