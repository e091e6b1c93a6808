"""The inference client against a real tritonserver: micro-batching, routing, shadow, deadlines,
the circuit breaker and recovery after tritonserver is killed.

The model is a tiny three-version one in a temp repository (v1 multiplies by w, v2 by 2w, v3 is
slow), so each behaviour is visible in the numbers; the real models are tested in test_models_*.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from core.errors import InferenceError
from core.inference import CircuitBreaker, InferenceClient, Route, Router, stable_share
from core.triton import PROJECT_ROOT

CONFIG = """
backend: "python"
max_batch_size: 64
input [{ name: "X" data_type: TYPE_FP64 dims: [ 3 ] }]
output [{ name: "Y" data_type: TYPE_FP64 dims: [ 3 ] }]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [{ kind: KIND_CPU count: 1 }]
version_policy: { all {} }
"""

MODEL = """
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _runtime.triton import BatchedModel  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"X": (3,)}
    outputs = ("Y",)

    def load(self, version_dir, xp):
        z = np.load(version_dir / "weights.npz")
        self.w, self.sleep_s = z["w"], float(z["sleep_s"])

    def compute(self, batch, xp):
        time.sleep(self.sleep_s)
        return {"Y": batch["X"] * self.w}
"""

W = np.array([1.0, 2.0, 3.0])
# Deadline for tests that are not about deadlines: generous, CI machines may be busy.
LOADED_MS = 5000.0


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(PROJECT_ROOT / "triton_models" / "_runtime", repo / "_runtime")
    (repo / "scale").mkdir(parents=True)
    (repo / "scale" / "config.pbtxt").write_text(CONFIG)
    for version, (w, sleep_s) in {1: (W, 0.0), 2: (2 * W, 0.0), 3: (W, 0.5)}.items():
        d = repo / "scale" / str(version)
        d.mkdir()
        (d / "model.py").write_text(textwrap.dedent(MODEL))
        np.savez(d / "weights.npz", w=w, sleep_s=np.float64(sleep_s))
    return repo


def fallback(inputs):
    return {"Y": np.zeros_like(inputs["X"])}


def x_of(i: int) -> np.ndarray:
    return np.array([[float(i), 1.0, -1.0]])


def req(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"X": x}


async def test_concurrent_requests_are_micro_batched(repo, triton_server):
    server = triton_server(repo)
    async with InferenceClient(server.grpc_url, {"scale": fallback}, Router({"scale": Route(production=1)}),
                               window_ms=5.0, deadline_ms=LOADED_MS) as client:
        results = await asyncio.gather(*[client.predict("scale", f"s{i}", req(x_of(i))) for i in range(100)])
        for i, r in enumerate(results):
            assert not r.degraded and r.version == 1
            np.testing.assert_array_equal(r.outputs["Y"], x_of(i) * W)
        assert client.metrics()["scale:v1"]["mean_batch"] > 1
    async with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        stats = (await raw.get_inference_statistics("scale", "1", as_json=True))["model_stats"][0]
    # Triton executed fewer model calls than it answered requests: batches larger than one.
    assert int(stats["execution_count"]) < int(stats["inference_count"]) == 100


async def test_canary_share_goes_to_the_candidate_by_stable_hash(repo, triton_server):
    server = triton_server(repo)
    router = Router({"scale": Route(production=1, candidate=2, canary_share=0.3)})
    keys = [f"venue/SYM{i}" for i in range(200)]
    async with InferenceClient(server.grpc_url, {"scale": fallback}, router, deadline_ms=LOADED_MS) as client:
        results = await asyncio.gather(*[client.predict("scale", k, req(x_of(1))) for k in keys])
    for k, r in zip(keys, results):
        want = 2 if stable_share(f"scale/{k}") < 0.3 else 1
        assert (r.version, r.role) == (want, "candidate" if want == 2 else "production"), r.reason
        np.testing.assert_array_equal(r.outputs["Y"], x_of(1) * W * want)
    share = sum(r.version == 2 for r in results) / len(results)
    assert 0.2 < share < 0.4


async def test_promotion_takes_effect_without_a_new_client(repo, triton_server):
    server = triton_server(repo)
    router = Router({"scale": Route(production=1)})
    async with InferenceClient(server.grpc_url, {"scale": fallback}, router, deadline_ms=LOADED_MS) as client:
        assert (await client.predict("scale", "a", req(x_of(1)))).version == 1
        router.set("scale", Route(production=2, previous=1))
        assert (await client.predict("scale", "a", req(x_of(1)))).version == 2


async def test_shadow_version_is_measured_not_used(repo, triton_server):
    server = triton_server(repo)
    router = Router({"scale": Route(production=1, shadow=2)})
    async with InferenceClient(server.grpc_url, {"scale": fallback}, router, deadline_ms=LOADED_MS) as client:
        results = await asyncio.gather(*[client.predict("scale", f"s{i}", req(x_of(i))) for i in range(20)])
        await asyncio.sleep(0.2)
        m = client.metrics()
    assert all(r.version == 1 for r in results)
    assert m["scale:v2"]["shadow_compared"] == 20
    # v2 doubles v1: |2wx - wx| averaged over rows and columns of x_of(i).
    want = np.mean([np.abs(x_of(i) * W).mean() for i in range(20)])
    assert m["scale:v2"]["shadow_mean_abs_diff"] == pytest.approx(want)


async def test_slow_version_times_out_then_the_circuit_opens(repo, triton_server):
    server = triton_server(repo)
    router = Router({"scale": Route(production=3)})
    async with InferenceClient(server.grpc_url, {"scale": fallback}, router, deadline_ms=100,
                               breaker_failures=2, breaker_open_s=60) as client:
        first = [await client.predict("scale", "a", req(x_of(1))) for _ in range(2)]
        assert all(r.degraded and "timed out" in r.reason for r in first)
        assert client.breaker("scale").state == "open"
        r = await client.predict("scale", "a", req(x_of(1)))
        assert r.degraded and "circuit open" in r.reason and r.latency_s < 0.05
        np.testing.assert_array_equal(r.outputs["Y"], np.zeros((1, 3)))


async def test_killed_server_degrades_then_recovers(repo, triton_server):
    server = triton_server(repo)
    router = Router({"scale": Route(production=1)})
    async with InferenceClient(server.grpc_url, {"scale": fallback}, router, deadline_ms=500,
                               breaker_failures=3, breaker_open_s=0.5) as client:
        assert not (await client.predict("scale", "a", req(x_of(1)))).degraded
        server.kill()
        down = [await client.predict("scale", "a", req(x_of(1))) for _ in range(5)]
        assert all(r.degraded for r in down)
        assert client.breaker("scale").state == "open"
        server.start()  # same ports
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            r = await client.predict("scale", "a", req(x_of(2)))
            if not r.degraded or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert not r.degraded and client.breaker("scale").state == "closed"
        np.testing.assert_array_equal(r.outputs["Y"], x_of(2) * W)
        assert client.breaker("scale").opened == 1


async def test_bad_inputs_are_caller_errors(repo, triton_server):
    server = triton_server(repo)
    async with InferenceClient(server.grpc_url, {"scale": fallback}, deadline_ms=LOADED_MS) as client:
        with pytest.raises(InferenceError, match="non-finite"):
            await client.predict("scale", "a", req(np.array([[1.0, np.nan, 0.0]])))
        with pytest.raises(InferenceError, match="unknown model 'nosuch'"):
            await client.predict("nosuch", "a", req(x_of(1)))
        with pytest.raises(InferenceError, match="refused"):
            await client.predict("scale", "a", req(np.ones((1, 4))))
        assert client.breaker("scale").state == "closed"


def test_breaker_states():
    now = [0.0]
    b = CircuitBreaker(failures=2, open_s=10, clock=lambda: now[0])
    assert b.allow()
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # one probe at a time
    b.failure()
    assert b.state == "open"
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.opened == 2
