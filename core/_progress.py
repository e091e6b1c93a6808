"""A one-line progress display for long offline work (feature files, model training)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """One updating line on a terminal; silent when the stream is not a terminal.

    Call it as ``progress(done, total)``; ``note`` appends free text such as a running loss.

    Args:
        label: what is being done ("features", "train forecast").
        unit: what ``done`` counts ("bars", "epochs").
        stream: where to write (default stderr).
    """

    def __init__(self, label: str, unit: str, stream=None) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if not self.tty:
            return
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        self.stream.write(f"\r{self.label}: {done}/{total} {self.unit} ({100 * done // max(total, 1)}%), "
                          f"{rate:,.1f} {self.unit}/s {note} ")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()
