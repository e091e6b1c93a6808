"""The lifecycle both embedded servers share: one child process, stopped gracefully, killed if need be."""

from __future__ import annotations

import subprocess

__all__ = ["ServerProcess"]


class ServerProcess:
    """Base of `core.natsserver.NatsServer` and `core.triton.TritonServer`: holds the child in
    ``_proc``; subclasses implement ``start`` (which sets ``_proc``) and set ``stop_timeout_s``."""

    stop_timeout_s = 10.0
    _proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last process, None while it runs or before it started."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *args, **kwargs) -> "ServerProcess":  # pragma: no cover - abstract
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILLs the server (tests of what a crash does)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stops the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
