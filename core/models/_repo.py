"""Reading and writing model versions in the Triton repository layout.

A version lives in ``<repo>/<model>/<version>/``: the committed ``model.py`` (Triton Python
backend), ``weights.npz`` (plain NumPy arrays, loadable by NumPy 1.26 inside Triton) and
``card.json`` (provenance: command, seed, data files with their SHA-256, library versions,
metrics). Weights hold no pickles, so loading them runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.errors import ModelError

__all__ = ["DEFAULT_REPO", "version_dir", "save_version", "load_weights", "load_card", "file_sha256"]

# The repository shipped with the project (next to core/).
DEFAULT_REPO = Path(__file__).resolve().parents[2] / "triton_models"


def version_dir(repo: str | os.PathLike, model: str, version: int) -> Path:
    """``<repo>/<model>/<version>``; the model directory must exist (it holds config.pbtxt)."""
    base = Path(repo) / model
    if not (base / "config.pbtxt").is_file():
        raise ModelError(f"no model {model!r} in {repo} (expected {base}/config.pbtxt)")
    if version < 1:
        raise ModelError(f"model versions start at 1, got {version}")
    return base / str(version)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _portable(path: str | os.PathLike) -> str:
    """A path that means the same on another machine: relative to the checkout, else the file name."""
    p = Path(path).resolve()
    root = DEFAULT_REPO.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else p.name


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _versions(packages: Sequence[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_version(path: Path, weights: Mapping[str, np.ndarray], *, seed: int, data: Sequence[str],
                 metrics: Mapping[str, object], extra: Mapping[str, object] | None = None) -> None:
    """Writes ``weights.npz`` and ``card.json`` into a version directory (created if needed; a
    new version gets a copy of the newest version's ``model.py``).

    Args:
        path: the version directory (`version_dir`).
        weights: named arrays; strings go in as NumPy unicode arrays, never objects.
        seed: the training seed.
        data: the training data: file paths (hashed into the card) or descriptions such as
            ``synthetic(n_bars=..., seed=...)``.
        metrics: training metrics to record.
        extra: further card fields (architecture, labels, feature names).
    """
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "model.py").is_file():
        # A new version serves with the newest existing version's code (it reads its weights).
        code = sorted((p for p in path.parent.glob("*/model.py") if p.parent.name.isdigit()),
                      key=lambda p: int(p.parent.name))
        if code:
            shutil.copy2(code[-1], path / "model.py")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    bad = [k for k, v in arrays.items() if v.dtype == object]
    if bad:
        raise ModelError(f"weights {bad} are object arrays; store numbers or fixed-width strings")
    tmp = path / "weights.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path / "weights.npz")
    sources = [{"path": _portable(d), "sha256": file_sha256(d)} if Path(d).is_file() else {"description": str(d)}
               for d in data]
    card = {
        "model": path.parent.name,
        "version": int(path.name),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["tickmesh", *sys.argv[1:]]) if Path(sys.argv[0]).name == "tickmesh" else "",
        "seed": seed,
        "data": sources,
        "git_commit": _git_commit(),
        "libraries": _versions(["numpy", "torch", "scikit-learn"]),
        "metrics": dict(metrics),
        **dict(extra or {}),
    }
    (path / "card.json").write_text(json.dumps(card, indent=2, default=float) + "\n")


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of ``<path>/weights.npz``.

    Raises:
        ModelError: the version has no weights (train it with ``tickmesh models train``).
    """
    f = Path(path) / "weights.npz"
    if not f.is_file():
        raise ModelError(f"no weights at {f}; train them with `tickmesh models train`")
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_card(path: str | os.PathLike) -> dict:
    f = Path(path) / "card.json"
    if not f.is_file():
        raise ModelError(f"no model card at {f}")
    return json.loads(f.read_text())
