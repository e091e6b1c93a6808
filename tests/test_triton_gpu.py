"""The shipped repository on a real tritonserver, with KIND_CPU and with KIND_GPU instances: every
model READY, every output equal to the NumPy forward pass in this process, bad input refused by
name, and on the GPU the model stubs holding GPU memory (so the models ran on CuPy, not NumPy).

The GPU case runs where the model-runtime venv (TICKMESH_TRITON__RUNTIME_VENV, else the
project's) has CuPy and sees a CUDA device, and is skipped elsewhere with the reason. On a GPU
machine: ``TICKMESH_TRITON__RUNTIME_VENV=/path/to/venv pytest tests/test_triton_gpu.py``.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from core.models._repo import load_weights
from core.models.data import MODEL_FEATURES
from tests._models import MODELS, recorded_dataset, runtime_module

PROBE = ("import cupy, numpy; n = cupy.cuda.runtime.getDeviceCount(); assert n > 0, 'no CUDA device'; "
         "print(numpy.__version__)")
TEXTS = ["Operating profit rose sharply and the company raised its outlook.",
         "The company warned of lower sales and cut jobs.",
         "The annual general meeting will be held in Helsinki."]


@pytest.fixture(scope="module")
def gpu_runtime(triton_runtime):
    """The model-runtime venv, when its Python has CuPy and a CUDA device; else the test skips."""
    try:
        done = subprocess.run([str(triton_runtime / "bin" / "python"), "-c", PROBE], capture_output=True,
                              text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"model-runtime venv {triton_runtime} cannot run Python: {exc}")
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip().strip("=")]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        pytest.skip(f"no GPU for KIND_GPU models: CuPy in {triton_runtime} says: {reason}")
    return triton_runtime, int(done.stdout.split(".")[0])


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    x, _, _ = recorded_dataset("eurusd_1h_2017-2018.csv", 0, 600).supervised()
    return np.ascontiguousarray(x[::7])


def _reference(model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's highest shipped version run by its own runtime code on NumPy in this process."""
    if model == "anomaly":
        mod = runtime_module("anomaly")
        return mod.forward(np, mod.AnomalyParams(load_weights(MODELS / "anomaly" / "1"), np), x)
    if model == "forecast":
        mod = runtime_module("nn")
        return mod.forecast_forward(mod.prepare_forecast(load_weights(MODELS / "forecast" / "2"), np), x, np)
    if model == "regime":
        mod = runtime_module("hmm")
        return mod.forward(np, mod.HmmParams(load_weights(MODELS / "regime" / "1"), np), x)
    raise AssertionError(model)


def _stub_pids_on_gpu() -> set[int]:
    """Processes holding GPU memory whose command is a Python-backend stub (nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    assert smi, "nvidia-smi not found on a machine where CuPy sees a GPU"
    out = subprocess.run([smi, "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True, check=True).stdout
    pids = {int(p) for p in out.split() if p.strip().isdigit()}
    stubs = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"triton_python_backend_stub" in f.read():
                    stubs.add(pid)
        except OSError:
            continue
    return stubs


async def _infer(client, model: str, x: np.ndarray, outputs) -> dict[str, np.ndarray]:
    inp = grpcclient.InferInput("FEATURES", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    res = await client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {n: res.as_numpy(n) for n in outputs}


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
async def test_instances_serve_the_reference_forward(kind, request, triton_server, windows):
    if kind == "gpu":
        request.getfixturevalue("gpu_runtime")
    server = triton_server(MODELS, instance_kind=kind)
    assert server.models == ["anomaly", "forecast", "market", "regime", "sentiment"]
    outputs = {"anomaly": ("SCORE", "FLAG", "IFOREST", "RECON"), "forecast": ("MEAN", "STD", "P_UP"),
               "regime": ("PROBS", "LABEL")}
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for model in server.models:
            assert await client.is_model_ready(model), model
        served = {}
        for model, names in outputs.items():
            served[model] = await _infer(client, model, windows, names)
            ref = _reference(model, windows)
            for name in names:
                got, want = served[model][name], np.asarray(ref[name])
                assert got.shape == want.shape, f"{model}.{name}: {got.shape} != {want.shape}"
                if want.dtype.kind in "bi":
                    np.testing.assert_array_equal(got, want, err_msg=f"{model}.{name}")
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=f"{model}.{name}")

        # market (BLS) passes its sub-models' outputs (in GPU memory on the GPU) through unchanged.
        market = await _infer(client, "market", windows, ("ANOMALY_SCORE", "FORECAST_MEAN", "REGIME_PROBS"))
        np.testing.assert_array_equal(market["ANOMALY_SCORE"], served["anomaly"]["SCORE"])
        np.testing.assert_array_equal(market["FORECAST_MEAN"], served["forecast"]["MEAN"])
        np.testing.assert_array_equal(market["REGIME_PROBS"], served["regime"]["PROBS"])

        bad = windows[:3].copy()
        bad[1, 7, MODEL_FEATURES.index("cci_14")] = np.inf
        with pytest.raises(InferenceServerException, match="cci_14"):
            await _infer(client, "forecast", bad, ("MEAN",))
        if kind == "gpu":
            assert len(_stub_pids_on_gpu()) >= 4, "the model stubs hold no GPU memory: the models did not run on CuPy"


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
async def test_sentiment_reads_strings_and_scores_on_the_instance(kind, request, triton_server):
    if kind == "gpu":
        _, numpy_major = request.getfixturevalue("gpu_runtime")
        if numpy_major >= 2:
            # nvidia-pytriton 0.7.0's stub builds a NumPy view of every string tensor in C++ before
            # the model sees it; under NumPy 2 that view is garbage and the stub dies (seen on an
            # H100 with the CUDA image's NumPy 2.5 and CuPy 14, 2026-11-26). Numeric tensors go
            # through DLPack and are not affected (the test above).
            pytest.skip("string inputs need a model runtime with NumPy < 2 for this Triton stub; "
                        "the GPU runtime here has NumPy 2")
    server = triton_server(MODELS, ["sentiment"], instance_kind=kind)
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        # Strings stay on the host; on a GPU instance the scores are computed on the GPU.
        text = np.array([t.encode() for t in TEXTS], dtype=object).reshape(-1, 1)
        inp = grpcclient.InferInput("TEXT", list(text.shape), "BYTES")
        inp.set_data_from_numpy(text)
        res = await client.infer("sentiment", [inp], model_version="1")
    lexicon = runtime_module("text").Lexicon.from_weights(load_weights(MODELS / "sentiment" / "1"))
    want = lexicon.probs(TEXTS, np)
    np.testing.assert_allclose(res.as_numpy("PROBS"), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(res.as_numpy("LABEL").ravel(), want.argmax(axis=1))
