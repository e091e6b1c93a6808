"""Runs an engine over whole bar series (offline, tests, benchmarks): one step per bar index."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from core.features._xp import to_numpy
from core.features.barfile import BarSeries
from core.features.engine import FeatureEngine

__all__ = ["run_series"]


def run_series(engine: FeatureEngine, series: Sequence[BarSeries],
               progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Feeds every series to its own new row of ``engine``, bar by bar.

    Step i advances, together, every series that has an i-th bar, so many series cost little more
    than the longest one.

    Args:
        engine: the engine (rows are added to it).
        series: the bar series.
        progress: called as ``progress(done_steps, total_steps)`` now and then.

    Returns:
        One (len(series[j]), n_features) float64 array per series.
    """
    rows = np.asarray(engine.grow(len(series)))
    lengths = np.array([len(s) for s in series])
    out = [np.full((n, len(engine.names)), np.nan) for n in lengths]
    fields = sorted({f for s in series for f in s.columns})
    total = int(lengths.max()) if len(lengths) else 0
    # Series sorted longest first: the series still running at step i are a prefix.
    order = np.argsort(-lengths, kind="stable")
    every = max(1, total // 100)
    for i in range(total):
        live = order[: int(np.searchsorted(-lengths[order], -i, side="left"))]
        bars = {}
        for f in fields:
            col = np.full(len(live), np.nan if f != "ts_ns" else 0)
            for j, r in enumerate(live):
                c = series[r].columns.get(f)
                if c is not None:
                    col[j] = c[i]
            bars[f] = col
        res = engine.step(bars, rows[live])
        vals = to_numpy(res.values)
        for j, r in enumerate(live):
            out[r][i] = vals[j]
        if progress is not None and (i % every == 0 or i == total - 1):
            progress(i + 1, total)
    return out
