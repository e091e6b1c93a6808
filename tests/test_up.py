"""`tickmesh up` as a newcomer runs it: live candles from the simulated venue, a status line per
second, a killed component (and a killed nats-server) restarted and reported, Ctrl-C stopping
everything, and a second run resuming with the history still there."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from core.natsserver import free_port

ROOT = Path(__file__).resolve().parents[1]


class Up:
    """`tickmesh up` in a child process, its output collected line by line."""

    def __init__(self, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "core.cli", "up"], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-40:]))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


def triton_ports() -> dict[str, str]:
    """Free ports for the embedded tritonserver, as environment overrides."""
    return {f"TICKMESH_TRITON__{kind}_PORT": str(free_port()) for kind in ("GRPC", "HTTP", "METRICS")}


def wait_for_text(path: Path, text: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    pytest.fail(f"{text!r} not in {path} after {timeout_s} s:\n"
                + (path.read_text(errors="replace")[-3000:] if path.exists() else "(no file)"))


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def poll_json(url: str, ok, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = get_json(url)
            if ok(last):
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{url}: not ready in {timeout_s} s, last answer {last!r}")


@pytest.mark.timeout(280)
def test_up_serves_live_candles_restarts_components_and_resumes(tmp_path):
    api_port = free_port()
    env = {**os.environ, "TICKMESH_DATA_DIR": str(tmp_path / "data"), "TICKMESH_API__PORT": str(api_port),
           "TICKMESH_NATS__PORT": str(free_port()), "TICKMESH_NATS__MONITOR_PORT": str(free_port()),
           "TICKMESH_SIM__SYMBOLS": '["BTC-USD", "ETH-USD"]', **triton_ports()}
    base = f"http://127.0.0.1:{api_port}"
    up = Up(env)
    try:
        nats_pid = int(up.wait_for(r"nats-server ready at \S+ \(pid (\d+)").group(1))
        up.wait_for(r"dashboard: http://")
        worker_pid = int(up.wait_for(r"worker: pid (\d+)").group(1))
        bars_url = f"{base}/api/bars?venue=sim&symbol=BTC-USD&timeframe=1s"
        first = poll_json(bars_url, lambda bars: len(bars) >= 3)
        assert all(b["high"] >= max(b["open"], b["close"]) and b["n_trades"] > 0 for b in first)
        # One status line per second with the live figures.
        up.wait_for(r"in +[1-9][\d,]* ev/s +bars +[\d.,]+/s +features +[1-9][\d.,]*/s +predictions +[\d.,]+/s "
                    r"\(degraded \d+\) +signals +[1-9][\d.,]*/s +lag +[\d,]+ +dead letters +\d+")
        # every closed bar also gets its feature vector, served by the API
        feats = poll_json(f"{base}/api/features?venue=sim&symbol=BTC-USD&timeframe=1s&names=sma_10,rsi_14",
                          lambda d: len(d["rows"]) >= 16)
        assert feats["names"] == ["sma_10", "rsi_14"] and feats["rows"][-1][1][1] is not None
        # ... and its signal (rule-only until the models have a full window), served by the API
        sigs = poll_json(f"{base}/api/signals?symbol=BTC-USD&timeframe=1s&venue=sim", lambda d: len(d) >= 16)
        assert {s["action"] for s in sigs} <= {"BUY", "SELL", "HOLD"} and sigs[-1]["price"] > 0
        assert get_json(f"{base}/health")["status"] == "ok"
        # Triton serves every model and the inference worker runs (predictions need ~2 minutes of
        # 1s bars to warm up; tests/test_inference_worker.py checks them).
        triton_log = tmp_path / "data" / "logs" / "triton.log"
        wait_for_text(triton_log, "tritonserver READY: anomaly, forecast, market, regime, sentiment")
        up.wait_for(r"\[api:up triton:up inference:up features:up worker:up edge:up\]")
        page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
        assert "lightweight-charts" in page

        os.kill(worker_pid, signal.SIGKILL)
        up.wait_for(r"worker exited with code -9; restarting")
        up.wait_for(r"worker restarted \(restart #1")
        n_before = len(get_json(bars_url + "&limit=10000"))
        poll_json(bars_url + "&limit=10000", lambda bars: len(bars) > n_before + 2)

        # nats-server itself dies: restarted on the same store, every client reconnects, bars go on.
        os.kill(nats_pid, signal.SIGKILL)
        up.wait_for(r"nats-server exited with code -9; restarting")
        up.wait_for(r"nats-server restarted")
        n_before = len(get_json(bars_url + "&limit=10000"))
        poll_json(bars_url + "&limit=10000", lambda bars: len(bars) > n_before + 2)
        assert up.stop() == 0
        assert any("stopped; data kept in" in line for line in up.lines)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
    symbols = {(s["venue"], s["symbol"]): s["trades"] for s in _symbols_after_restart(env, base)}
    assert symbols[("sim", "BTC-USD")] > 0


def _symbols_after_restart(env: dict, base: str) -> list[dict]:
    """Starts `tickmesh up` again on the same data dir: the first answer already holds the history."""
    up = Up(env)
    try:
        up.wait_for(r"worker bars-worker|worker: pid")
        symbols = poll_json(f"{base}/api/symbols", lambda d: d["symbols"])["symbols"]
        assert up.stop() == 0
        return symbols
    finally:
        if up.proc.poll() is None:
            up.proc.kill()


def test_up_refuses_a_taken_api_port_with_a_clear_message(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TICKMESH_DATA_DIR": str(tmp_path), "TICKMESH_API__PORT": str(port), **triton_ports()}
        done = subprocess.run([sys.executable, "-m", "core.cli", "up"], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=60)
    assert done.returncode == 2
    assert f"127.0.0.1:{port} is not free" in done.stderr and "TICKMESH_API__PORT" in done.stderr
    assert not (tmp_path / "jetstream").exists()  # failed before starting anything
