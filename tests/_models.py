"""Helpers of the model tests: recorded bars, temp Triton repositories, training options, requests.

A temp repository is laid out like ``triton_models/`` (the shared ``_runtime`` code beside one
model's directory with its ``config.pbtxt``), so that both ``tickmesh models train`` and a real
tritonserver accept it; tests fill in the versions they need.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType
from typing import Iterable, Mapping, Sequence

import numpy as np

from core.features.barfile import BarSeries, load_bars
from core.models.data import Dataset, feature_matrix
from tests.conftest import shared_file

__all__ = [
    "MODELS",
    "recorded_bars",
    "recorded_dataset",
    "head_csv",
    "runtime_module",
    "temp_repo",
    "copy_version",
    "served_repo",
    "train_args",
    "infer_windows",
]

# The shipped repository.
MODELS = Path(__file__).resolve().parents[1] / "triton_models"
_NO_CACHE = shutil.ignore_patterns("__pycache__")


def recorded_bars(name: str, start: int, stop: int) -> BarSeries:
    """Bars ``start:stop`` of a recorded bar file in ../shared/data/bars."""
    series = load_bars(shared_file(f"bars/{name}"))[0]
    cols = {k: v[start:stop] for k, v in series.columns.items()}
    return BarSeries(name=f"{series.name}[{start}:{stop}]", columns=cols, tf=series.tf)


def recorded_dataset(name: str, start: int, stop: int) -> Dataset:
    """`recorded_bars` with the model features."""
    part = recorded_bars(name, start, stop)
    cols = part.columns
    return Dataset(name=part.name, ts_ns=cols["ts_ns"], close=cols["close"], features=feature_matrix(part))


def head_csv(tmp_path: Path, name: str, rows: int) -> Path:
    """The first ``rows`` bars of a recorded file as a CSV of its own (a test input, not shipped)."""
    lines = shared_file(f"bars/{name}").read_text().splitlines()[:rows + 1]
    out = tmp_path / f"head_{name}"
    out.write_text("\n".join(lines) + "\n")
    return out


def runtime_module(name: str) -> ModuleType:
    """``triton_models/_runtime/<name>.py``, imported by path as tritonserver's model.py does."""
    spec = importlib.util.spec_from_file_location(f"tickmesh_runtime_{name}", MODELS / "_runtime" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def temp_repo(tmp_path: Path, model: str, versions: Iterable[int] = ()) -> Path:
    """``tmp_path/"repo"``: the shipped ``_runtime`` and ``model``'s config.pbtxt, plus the shipped
    model.py (no weights) of each of ``versions``.

    Calling it again on the same ``tmp_path`` keeps what the repository holds.
    """
    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "_runtime", repo / "_runtime", ignore=_NO_CACHE, dirs_exist_ok=True)
    (repo / model).mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS / model / "config.pbtxt", repo / model / "config.pbtxt")
    for v in versions:
        (repo / model / str(v)).mkdir(exist_ok=True)
        shutil.copy(MODELS / model / str(v) / "model.py", repo / model / str(v) / "model.py")
    return repo


def copy_version(repo: Path, model: str, version: int, as_version: int) -> Path:
    """The shipped ``model`` version (code, weights, card) as version ``as_version`` of ``repo``."""
    target = repo / model / str(as_version)
    shutil.copytree(MODELS / model / str(version), target, ignore=_NO_CACHE)
    return target


def served_repo(tmp_path: Path, model: str, weights: Mapping[str, np.ndarray]) -> Path:
    """A temp repository to serve: ``model`` version 1 with ``weights`` (fitted by the test), version
    2 the shipped version 1."""
    repo = temp_repo(tmp_path, model, [1])
    np.savez(repo / model / "1" / "weights.npz", **weights)
    copy_version(repo, model, 1, as_version=2)
    return repo


def train_args(tmp_path: Path, module: ModuleType, *argv: str) -> argparse.Namespace:
    """``tickmesh models train <module.NAME> ARGV`` options, into ``temp_repo(tmp_path, module.NAME)``.

    ``--repo`` defaults to that repository, ``--version`` to 1 and ``--seed`` to 0; the rest are the
    model's own options (its ``add_arguments``).
    """
    repo = temp_repo(tmp_path, module.NAME)
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(repo))
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    module.add_arguments(p)
    return p.parse_args(list(argv))


async def infer_windows(client, model: str, version: int, windows: np.ndarray,
                        outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One request of feature windows (input ``FEATURES``, FP64) to ``model`` version ``version``.

    Args:
        client: a ``tritonclient.grpc.aio.InferenceServerClient``.
        outputs: the outputs to ask for; the result maps each to its array.
    """
    import tritonclient.grpc.aio as grpcclient

    inp = grpcclient.InferInput("FEATURES", list(windows.shape), "FP64")
    inp.set_data_from_numpy(windows)
    res = await client.infer(model, [inp], model_version=str(version), client_timeout=30,
                             outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {n: res.as_numpy(n) for n in outputs}
