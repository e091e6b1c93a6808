"""``tickmesh features``: feature columns for bar files, with the live feature code.

Every series of every input file becomes one row of one `FeatureEngine` (so several files or
symbols cost little more than the longest), stepped bar by bar exactly as the live worker steps it.
Multi-timeframe columns come from the file's own higher-timeframe series of the same venue and
symbol when it has them (a `tickmesh bars` CSV holds every timeframe), otherwise from bars
resampled here on the epoch grid (open first, high max, low min, close last, volumes summed).

Example:
    tickmesh features ../shared/data/bars/btc_perp_1m_2022-01.csv -o btc_features.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from types import ModuleType
from typing import Callable, Sequence

import numpy as np

from core._progress import Progress
from core.config import Config
from core.errors import DataFileError, TickmeshError
from core.features._run import run_series
from core.features._xp import DEVICES, array_module
from core.features.barfile import BarSeries, load_bars
from core.features.featureset import LADDER, FeatureSet, higher_tf

__all__ = ["infer_tf", "resample", "compute", "write_csv", "register"]


def infer_tf(ts_ns: np.ndarray) -> str | None:
    """The ladder timeframe equal to the most common spacing of ``ts_ns``, or None."""
    if ts_ns.shape[0] < 2:
        return None
    gaps, counts = np.unique(np.diff(ts_ns), return_counts=True)
    step = int(gaps[np.argmax(counts)])
    return next((tf for tf, ns in LADDER.items() if ns == step), None)


def resample(series: BarSeries, tf: str) -> BarSeries:
    """Bars of ``series`` aggregated into ``tf`` buckets counted from the epoch."""
    c = series.columns
    tf_ns = LADDER[tf]
    bucket = c["ts_ns"] // tf_ns
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], bucket.shape[0]] - 1
    out = {"ts_ns": bucket[starts] * tf_ns, "open": c["open"][starts], "close": c["close"][ends],
           "high": np.maximum.reduceat(c["high"], starts), "low": np.minimum.reduceat(c["low"], starts)}
    for f in ("volume", "buy_volume", "sell_volume"):
        if f in c:
            out[f] = np.add.reduceat(c[f], starts)
    if "vwap" in c:
        pv = np.add.reduceat(c["vwap"] * c["volume"], starts)
        out["vwap"] = np.where(out["volume"] > 0, pv / np.where(out["volume"] > 0, out["volume"], 1), out["close"])
    return BarSeries(name=f"{series.name}@{tf}", columns=out, venue=series.venue, symbol=series.symbol, tf=tf)


def compute(series: Sequence[BarSeries], fs: FeatureSet, xp: ModuleType = np,
            progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Feature vectors of every bar of every series.

    Returns:
        One (len(series[i]), len(fs.names)) float64 array per series.
    """
    tfs = [s.tf or infer_tf(s.columns["ts_ns"]) for s in series]
    # Every series needed: the inputs, then higher timeframes (the file's own when present).
    run: list[BarSeries] = list(series)
    index = {(s.venue, s.symbol, tf): i for i, (s, tf) in enumerate(zip(series, tfs)) if tf}
    links: list[list[int | None]] = []
    for s, tf in zip(series, tfs):
        row = []
        for level in range(1, fs.levels + 1):
            htf = higher_tf(tf, level) if tf else None
            if htf is None:
                row.append(None)
                continue
            key = (s.venue, s.symbol, htf)
            if key not in index:
                index[key] = len(run)
                run.append(resample(s, htf))
            row.append(index[key])
        links.append(row)
    base = run_series(fs.engine(xp), run, progress)
    out = []
    n_base, n_mtf = len(fs.base_names), len(fs.mtf)
    for i, s in enumerate(series):
        vals = np.full((len(s), len(fs.names)), np.nan)
        vals[:, :n_base] = base[i]
        for level, j in enumerate(links[i]):
            if j is None:
                continue
            hi = run[j]
            ends = hi.columns["ts_ns"] + LADDER[tfs[j] if j < len(series) else hi.tf]
            pos = np.searchsorted(ends, s.columns["ts_ns"], side="right") - 1
            ok = pos >= 0
            lo = n_base + level * n_mtf
            vals[ok, lo:lo + n_mtf] = base[j][pos[ok]][:, fs.mtf_index]
        out.append(vals)
    return out


