"""The embedded tritonserver: runtime venv, launch, explicit loading, and the shared model glue.

A tiny model in a temp repository (with the real ``triton_models/_runtime``) checks what every
tickmesh model relies on: per-request input checks inside a dynamic batch, clear errors, and a
load failure reported with Triton's reason.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from core.errors import TritonServerError
from core.triton import PROJECT_ROOT, repository_models

CONFIG = """
backend: "python"
max_batch_size: 16
input [{ name: "X" data_type: TYPE_FP64 dims: [ 3 ] }]
output [{ name: "Y" data_type: TYPE_FP64 dims: [ 3 ] }]
dynamic_batching { max_queue_delay_microseconds: 200000 }
instance_group [{ kind: KIND_CPU count: 1 }]
"""

MODEL = """
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _runtime.triton import BatchedModel  # noqa: E402


class TritonPythonModel(BatchedModel):
    inputs = {"X": (3,)}
    outputs = ("Y", "N")
    feature_names = ("a", "b", "c")

    def load(self, version_dir, xp):
        self.w = xp.asarray(np.load(version_dir / "weights.npz")["w"])

    def compute(self, batch, xp):
        x = batch["X"]
        # N: how many rows were computed together, so the test sees the dynamic batch.
        return {"Y": x * self.w, "N": xp.full((x.shape[0], 1), float(x.shape[0]))}
"""


W_TEST = [1.0, 2.0, 3.0]


def _repo(tmp_path: Path, model_py: str = MODEL) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(PROJECT_ROOT / "triton_models" / "_runtime", repo / "_runtime")
    (repo / "scale" / "1").mkdir(parents=True)
    config = CONFIG.replace('output [{ name: "Y" data_type: TYPE_FP64 dims: [ 3 ] }]',
                            'output [{ name: "Y" data_type: TYPE_FP64 dims: [ 3 ] },'
                            ' { name: "N" data_type: TYPE_FP64 dims: [ 1 ] }]')
    (repo / "scale" / "config.pbtxt").write_text(config)
    (repo / "scale" / "1" / "model.py").write_text(textwrap.dedent(model_py))
    np.savez(repo / "scale" / "1" / "weights.npz", w=np.array([1.0, 2.0, 3.0]))
    return repo


async def _infer(client, x: np.ndarray) -> dict[str, np.ndarray]:
    inp = grpcclient.InferInput("X", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    res = await client.infer("scale", [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in ("Y", "N")])
    return {n: res.as_numpy(n) for n in ("Y", "N")}


def test_repository_models_are_the_dirs_with_a_config(tmp_path):
    repo = _repo(tmp_path)
    assert repository_models(repo) == ["scale"]  # _runtime holds code, not a model


async def test_model_loads_and_answers(tmp_path, triton_server):
    server = triton_server(_repo(tmp_path))
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert await client.is_model_ready("scale")
        out = await _infer(client, np.array([[1.0, 1.0, 1.0], [2.0, 0.5, -1.0]]))
    np.testing.assert_array_equal(out["Y"], [[1.0, 2.0, 3.0], [2.0, 1.0, -3.0]])


async def test_bad_request_fails_alone_inside_a_dynamic_batch(tmp_path, triton_server):
    server = triton_server(_repo(tmp_path))
    good = np.ones((1, 3))
    nan = np.array([[1.0, np.nan, 1.0]])
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        results = await asyncio.gather(*[_infer(client, x) for x in (good, nan, good, good)],
                                       return_exceptions=True)
        with pytest.raises(InferenceServerException, match="unexpected shape|expected"):
            await _infer(client, np.ones((1, 4)))
    assert isinstance(results[1], InferenceServerException)
    assert "non-finite" in str(results[1]) and "(b)" in str(results[1])
    ok = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, dict) for r in ok), results
    np.testing.assert_array_equal(ok[0]["Y"], [[1.0, 2.0, 3.0]])
    # The three good requests (and the bad one) reached the model together.
    assert max(float(r["N"][0, 0]) for r in ok) > 1


async def test_unknown_model_is_a_clear_error(tmp_path, triton_server):
    server = triton_server(_repo(tmp_path))
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="nosuch"):
            await client.infer("nosuch", [grpcclient.InferInput("X", [1, 3], "FP64")])


def test_load_failure_reports_the_reason(tmp_path, triton_server):
    broken = MODEL.replace('self.w = xp.asarray(np.load(version_dir / "weights.npz")["w"])',
                           'raise RuntimeError("weights are corrupt")')
    with pytest.raises(TritonServerError, match="weights are corrupt"):
        triton_server(_repo(tmp_path, broken))


def test_asking_for_a_model_not_in_the_repository(tmp_path, triton_server):
    with pytest.raises(TritonServerError, match="not in"):
        triton_server(_repo(tmp_path), models=["scale", "forecast"])


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


def test_stop_ends_the_server_and_its_stubs(tmp_path, triton_server):
    repo = _repo(tmp_path)
    server = triton_server(repo)
    assert len(_processes_mentioning(str(repo))) >= 2  # tritonserver and the model's stub
    server.stop()
    assert not server.running
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(repo)) == []


async def test_versions_without_weights_are_not_served(tmp_path, triton_server):
    repo = _repo(tmp_path)
    (repo / "scale" / "2").mkdir()
    (repo / "scale" / "2" / "model.py").write_text(textwrap.dedent(MODEL))  # never trained here
    server = triton_server(repo)
    assert server.trained_versions("scale") == [1]
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert await client.is_model_ready("scale", "1")
        assert not await client.is_model_ready("scale", "2")
        out = await _infer(client, np.ones((1, 3)))  # no version asked: the trained one answers
    np.testing.assert_array_equal(out["Y"], [W_TEST])


def test_a_model_without_any_trained_version_is_a_clear_error(tmp_path, triton_server):
    repo = _repo(tmp_path)
    (repo / "scale" / "1" / "weights.npz").unlink()
    with pytest.raises(TritonServerError, match="no trained version.*tickmesh models train scale"):
        triton_server(repo)
