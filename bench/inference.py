"""Inference throughput and latency: direct Triton requests against the micro-batching client.

Starts the embedded tritonserver on the shipped repository (triton_models/, CPU, Python backend)
and times one model (default ``forecast``, its production = highest version) on real-valued
windows: feature windows of synthetic bars (`core.models.data.synthetic_dataset`, the data the
shipped weights were trained on).

Direct:   ``concurrency`` asyncio tasks each sending requests of ``batch`` rows through
          tritonclient.grpc.aio, back to back: inferences/s (rows) and p50/p99 latency per request.
Client:   ``concurrency`` tasks each calling `core.inference.InferenceClient.predict` with ONE row
          (what the inference worker does per symbol), back to back: the client gathers rows of
          concurrent callers into Triton requests (window ``--window-ms``): inferences/s and p50/p99
          latency per prediction, and the mean rows per Triton request.
In-process: the model's NumPy forward pass (`triton_models/_runtime`) on the same rows in this
          process, batch 256: the ceiling with no server, no serialisation, no network.

Ratios: client inferences/s over direct batch-1 at the same concurrency (what micro-batching buys a
caller that has one row at a time), and each over in-process.

Usage:
    .venv/bin/python bench/inference.py [--model forecast] [--seconds 3] [--batches 1,8,64,256]
        [--concurrency 1,16,64] [--client-concurrency 1,16,64,256,1024] [--window-ms 2]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "triton_models"))

from core.inference import InferenceClient, Route, Router  # noqa: E402
from core.models.data import synthetic_dataset  # noqa: E402
from core.models.serving import FALLBACKS  # noqa: E402
from core.triton import DEFAULT_RUNTIME_VENV, PROJECT_ROOT, TritonServer, prepare_runtime  # noqa: E402


def windows(n: int, seed: int = 11) -> np.ndarray:
    x, _, _ = synthetic_dataset(n + 200, seed).supervised()
    return np.ascontiguousarray(x[:n])


async def _timed(worker, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    """Runs ``worker()`` (returns rows done) in ``concurrency`` loops for ``seconds``."""
    latencies: list[float] = []
    rows = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal rows
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            done = await worker()  # not `rows += await ...`: that reads rows before the await
            rows += done
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return rows, latencies


def _row(label: str, rows: int, seconds: float, lat: list[float], extra: str = "") -> tuple[str, float]:
    rate = rows / seconds
    p50, p99 = (np.percentile(np.array(lat) * 1e3, [50, 99]) if lat else (np.nan, np.nan))
    print(f"{label:<34} {rate:>12,.0f} {p50:>9.2f} {p99:>9.2f}  {extra}", flush=True)
    return label, rate


async def direct(url: str, model: str, x: np.ndarray, batches, concurrencies, seconds: float) -> dict:
    import tritonclient.grpc.aio as grpcclient

    out = {}
    async with grpcclient.InferenceServerClient(url) as client:
        for b in batches:
            for c in concurrencies:
                cursor = [0]

                async def one(b=b) -> int:
                    i = cursor[0] % (len(x) - b)
                    cursor[0] += b
                    inp = grpcclient.InferInput("FEATURES", [b, *x.shape[1:]], "FP64")
                    inp.set_data_from_numpy(x[i:i + b])
                    await client.infer(model, [inp])
                    return b

                await one()  # warm
                rows, lat = await _timed(one, c, seconds)
                out[(b, c)] = _row(f"direct  batch {b:>4} x conc {c:>4}", rows, seconds, lat)[1]
    return out


async def through_client(url: str, model: str, x: np.ndarray, concurrencies, seconds: float,
                         window_ms: float) -> dict:
    out = {}
    for c in concurrencies:
        async with InferenceClient(url, {model: FALLBACKS[model]}, Router({model: Route()}), window_ms=window_ms,
                                   deadline_ms=30_000) as client:
            cursor = [0]

            async def one() -> int:
                i = cursor[0] % len(x)
                cursor[0] += 1
                res = await client.predict(model, f"s{i}", {"FEATURES": x[i:i + 1]})
                if res.degraded:
                    raise RuntimeError(f"degraded answer during the benchmark: {res.reason}")
                return 1

            await one()
            rows, lat = await _timed(one, c, seconds)
            m = client.metrics()
            mean_batch = next(v["mean_batch"] for k, v in m.items() if k.startswith(f"{model}:v"))
            out[c] = _row(f"client  1 row    x conc {c:>4}", rows, seconds, lat,
                          f"mean rows per Triton request {mean_batch:.1f}")[1]
    return out


def in_process(model: str, x: np.ndarray, seconds: float) -> float:
    """Rows/s of the model's own NumPy forward pass, batch 256, this process."""
    repo = PROJECT_ROOT / "triton_models" / model
    version = max(int(p.parent.name) for p in repo.glob("*/weights.npz"))
    with np.load(repo / str(version) / "weights.npz", allow_pickle=False) as z:
        weights = {k: z[k] for k in z.files}
    if model == "forecast":
        from _runtime.nn import forecast_forward, prepare_forecast

        params = prepare_forecast(weights, np)
        fn = lambda batch: forecast_forward(params, batch, np)  # noqa: E731
    else:
        print(f"(no in-process baseline wired for {model})")
        return float("nan")
    b = min(256, len(x))
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x[:b])
        rows += b
    rate = rows / (time.perf_counter() - t0)
    print(f"{'in-process NumPy batch ' + str(b):<34} {rate:>12,.0f}", flush=True)
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="forecast")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell (default 3)")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--client-concurrency", default="1,16,64,256,1024")
    ap.add_argument("--window-ms", type=float, default=2.0, help="client micro-batch window (default 2)")
    args = ap.parse_args()
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    x = windows(4096)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}; "
          f"model {args.model}, input {list(x.shape[1:])} float64, {args.seconds:.0f} s per cell")
    prepare_runtime(DEFAULT_RUNTIME_VENV)
    with tempfile.TemporaryDirectory() as work:
        server = TritonServer(PROJECT_ROOT / "triton_models", work, DEFAULT_RUNTIME_VENV, models=[args.model])
        server.start()
        try:
            print(f"{'':<34} {'inferences/s':>12} {'p50 ms':>9} {'p99 ms':>9}")
            base = in_process(args.model, x, args.seconds)
            d = asyncio.run(direct(server.grpc_url, args.model, x, ints(args.batches), ints(args.concurrency),
                                   args.seconds))
            c = asyncio.run(through_client(server.grpc_url, args.model, x, ints(args.client_concurrency),
                                           args.seconds, args.window_ms))
        finally:
            server.stop()
    print("\nratios")
    for conc, rate in c.items():
        if (1, conc) in d:
            print(f"  client / direct batch 1 at concurrency {conc:>4}: {rate / d[(1, conc)]:6.1f}x")
    best = max(d.values())
    print(f"  best direct / in-process: {best / base:6.2f}x;  best client / in-process: {max(c.values()) / base:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
