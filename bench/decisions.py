"""Decision throughput: signals for N symbols on one bar close, through `core.signals.DecisionStage`.

Each symbol replays the real EUR/USD 1h feature vectors (../shared/data/bars/eurusd_1h_2017-2018.csv,
the full feature set computed once) from its own random starting bar, with a forecast prediction
per vector (P_UP from the recent return). The stage first steps every symbol through a warm-up of
bars, then one bar close is timed repeatedly:

- batch: ``stage.decide(vectors, predictions)`` with all N vectors in one call (the vectorized
  path: engine votes, risk sizing, paper fills for every symbol at once);
- per vector: one ``decide`` call per vector, as the live inference worker calls it today (in
  stream order, so that the paper book does not depend on how the stream was chunked).

Prints ms per close (median, p99), signals/s and the batch/per-vector ratio.

Usage:
    .venv/bin/python bench/decisions.py [--sizes 1000,10000] [--reps 20] [--warmup 40]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.features.barfile import load_bars  # noqa: E402
from core.features.featureset import FeatureSet  # noqa: E402
from core.features.offline import compute  # noqa: E402
from core.schema import FeatureVector, Prediction  # noqa: E402
from core.signals import DecisionStage  # noqa: E402

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=40, help="bar closes before timing")
    args = ap.parse_args()
    names, values, close, ts = series()
    first = 150  # past every feature's warm-up
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, NumPy {np.__version__}; "
          f"one thread; {len(names)} features per vector")
    print(f"{'symbols':>8} {'path':<11} {'median ms':>10} {'p99 ms':>9} {'signals/s':>12}")
    for n in (int(x) for x in args.sizes.split(",")):
        rng = np.random.default_rng(n)
        starts = rng.integers(first, len(close) - args.warmup - args.reps - 2, n)
        out = {}
        for path in ("batch", "per vector"):
            stage = DecisionStage(names)
            times = []
            for t in range(args.warmup + args.reps):
                vecs, preds = bar_close(names, values, close, ts, starts, t)
                t0 = time.perf_counter()
                if path == "batch":
                    stage.decide(vecs, preds)
                else:
                    for v, p in zip(vecs, preds):
                        stage.decide([v], [p])
                if t >= args.warmup:
                    times.append(time.perf_counter() - t0)
            ms = np.array(times) * 1e3
            med, p99 = float(np.median(ms)), float(np.percentile(ms, 99))
            out[path] = med
            print(f"{n:>8,} {path:<11} {med:>10.2f} {p99:>9.2f} {n / (med / 1e3):>12,.0f}", flush=True)
        print(f"{'':>8} batch is {out['per vector'] / out['batch']:.1f}x faster than per vector")
    return 0


if __name__ == "__main__":
    sys.exit(main())
