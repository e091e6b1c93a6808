"""Shared fixtures: real nats-server on free loopback ports in temp dirs, and the recorded data."""

from __future__ import annotations

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