def write_csv(out, series: Sequence[BarSeries], values: Sequence[np.ndarray], names: Sequence[str]) -> int:
    """Writes one line per bar: identity, time, OHLCV, then one column per feature. Returns lines."""
    multi = len(series) > 1
    w = csv.writer(out, lineterminator="\n")
    ident = ["venue", "symbol", "tf"] if multi else []
    w.writerow([*ident, "timestamp", "ts_ns", "open", "high", "low", "close", "volume", *names])
    lines = 0
    for s, vals in zip(series, values):
        c = s.columns
        iso = np.datetime_as_string(c["ts_ns"].astype("datetime64[ns]"), unit="s")
        tf = s.tf or infer_tf(c["ts_ns"]) or ""
        for i in range(len(s)):
            head = [s.venue, s.symbol, tf] if multi else []
            w.writerow([*head, iso[i], int(c["ts_ns"][i]), *(repr(float(c[f][i])) for f in
                        ("open", "high", "low", "close", "volume")), *(repr(float(v)) if v == v else "" for v in vals[i])])
            lines += 1
    return lines


def _attach_reference(series: list[BarSeries], ref: BarSeries) -> None:
    """Sets ``ref_close`` of every series to the reference's close at the same bar start."""
    for s in series:
        ts = s.columns["ts_ns"]
        pos = np.searchsorted(ref.columns["ts_ns"], ts)
        pos_c = np.minimum(pos, len(ref) - 1)
        hit = ref.columns["ts_ns"][pos_c] == ts
        s.columns["ref_close"] = np.where(hit, ref.columns["close"][pos_c], np.nan)


def _cmd(args: argparse.Namespace, cfg: Config) -> int:
    try:
        series = [s for path in args.inputs for s in load_bars(path)]
        if args.reference:
            _attach_reference(series, load_bars(args.reference)[0])
        xp = array_module(args.device or cfg.features.device)
        fs = FeatureSet()
        names = list(fs.names)
        if args.names:
            wanted = [n.strip() for n in args.names.split(",") if n.strip()]
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise DataFileError(f"unknown feature names {unknown}; `tickmesh features --list` shows them")
        values = compute(series, fs, xp, Progress("features", "bars"))
        if args.names:
            cols = [names.index(n) for n in wanted]
            values = [v[:, cols] for v in values]
            names = wanted
        with (open(args.output, "w", newline="") if args.output != "-" else sys.stdout) as out:
            lines = write_csv(out, series, values, names)
    except TickmeshError as exc:
        print(f"tickmesh features: {exc}", file=sys.stderr)
        return 2
    if args.output != "-":
        print(f"{lines} bars x {len(names)} features -> {args.output}", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    for name in FeatureSet().names:
        print(name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("features", help="feature columns for bar files (the live feature code, offline)")
    p.add_argument("inputs", nargs="*", metavar="BARS", help="bar files (CSV layouts or Kraken OHLC JSON)")
    p.add_argument("-o", "--output", default="-", help="output CSV (default: stdout)")
    p.add_argument("--names", help="comma-separated feature names to write (default: all)")
    p.add_argument("--reference", metavar="BARS", help="bar file of the reference symbol for beta/correlation")
    p.add_argument("--device", choices=DEVICES, help="array backend (default: config features.device)")
    p.add_argument("--list", action="store_true", help="print every feature name and exit")
    p.set_defaults(func=lambda a, c: _cmd_list(a, c) if a.list else (_cmd(a, c) if a.inputs else _usage(p)))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_usage(sys.stderr)
    print("tickmesh features: give at least one bar file (or --list)", file=sys.stderr)
    return 2
