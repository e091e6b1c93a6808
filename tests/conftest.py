"""Shared fixtures: real nats-server on free loopback ports in temp dirs, and the recorded data."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import pytest

from core.natsserver import NatsServer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relpath: str) -> Path:
    """Path of a recorded data file in ../shared/data; fails the test clearly if it is missing."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.fail(f"recorded data file missing: {path} (tests need ../shared/data beside the checkout)")
    return path


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server with JetStream on free ports, its store in a temp dir."""
    server = NatsServer(tmp_path / "jetstream", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server):
    """A connection to the test's nats-server."""
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def triton_runtime():
    """The model-runtime venv (built by `make setup`; built here if missing), or the one that
    TICKMESH_TRITON__RUNTIME_VENV names, used as it is (a GPU machine's, with CuPy)."""
    from core.triton import DEFAULT_RUNTIME_VENV, prepare_runtime

    given = os.environ.get("TICKMESH_TRITON__RUNTIME_VENV")
    return Path(given) if given else prepare_runtime(DEFAULT_RUNTIME_VENV)


@pytest.fixture
def triton_server(tmp_path, triton_runtime):
    """Factory: ``triton_server(repo, models)`` starts a real tritonserver on free ports, READY.

    Every server started is stopped at the end of the test.
    """
    from core.triton import TritonServer

    started = []

    def start(repo: Path, models=(), **kwargs) -> TritonServer:
        server = TritonServer(repo, tmp_path / f"triton{len(started)}", triton_runtime, models, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
