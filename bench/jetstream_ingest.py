"""What nats-server needs to take in one bar close of signals, by stream setting: is it the store?

One close = --messages publishes of --payload bytes, one per symbol subject, framed as HPUBs and
written at once (as the inference worker writes a close), timed from the write until the PONG of
a PING sent after it: by then the server has read and handled every message. Variants, in turn on
the same connection and server, so that drift hits all alike:

- file + Msg-Id + ack: a file-stored stream with a dedup window, each publish with a Nats-Msg-Id
  header and a reply subject for its PubAck (what the worker does for SIG);
- file, no Msg-Id: the same without the dedup header;
- memory + Msg-Id + ack: a memory-stored stream;
- file + Msg-Id, no ack: no reply subject, so the server sends no PubAck;
- core (baseline): the same bytes on subjects no stream captures.

Prints median and p99 ms per close and each variant's median over core's.

Usage:
    .venv/bin/python bench/jetstream_ingest.py [--messages 1000] [--payload 380] [--reps 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import nats
import numpy as np
from nats.js.api import StorageType, StreamConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.natsserver import NatsServer  # noqa: E402

# name -> (subject prefix, Msg-Id header, reply subject for an ack)
VARIANTS = {"file + Msg-Id + ack": ("f", True, True), "file, no Msg-Id": ("f", False, True),
            "memory + Msg-Id + ack": ("m", True, True), "file + Msg-Id, no ack": ("f", True, False),
            "core (baseline)": ("c", False, False)}


def close_bytes(prefix: str, msg_id: bool, ack: bool, n: int, payload: bytes, close: int) -> bytes:
    """One close's publishes framed as the protocol's HPUB lines."""
    parts = []
    for i in range(n):
        head = f"NATS/1.0\r\nNats-Msg-Id: sig-{close}-{i}\r\n\r\n" if msg_id else "NATS/1.0\r\n\r\n"
        reply = f" _INBOX.bench.{i}" if ack else ""
        parts.append(f"HPUB {prefix}.venue.S{i}{reply} {len(head)} {len(head) + len(payload)}\r\n{head}".encode()
                     + payload + b"\r\n")
    return b"".join(parts)


async def run(args) -> None:
    payload = b"x" * args.payload
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "js") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="F", subjects=["f.>"], storage=StorageType.FILE, duplicate_window=120))
        await js.add_stream(StreamConfig(name="M", subjects=["m.>"], storage=StorageType.MEMORY, duplicate_window=120))
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        close = 0
        for rep in range(args.warmup + args.reps):
            for name, (prefix, msg_id, ack) in VARIANTS.items():
                close += 1
                blob = close_bytes(prefix, msg_id, ack, args.messages, payload, close)
                t0 = time.perf_counter()
                # The framed close goes out in one write (nats-py's own buffer, as the worker's
                # publisher uses it), then PING/PONG.
                await nc._send_command(blob)
                await nc._flush_pending(force_flush=True)
                await nc.flush()
                if rep >= args.warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
                await asyncio.sleep(0.05)  # acks drain; the next close starts on a quiet server
        await nc.close()
    base = float(np.median(times["core (baseline)"]))
    print(f"{'variant':<24} {'median ms':>10} {'p99 ms':>8} {'/ core':>7}")
    for name, t in times.items():
        med = float(np.median(t))
        print(f"{name:<24} {med:>10.2f} {np.percentile(t, 99):>8.2f} {med / base:>6.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000, help="publishes per close (default 1000)")
    ap.add_argument("--payload", type=int, default=380, help="bytes per payload (default 380: a signal of bench/decisions.py)")
    ap.add_argument("--reps", type=int, default=40, help="timed closes per variant (default 40)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed closes per variant first (default 5)")
    args = ap.parse_args()
    if min(args.messages, args.payload, args.reps) < 1 or args.warmup < 0:
        ap.error("--messages, --payload and --reps must be >= 1, --warmup >= 0")
    print(f"{args.messages} publishes of {args.payload} B per close, {args.reps} closes per variant; "
          f"load average {os.getloadavg()[0]:.1f}")
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
