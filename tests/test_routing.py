"""Version routes: promote/rollback rules, and `tickmesh models promote|rollback|route` reaching a
running inference worker through the KV bucket, without a restart."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import streams
from core.config import Config, InferenceConfig, RouteConfig, StreamsConfig
from core.errors import ConfigError
from core.inference import Route
from core.inference_worker import InferenceWorker
from core.natsserver import free_port
from core.routing import config_route, promote, rollback
from tests.test_worker import wait_until

ROOT = Path(__file__).resolve().parents[1]


def test_promote_keeps_the_previous_version_and_rollback_returns_to_it():
    r = Route(production=1, candidate=2, canary_share=0.1, shadow=3)
    p = promote(r, 2)
    assert p == Route(production=2, previous=1, candidate=0, canary_share=0.0, shadow=3)
    back = rollback(p)
    assert (back.production, back.previous) == (1, 2)
    assert rollback(back).production == 2  # a second rollback undoes the first
    assert promote(Route(production=1, candidate=3, canary_share=0.2), 2).candidate == 3  # other candidate stays
    with pytest.raises(ConfigError, match="nothing to roll back"):
        rollback(Route(production=1))


def test_config_routes():
    cfg = Config(inference=InferenceConfig(routes={"forecast": RouteConfig(production=1, candidate=2,
                                                                              canary_share=0.25)}))
    assert config_route(cfg, "forecast") == Route(production=1, candidate=2, canary_share=0.25)
    assert config_route(cfg, "regime") == Route()


def models_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", "models", *args, "--url", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_cli_route_changes_reach_a_running_worker(nc, nats_server):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    cfg = Config(inference=InferenceConfig(routes={"forecast": RouteConfig(production=1)}))
    worker = InferenceWorker(js, cfg, f"127.0.0.1:{free_port()}")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        done = await asyncio.to_thread(models_cli, nats_server.url, "promote", "forecast", "2")
        assert done.returncode == 0, done.stderr
        assert "forecast: production vlatest  ->  production v2" in done.stdout  # the CLI reads no config here
        await wait_until(lambda: _production(worker, "forecast", 2), timeout_s=20)

        done = await asyncio.to_thread(models_cli, nats_server.url, "route", "forecast", "--candidate", "3",
                                       "--canary-share", "0.2", "--shadow", "1")
        assert done.returncode == 0, done.stderr
        await wait_until(lambda: _matches(worker, "forecast", Route(production=2, candidate=3, canary_share=0.2,
                                                                    shadow=1, previous=0)), timeout_s=20)

        done = await asyncio.to_thread(models_cli, nats_server.url, "route", "forecast", "--canary-share", "1.5")
        assert done.returncode == 2 and "canary_share" in done.stderr

        done = await asyncio.to_thread(models_cli, nats_server.url, "rollback", "regime")
        assert done.returncode == 2 and "nothing to roll back" in done.stderr
        assert worker.router.route("regime") == Route()
    finally:
        stop.set()
        await task


async def _production(worker, model: str, version: int) -> bool:
    return worker.router.route(model).production == version


async def _matches(worker, model: str, route: Route) -> bool:
    return worker.router.route(model) == route


def test_models_list_says_which_versions_are_served(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "triton_models", repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "forecast" / "3").mkdir()
    shutil.copy(repo / "forecast" / "2" / "model.py", repo / "forecast" / "3" / "model.py")  # not trained
    done = subprocess.run([sys.executable, "-m", "core.cli", "models", "list", "--repo", str(repo)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {tuple(line.split()[:3]) for line in done.stdout.splitlines()}
    assert {("forecast", "v1", "served"), ("forecast", "v2", "served"), ("forecast", "v3", "untrained"),
            ("market", "v1", "served"), ("sentiment", "v1", "served")} <= rows
