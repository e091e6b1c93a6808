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

--instance-kind gpu loads the model with KIND_GPU instances (CuPy inside the model, DLPack in and
out); --instance-kind cpu,gpu runs both, one server after the other, in this process. The GPU
instances run in --gpu-runtime-venv (a venv with CuPy; default --runtime-venv), the CPU ones in
--runtime-venv (default the project's model-runtime venv, built when it is missing). Before
timing, one answer of each server is checked against the in-process forward pass (a server that
returns wrong or empty outputs is not timed).

Usage:
    .venv/bin/python bench/inference.py [--model forecast] [--seconds 3] [--batches 1,8,64,256]
        [--concurrency 1,16,64] [--client-concurrency 1,16,64,256,1024] [--window-ms 2]
        [--instance-kind cpu|gpu|cpu,gpu] [--runtime-venv PATH] [--gpu-runtime-venv PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "triton_models"))

from core.inference import InferenceClient, Route, Router  # noqa: E402
from core.models._repo import load_weights  # noqa: E402
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


def forward_fn(model: str):
    """The model's own NumPy forward pass of its highest trained version (None: not wired)."""
    if model != "forecast":
        return None
    from _runtime.nn import forecast_forward, prepare_forecast

    repo = PROJECT_ROOT / "triton_models" / model
    version = max(int(p.parent.name) for p in repo.glob("*/weights.npz"))
    params = prepare_forecast(load_weights(repo / str(version)), np)
    return lambda batch: forecast_forward(params, batch, np)


async def check_answer(url: str, model: str, x: np.ndarray, fn) -> None:
    """One request of 64 rows must equal the in-process forward pass (1e-6).

    Raises:
        SystemExit: the server's answer differs (or is empty); the figures would be meaningless.
    """
    import tritonclient.grpc.aio as grpcclient

    if fn is None:
        return
    want = fn(x[:64])
    async with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("FEATURES", [64, *x.shape[1:]], "FP64")
        inp.set_data_from_numpy(x[:64])
        res = await client.infer(model, [inp])
    for name, w in want.items():
        got = res.as_numpy(name)
        if got is None or got.shape != w.shape or not np.allclose(got, w, rtol=1e-6, atol=1e-9):
            raise SystemExit(f"bench/inference.py: {model}.{name} from the server differs from the in-process "
                             f"forward pass (shape {None if got is None else got.shape}, want {w.shape}); not timing it")


def gpu_line() -> str:
    """The GPU's name and driver (nvidia-smi), or why there is none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "gpu: none (no nvidia-smi)"
    out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    return f"gpu: {out or 'none'}"


def in_process(fn, x: np.ndarray, seconds: float) -> float:
    """Rows/s of the model's own NumPy forward pass, batch 256, this process."""
    if fn is None:
        print("(no in-process baseline wired for this model)")
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
    ap.add_argument("--instance-kind", default="cpu", help="cpu, gpu or cpu,gpu (default cpu)")
    ap.add_argument("--runtime-venv", type=Path, default=None,
                    help="model-runtime venv used as it is (default: the project's, built if missing)")
    ap.add_argument("--gpu-runtime-venv", type=Path, default=None,
                    help="model-runtime venv of the GPU instances, with CuPy (default: --runtime-venv)")
    args = ap.parse_args()
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    kinds = [k for k in args.instance_kind.split(",") if k]
    if not kinds or set(kinds) - {"cpu", "gpu"}:
        ap.error(f"--instance-kind takes cpu, gpu or cpu,gpu, not {args.instance_kind!r}")
    x = windows(4096)
    fn = forward_fn(args.model)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}; "
          f"model {args.model}, input {list(x.shape[1:])} float64, {args.seconds:g} s per cell")
    if "gpu" in kinds:
        print(gpu_line())
    venv = args.runtime_venv or prepare_runtime(DEFAULT_RUNTIME_VENV)
    venvs = {"cpu": venv, "gpu": args.gpu_runtime_venv or venv}
    print(f"{'':<34} {'inferences/s':>12} {'p50 ms':>9} {'p99 ms':>9}")
    base = in_process(fn, x, args.seconds)
    results = {}
    for kind in kinds:
        print(f"\ninstance kind {kind} (model-runtime venv {venvs[kind]})")
        with tempfile.TemporaryDirectory() as work:
            server = TritonServer(PROJECT_ROOT / "triton_models", work, venvs[kind], models=[args.model],
                                  instance_kind=kind)
            server.start()
            try:
                asyncio.run(check_answer(server.grpc_url, args.model, x, fn))
                d = asyncio.run(direct(server.grpc_url, args.model, x, ints(args.batches), ints(args.concurrency),
                                       args.seconds))
                c = asyncio.run(through_client(server.grpc_url, args.model, x, ints(args.client_concurrency),
                                               args.seconds, args.window_ms))
            finally:
                server.stop()
        results[kind] = d, c
    print("\nratios")
    for kind, (d, c) in results.items():
        for conc, rate in c.items():
            if (1, conc) in d:
                print(f"  {kind}: client / direct batch 1 at concurrency {conc:>4}: {rate / d[(1, conc)]:6.1f}x")
        print(f"  {kind}: best direct / in-process: {max(d.values()) / base:6.2f}x;  "
              f"best client / in-process: {max(c.values()) / base:6.2f}x")
    if len(results) == 2:
        (dc, cc), (dg, cg) = results["cpu"], results["gpu"]
        for cell in dc:
            if cell in dg:
                print(f"  gpu / cpu direct batch {cell[0]:>4} x conc {cell[1]:>4}: {dg[cell] / dc[cell]:6.2f}x")
        print(f"  gpu / cpu best client: {max(cg.values()) / max(cc.values()):6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
