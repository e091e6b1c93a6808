"""Prepares and runs the embedded Triton Inference Server (the tritonserver of nvidia-pytriton).

The models run in their own *model-runtime venv* (nvidia-pytriton, which pins NumPy < 2, plus what
``triton_models/requirements.txt`` lists), because the Python backend's stub returns empty
outputs under NumPy 2 while the app venv needs NumPy 2 for chDB. `prepare_runtime` builds that
venv once (a stamp records the requirements it was built from); `prepare_backend` copies the
Python backend and the stub matching the venv's Python into a backend dir; `TritonServer` starts
tritonserver with the venv first on PATH, in explicit model-control mode, loads each model
(optionally as KIND_GPU through a config override, the repository unchanged) and waits until
every one is READY.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from core._process import ServerProcess
from core.errors import TritonServerError
from core.natsserver import die_with_parent, free_port

if TYPE_CHECKING:
    from core.config import Config

__all__ = [
    "PROJECT_ROOT",
    "DEFAULT_RUNTIME_VENV",
    "repository_models",
    "served_versions",
    "prepare_runtime",
    "prepare_backend",
    "TritonServer",
    "server_from_config",
    "register",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNTIME_VENV = PROJECT_ROOT / ".venv-triton"
_STAMP = ".tickmesh-requirements.sha256"


def repository_models(repo: str | os.PathLike) -> list[str]:
    """The models of a repository: its directories holding a config.pbtxt, sorted."""
    return sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt"))


def served_versions(repo: str | os.PathLike, model: str) -> list[int]:
    """Version directories of ``model`` holding ``weights.npz``; every version (with a model.py)
    of a model whose config says ``parameters { key: "weights" value: { string_value: "none" } }``."""
    base = Path(repo) / model
    if re.search(r'key:\s*"weights"\s+value:\s*{\s*string_value:\s*"none"', (base / "config.pbtxt").read_text()):
        return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "model.py").is_file())
    return sorted(int(p.parent.name) for p in base.glob("*/weights.npz") if p.parent.name.isdigit())


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3.*/site-packages"))
    if not found:
        raise TritonServerError(f"{venv} is not a virtual environment (no lib/python3.*/site-packages)")
    return found[-1]


def prepare_runtime(venv: str | os.PathLike = DEFAULT_RUNTIME_VENV, requirements: str | os.PathLike | None = None,
                    log: Callable[[str], None] = lambda _: None) -> Path:
    """Creates (or updates) the model-runtime venv; does nothing when it is current.

    Args:
        venv: where the venv lives.
        requirements: pip requirements file (default ``triton_models/requirements.txt``).
        log: receives one line per step taken.

    Raises:
        TritonServerError: venv creation or pip failed (pip's output is in the message).
    """
    venv = Path(venv)
    requirements = Path(requirements or PROJECT_ROOT / "triton_models" / "requirements.txt")
    if not requirements.is_file():
        raise TritonServerError(f"model-runtime requirements not found: {requirements}")
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == want and _venv_python(venv).exists():
        return venv
    steps = []
    if not _venv_python(venv).exists():
        steps.append(("creating the model-runtime venv " + str(venv), [sys.executable, "-m", "venv", str(venv)]))
    steps.append((f"installing {requirements.name} into it (first time: about a minute)",
                   [str(_venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(requirements)]))
    for what, cmd in steps:
        log(what)
        # The app venv's variables must not leak into the runtime venv's pip.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise TritonServerError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    stamp.write_text(want + "\n")
    return venv


def _pytriton_dir(venv: Path) -> Path:
    d = _site_packages(venv) / "pytriton" / "tritonserver"
    if not (d / "bin" / "tritonserver").exists():
        raise TritonServerError(f"no tritonserver in {venv}; run `tickmesh triton prepare` (make setup does)")
    return d


@functools.lru_cache(maxsize=None)
def _runtime_python(venv: Path) -> tuple[str, str]:
    """(major.minor, the directory of its libpython) of the venv's Python: the stub links that
    libpython, which a Python built outside the system (pyenv, uv, a CUDA image's) keeps off the
    loader's default path. Probed once per venv (a subprocess each time otherwise)."""
    probe = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([str(_venv_python(venv)), "-c", probe], capture_output=True, text=True, check=True).stdout
    version, libdir = out.splitlines()
    return version, libdir


def prepare_backend(venv: str | os.PathLike, backend_dir: str | os.PathLike) -> Path:
    """Copies the Python backend with the stub for the venv's Python into ``backend_dir/python``.

    Returns:
        ``backend_dir`` (pass it as ``--backend-directory``).
    """
    venv, backend_dir = Path(venv), Path(backend_dir)
    triton = _pytriton_dir(venv)
    py = _runtime_python(venv.resolve())[0]
    stub = triton / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.exists():
        have = sorted(p.name for p in (triton / "python_backend_stubs").iterdir())
        raise TritonServerError(f"nvidia-pytriton has no Python backend stub for Python {py} (it has {have})")
    dest = backend_dir / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for src in [*(triton / "backends" / "python").glob("*.*"), stub]:
        if src.is_file():
            # Copy then rename: a stub of a killed server may still be running from the old file.
            tmp = dest / f".{src.name}.tmp"
            shutil.copy2(src, tmp)
            os.replace(tmp, dest / src.name)
    return backend_dir


class TritonServer(ServerProcess):
    """One tritonserver process serving a model repository on loopback ports.

    Stopping waits up to 15 s: Triton unloads every model and its Python stubs first.

    Args:
        repo: the model repository (``triton_models/``).
        work_dir: backend dir and log go here.
        runtime_venv: the model-runtime venv (`prepare_runtime`).
        models: models to load (default: every model of the repository).
        instance_kind: "cpu", or "gpu" to load every model with KIND_GPU instances.
        host: address to listen on.
        grpc_port, http_port, metrics_port: 0 picks free ones.
    """

    def __init__(self, repo: str | os.PathLike, work_dir: str | os.PathLike,
                 runtime_venv: str | os.PathLike = DEFAULT_RUNTIME_VENV, models: Sequence[str] = (),
                 instance_kind: str = "cpu", host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0,
                 metrics_port: int = 0) -> None:
        self.repo = Path(repo).resolve()
        self.work_dir = Path(work_dir)
        self.runtime_venv = Path(runtime_venv)
        self.models = list(models) or repository_models(self.repo)
        if instance_kind not in ("cpu", "gpu"):
            raise TritonServerError(f"instance_kind must be 'cpu' or 'gpu', not {instance_kind!r}")
        self.instance_kind = instance_kind
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.log_file = self.work_dir / "tritonserver.log"
        self._proc: subprocess.Popen | None = None

    stop_timeout_s = 15.0

    def __repr__(self) -> str:
        return f"TritonServer(grpc_url={self.grpc_url!r}, repo={str(self.repo)!r}, models={self.models})"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"



    def _command(self, backend_dir: Path) -> list[str]:
        return [str(_pytriton_dir(self.runtime_venv) / "bin" / "tritonserver"),
                f"--model-repository={self.repo}", f"--backend-directory={backend_dir}",
                # Explicit mode: only real models load (triton_models/_runtime is shared code).
                "--model-control-mode=explicit", "--strict-readiness=true", "--exit-timeout-secs=5",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}", "--allow-metrics=true"]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        # The stub finds its site-packages through PATH/VIRTUAL_ENV, and its bundled CUDA runtime
        # stubs (nvidia_pytriton.libs) and libpython through LD_LIBRARY_PATH.
        env["VIRTUAL_ENV"] = str(self.runtime_venv)
        env["PATH"] = f"{self.runtime_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(_site_packages(self.runtime_venv) / "nvidia_pytriton.libs"),
                _runtime_python(self.runtime_venv.resolve())[1]]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep __pycache__ out of the repository
        return env

    def start(self, ready_timeout_s: float = 180.0) -> "TritonServer":
        """Starts tritonserver, loads every model and waits until all are READY.

        Raises:
            TritonServerError: the server exits, a model fails to load (Triton's reason is in
                the message), or readiness takes longer than ``ready_timeout_s``.
        """
        unknown = sorted(set(self.models) - set(repository_models(self.repo)))
        if unknown:
            raise TritonServerError(f"models {unknown} are not in {self.repo} (it has {repository_models(self.repo)})")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backend_dir = prepare_backend(self.runtime_venv, self.work_dir / "backends")
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(self._command(backend_dir), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self._env(), start_new_session=True,
                                          preexec_fn=die_with_parent)
        deadline = time.monotonic() + ready_timeout_s
        try:
            self._wait(lambda: self._get("/v2/health/live"), deadline, "to answer")
            for model in self.models:
                self.load(model, deadline)
        except TritonServerError:
            self.stop()
            raise
        return self

    def load(self, model: str, deadline: float | None = None) -> None:
        """(Re)loads one model: the versions that have weights, with the configured instance kind.

        Raises:
            TritonServerError: the model has no trained version, or Triton refused to load it.
        """
        config = self._load_config(model)
        status, text = self._post(f"/v2/repository/models/{model}/load",
                                  {"parameters": {"config": json.dumps(config)}})
        if status != 200:
            raise TritonServerError(f"model {model!r} failed to load: {text.strip()} (log: {self.log_file})")
        self._wait(lambda: self._get(f"/v2/models/{model}/ready"),
                   deadline or time.monotonic() + 60, f"to report {model!r} READY")

    def trained_versions(self, model: str) -> list[int]:
        """The versions of ``model`` that `load` serves (`served_versions`)."""
        return served_versions(self.repo, model)

    def _load_config(self, model: str) -> dict:
        """config.pbtxt as Triton's JSON, limited to trained versions, instance kind applied.

        A version without weights (one trained on data that may not be shipped, and not trained
        on this machine) is left out instead of failing the whole model.
        """
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2

        cfg = text_format.Parse((self.repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        versions = self.trained_versions(model)
        if not versions:
            raise TritonServerError(f"model {model!r} has no trained version (no {self.repo / model}/<n>/weights.npz);"
                                    f" train one with `tickmesh models train {model}`")
        cfg.version_policy.specific.versions[:] = versions
        if self.instance_kind == "gpu":
            groups = cfg.instance_group or [cfg.instance_group.add()]
            for g in groups:
                g.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
        cfg.name = model
        return json_format.MessageToDict(cfg, preserving_proto_field_name=True)

    def _wait(self, probe: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise TritonServerError(f"tritonserver exited with code {code}; last log lines:\n{self.log_tail()}")
            if probe():
                return
            time.sleep(0.1)
        raise TritonServerError(f"tritonserver took too long {what}; last log lines:\n{self.log_tail()}")

    def _get(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _post(self, path: str, body: dict) -> tuple[int, str]:
        req = urllib.request.Request(self.http_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, str(exc)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log, without the CUDA/NVML/DCGM noise of a CPU machine."""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        noise = ("NVML", "DCGM", "CUDA", "Cuda", "pinned memory")
        return "\n".join([ln for ln in text if not any(n in ln for n in noise)][-lines:])


def server_from_config(cfg: "Config") -> TritonServer:
    """The embedded server described by ``cfg.triton``, its work dir under ``cfg.data_dir``."""
    t = cfg.triton
    return TritonServer(t.repo or PROJECT_ROOT / "triton_models", Path(cfg.data_dir).resolve() / "triton",
                        t.runtime_venv or DEFAULT_RUNTIME_VENV, instance_kind=t.instance_kind, host=t.host,
                        grpc_port=t.grpc_port, http_port=t.http_port, metrics_port=t.metrics_port)


def _cmd_prepare(args: argparse.Namespace, cfg: "Config") -> int:
    try:
        venv = prepare_runtime(cfg.triton.runtime_venv or DEFAULT_RUNTIME_VENV,
                               log=lambda line: print(f"tickmesh triton: {line}", file=sys.stderr))
    except TritonServerError as exc:
        print(f"tickmesh triton prepare: {exc}", file=sys.stderr)
        return 2
    print(f"model-runtime venv ready: {venv}", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace, cfg: "Config") -> int:
    if cfg.triton.url:
        print(f"tickmesh triton: triton.url is set ({cfg.triton.url}); not starting an embedded server",
              file=sys.stderr)
        return 2
    if _cmd_prepare(args, cfg):
        return 2
    server = server_from_config(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start(cfg.triton.ready_timeout_s)
    except TritonServerError as exc:
        print(f"tickmesh triton: {exc}", file=sys.stderr)
        return 2
    print(f"tritonserver READY: {', '.join(server.models)} on grpc {server.grpc_url}, http {server.http_url} "
          f"(log {server.log_file})", file=sys.stderr, flush=True)
    try:
        while not stop.wait(1.0):
            if not server.running:
                print(f"tickmesh triton: tritonserver exited; last log lines:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def register(sub) -> None:
    p = sub.add_parser("triton", help="run the embedded Triton Inference Server over triton_models/")
    tsub = p.add_subparsers(dest="triton_command")
    tsub.add_parser("prepare", help="build the model-runtime venv (make setup does)").set_defaults(func=_cmd_prepare)
    tsub.add_parser("serve", help="start tritonserver, load every model, wait until READY (default)")
    p.set_defaults(func=lambda a, c: (_cmd_prepare if a.triton_command == "prepare" else _cmd_serve)(a, c))
