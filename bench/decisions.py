"""Decision throughput: signals for N symbols on one bar close, through `core.signals.DecisionStage`.

Each symbol replays the real EUR/USD 1h feature vectors (../shared/data/bars/eurusd_1h_2017-2018.csv,
the full feature set computed once) from its own random starting bar, with a forecast prediction
per vector (P_UP from the recent return). The stage first steps every symbol through a warm-up of
bars, then one bar close is timed repeatedly:

- acked: what the live inference worker does once a bar close is complete
  (`core.closes.BarCloses`): ``stage.decide_batch`` with all N vectors in one call (the signals
  come out encoded), every signal published on ``sig.<venue>.<symbol>`` into the SIG stream of a
  real nats-server started here (`core.inference_worker.signal_messages`, one write,
  `core._jspublish.AckedPublisher.publish_many`), and every JetStream ack received: every signal
  stored. The time from the close being handed to the stage to the last ack bounds the latency
  of every vector of the close (p99 over closes);
- at server: the same, timed until the server has read every signal (the write flushed to the
  socket, then a PING/PONG round trip: subscribers have them), before the acks are awaited;
- batch: the same ``decide_batch`` call alone, nothing published;
- server read: the server's share of "at server": the close's signals decided and framed as for
  "acked" (untimed, already in nats-py's write buffer), then timed from the write until the
  PING/PONG after it came back; acks awaited after. core read: the same bytes on subjects no
  stream captures (core NATS: no JetStream storage, no Msg-Id dedup, no acks), timed alike. These
  two say what the server needs to read a close's publishes, whatever Python costs (only for N
  within the publisher's in-flight bound, so that the close goes in one write);
- objects: ``stage.decide``, the same signals as `core.schema.Signal` objects (what a backtest
  gets: ``decide_batch`` plus decoding every payload);
- per vector (baseline): one ``decide_batch`` call per vector, as the worker decided before bar
  closes were grouped.

Prints ms per close (median, p99), signals/s and the ratios. The garbage collector is tuned as in a
worker process (`core._service.tune_gc`).

Usage:
    .venv/bin/python bench/decisions.py [--sizes 1000,10000] [--reps 20] [--warmup 40]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nats  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import streams  # noqa: E402
from core._jspublish import AckedPublisher  # noqa: E402
from core._service import tune_gc  # noqa: E402
from core.config import StreamsConfig  # noqa: E402
from core.features.barfile import load_bars  # noqa: E402
from core.features.featureset import FeatureSet  # noqa: E402
from core.features.offline import compute  # noqa: E402
from core.inference_worker import signal_messages  # noqa: E402
from core.natsserver import NatsServer  # noqa: E402
from core.schema import FeatureVector, Prediction  # noqa: E402
from core.signals import DecisionStage, SignalBatch  # noqa: E402

MAX_INFLIGHT = 4096  # the signal publisher's bound on unacknowledged publishes (AckedPublisher's default)
DATA = ROOT.parent / "shared" / "data" / "bars" / "eurusd_1h_2017-2018.csv"


def series():
    if not DATA.exists():
        sys.exit(f"recorded data missing: {DATA} (benchmarks need ../shared/data beside the checkout)")
    s = load_bars(DATA)[0]
    fs = FeatureSet()
    return list(fs.names), compute([s], fs)[0], s.columns["close"], s.columns["ts_ns"]


def bar_close(names, values, close, ts, starts: np.ndarray, t: int) -> tuple[list, list]:
    """The vectors of one bar close: every symbol at its own place in the series, one timestamp."""
    vecs, preds = [], []
    r5 = names.index("logret_5")
    now_ns = int(ts[0]) + t * 3_600_000_000_000
    for k, st in enumerate(starts):
        i = st + t
        r = values[i, r5]
        p_up = 0.5 if math.isnan(r) else 0.5 + 0.3 * math.tanh(r * 500)
        v = FeatureVector("bench", f"S{k}", "1h", now_ns, names, values[i].tobytes(), "", 0, float(close[i]))
        vecs.append(v)
        preds.append({"forecast": Prediction("forecast", "bench", f"S{k}", "1h", now_ns, 2, "production",
                                             {"P_UP": [p_up] * 3, "MEAN": [0.0] * 3, "STD": [1e-3] * 3})})
    return vecs, preds


async def publish_signals(nc, out: AckedPublisher, batch: SignalBatch, subject_of: dict, t0: float) -> float:
    """As the inference worker publishes a close's signals: in one write, acks awaited in bulk.
    Returns the seconds from ``t0`` until the server had read them all."""
    await out.publish_many(signal_messages(batch, subject_of))
    # nats-py's flush writes its PING straight to the socket, ahead of what its flusher task has
    # not written yet (the signals): write them first, so that the PONG comes after the server
    # has read them all. (Without this the PONG could come back before the signals were sent.)
    await nc._flush_pending(force_flush=True)
    await nc.flush()
    at_server = time.perf_counter() - t0
    await out.wait()
    return at_server


async def server_read(nc, out: AckedPublisher, batch: SignalBatch, subject_of: dict) -> tuple[float, float]:
    """Seconds the server takes to read a close's signals once they are framed: as JetStream
    publishes (as the worker sends them), then the same bytes as core NATS messages."""
    messages = signal_messages(batch, subject_of)
    await out.publish_many(messages)  # framed into the write buffer; nothing written yet
    t0 = time.perf_counter()
    await nc._flush_pending(force_flush=True)
    await nc.flush()
    js_s = time.perf_counter() - t0
    await out.wait()
    blob = b"".join(f"HPUB core.{s} {len(h)} {len(h) + len(p)}\r\n{h}".encode() + p + b"\r\n"
                    for s, p, h in messages)  # no stream captures core.>
    t0 = time.perf_counter()
    await nc._send_command(blob)
    await nc._flush_pending(force_flush=True)
    await nc.flush()
    return js_s, time.perf_counter() - t0


async def run(args) -> int:
    names, values, close, ts = series()
    first = 150  # past every feature's warm-up
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}; "
          f"one thread; {len(names)} features per vector")
    print(f"{'symbols':>8} {'path':<11} {'median ms':>10} {'p99 ms':>9} {'signals/s':>12}")
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "js") as server:
        nc = await nats.connect(server.url)
        await streams.ensure(nc.jetstream(), StreamsConfig())
        out = await AckedPublisher(nc, max_inflight=MAX_INFLIGHT).start()
        for n in (int(x) for x in args.sizes.split(",")):
            rng = np.random.default_rng(n)
            starts = rng.integers(first, len(close) - args.warmup - args.reps - 2, n)
            med = {}
            # "server read" needs the whole close in one write: no wait for acks in publish_many.
            paths = (("acked", "batch", "objects") + (("server read",) if n <= MAX_INFLIGHT else ())
                     + (("per vector",) if n <= args.per_vector_max else ()))
            for path in paths:
                stage = DecisionStage(names)
                subject_of: dict = {}  # the worker's cache of signal subjects
                times: dict[str, list[float]] = (
                    {"at server": [], "acked": []} if path == "acked"
                    else {"server read": [], "core read": []} if path == "server read" else {path: []})
                for t in range(args.warmup + args.reps):
                    vecs, preds = bar_close(names, values, close, ts, starts, t)
                    t0 = time.perf_counter()
                    at_server = None
                    if path == "acked":
                        at_server = await publish_signals(nc, out, stage.decide_batch(vecs, preds), subject_of, t0)
                    elif path == "batch":
                        stage.decide_batch(vecs, preds)
                    elif path == "objects":
                        stage.decide(vecs, preds)
                    elif path == "server read":
                        js_s, core_s = await server_read(nc, out, stage.decide_batch(vecs, preds), subject_of)
                        if t >= args.warmup:
                            times["server read"].append(js_s)
                            times["core read"].append(core_s)
                        continue
                    else:
                        for v, p in zip(vecs, preds):
                            stage.decide_batch([v], [p])
                    if t >= args.warmup:
                        times[path].append(time.perf_counter() - t0)
                        if at_server is not None:
                            times["at server"].append(at_server)
                for name, secs in times.items():
                    ms = np.array(secs) * 1e3
                    med[name], p99 = float(np.median(ms)), float(np.percentile(ms, 99))
                    print(f"{n:>8,} {name:<11} {med[name]:>10.2f} {p99:>9.2f} {n / (med[name] / 1e3):>12,.0f}",
                          flush=True)
            if "per vector" in med:
                print(f"{'':>8} one decide per close is {med['per vector'] / med['batch']:.1f}x faster than "
                      f"one per vector")
            print(f"{'':>8} publishing adds {med['at server'] - med['batch']:.2f} ms until the server has the "
                  f"signals, {med['acked'] - med['batch']:.2f} ms until JetStream acked them all"
                  + (f"; the server alone reads the framed signals in {med['server read']:.2f} ms "
                     f"({med['core read']:.2f} ms as core NATS messages)" if "server read" in med else ""))
        await out.close()
        await nc.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=40, help="bar closes before timing")
    ap.add_argument("--per-vector-max", type=int, default=1000,
                    help="largest N the slow per-vector baseline runs for")
    args = ap.parse_args()
    tune_gc()  # as the inference worker's process runs
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
