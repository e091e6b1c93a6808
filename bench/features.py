"""Feature engine throughput: every default feature for 1k, 10k and 100k symbols on one bar close.

For each size N, a NumPy `FeatureEngine(default_kernels())` with N rows is warmed up past every
kernel's lookback, then `engine.step(bars)` is timed for all N rows, one new bar per repetition
(median and p90 ms per close; updates/s = N * features / seconds). One thread: the BLAS/OpenMP
thread counts are set to 1 before NumPy is imported.

Bars: the real BTC perpetual 1-minute series (../shared/data/bars/btc_perp_1m_2022-01.csv, 45k
bars) replayed by every symbol from its own random starting bar, prices times a per-symbol scale
(log-uniform, BTC x 1e-4 .. x 1) and volume times another (x 1e-3 .. x 10): real returns and ranges
at many price levels. vwap = (high + low + close) / 3, buy volume = volume * (0.5 + 0.5 *
(close - open) / (high - low)) (half on a zero range), ref_close = the unscaled series of symbol 0.

Baselines, measured in the same run on a subset of symbols and scaled linearly to N (marked *):
  TA-Lib   each TA-Lib-named kernel (k.talib, k.talib_inputs, k.talib_kwargs()) as the batch
           function called once per symbol on that symbol's last W bars, W = lookback + 1 rounded
           up to a power of two (at least 16): the shortest series giving the newest value, so a
           lower bound on TA-Lib's cost (recursive indicators, EMA and friends, would need a longer
           series to reproduce the streaming value exactly).
  talipp   the talipp indicator that computes the same thing (mapped by hand below), one .add()
           per symbol per indicator after the same warm-up; kernels one talipp indicator serves
           together (ADX, PLUS_DI, MINUS_DI, DX) cost it once.
Each ratio compares like with like: "ours" there is a second engine holding only the kernels that
baseline computes, timed the same way.

Memory and time: the engines run one after the other; one of N symbols needs roughly
N * (2 * state + 2 * history + 4 * 8 * features) bytes during a step (printed per symbol; a size
that would not fit in MemAvailable is skipped; the run's peak RSS is printed at the end: 1.8 GiB
for 111 features at 100k with --no-baselines; the state counts each shared stage once, see
core.features.kernel.Stage). Warm-up dominates the run time at 100k: each of the three engines steps
100k rows through every warm-up bar (111 features: ~0.4 s of CPU per close, ~1 minute per engine).
On a shared machine, --clock cpu (this thread's CPU time) gives steadier figures than wall time.

Usage:
    .venv/bin/python bench/features.py [--sizes 1000,10000,100000] [--reps 20] [--warmup-extra 32]
        [--talib-symbols 1000] [--talipp-symbols 100] [--baseline-reps 5] [--no-baselines] [--detail]
        [--clock wall|cpu]
"""

from __future__ import annotations

import os

# One core: NumPy's BLAS/OpenMP pools must be sized before NumPy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.errors import DataFileError  # noqa: E402
from core.features.barfile import load_bars  # noqa: E402
from core.features.catalogue import default_kernels  # noqa: E402
from core.features.engine import FeatureEngine  # noqa: E402
from core.features.kernel import Kernel  # noqa: E402

__all__ = ["Market", "load_real", "state_bytes_per_row", "step_bytes_needed", "warm_up", "warmup_bars",
           "time_closes", "run_engine", "parse_sizes", "machine_line", "REAL_BARS", "GOAL_SYMBOLS", "GOAL_MS"]

REAL_BARS = ROOT.parent / "shared" / "data" / "bars" / "btc_perp_1m_2022-01.csv"
BAR_NS = 60 * 10**9
GOAL_SYMBOLS, GOAL_MS = 10_000, 20.0


# ---------------------------------------------------------------------------------------- bars

def load_real(path: Path = REAL_BARS) -> dict[str, np.ndarray]:
    """The real series' columns; exits with a one-line message when the file is missing or bad."""
    try:
        return load_bars(path)[0].columns
    except DataFileError as exc:
        sys.exit(f"{Path(sys.argv[0]).name}: {exc} (the benchmark needs ../shared/data beside the checkout)")


class Market:
    """Synthetic bars for ``n`` symbols, each replaying the real series at its own start and scale.

    Args:
        real: the real series' columns (``open``..``volume``, ``ts_ns``).
        n: number of symbols.
        n_bars: bars each symbol must be able to produce (indices 0 .. n_bars - 1).
        history: bars before index 0 that must exist too (negative indices, for baseline windows).
        seed: random seed of the starts and scales.
    """

    def __init__(self, real: dict[str, np.ndarray], n: int, n_bars: int, history: int = 0, seed: int = 7) -> None:
        length = int(real["close"].shape[0])
        if n_bars + history >= length:
            raise ValueError(f"the real series has {length} bars, {n_bars + history} are needed")
        rng = np.random.default_rng(seed)
        self.n = n
        self.real = {f: np.ascontiguousarray(real[f], dtype=np.float64)
                     for f in ("open", "high", "low", "close", "volume")}
        self.start = rng.integers(history, length - n_bars, n)
        self.px_scale = np.exp(rng.uniform(np.log(1e-4), 0.0, n))
        self.vol_scale = np.exp(rng.uniform(np.log(1e-3), np.log(10.0), n))
        self.t0_ns = int(real["ts_ns"][0])

    def bar(self, i, rows=slice(None)) -> dict[str, np.ndarray]:
        """Bar ``i`` (an int, or one per row) of the symbols ``rows``, as the engine's input columns."""
        j = self.start[rows] + i
        px, vol = self.px_scale[rows], self.vol_scale[rows]
        o, h, lo, c = (self.real[f][j] * px for f in ("open", "high", "low", "close"))
        v = self.real["volume"][j] * vol
        rng = h - lo
        buy = v * np.where(rng > 0, 0.5 + 0.5 * (c - o) / np.where(rng > 0, rng, 1.0), 0.5)
        ref = self.real["close"][self.start[0] + i]
        m = o.shape[0]
        return {"open": o, "high": h, "low": lo, "close": c, "volume": v, "vwap": (h + lo + c) / 3.0,
                "buy_volume": buy, "sell_volume": v - buy,
                "ref_close": np.broadcast_to(ref, (m,)).astype(np.float64),
                "ts_ns": np.broadcast_to(self.t0_ns + np.asarray(i, dtype=np.int64) * BAR_NS, (m,)).copy()}


# ------------------------------------------------------------------------------ engine timing

def state_bytes_per_row(kernels: list[Kernel]) -> tuple[int, int]:
    """(kernel and shared-stage state, shared input histories) in bytes per row, as an engine of
    these kernels lays them out (a stage several kernels read is counted once)."""
    return FeatureEngine(kernels).bytes_per_row()


def step_bytes_needed(kernels: list[Kernel], n: int) -> int:
    """Rough peak memory of one engine of ``n`` rows during a step: old and new state, old and new
    histories, the output blocks of this close and the last, and per-output temporaries."""
    state, hist = state_bytes_per_row(kernels)
    n_out = sum(len(k.outputs) for k in kernels)
    return n * (2 * state + 2 * hist + 4 * 8 * n_out)


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def warm_up(engine: FeatureEngine, market: Market, n: int, n_bars: int, label: str,
            put: Callable[[dict], dict] = lambda b: b) -> float:
    """Steps every row through bars 0 .. n_bars - 1 with a progress line on stderr; returns seconds."""
    tty = sys.stderr.isatty()
    every = max(1, n_bars // 20)
    t0 = time.perf_counter()
    for i in range(n_bars):
        engine.step(put(market.bar(i, slice(0, n))))
        if tty and (i % every == 0 or i == n_bars - 1):
            print(f"\r  warm-up {label}: bar {i + 1}/{n_bars}", end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    print(f"{chr(13) if tty else ''}  warm-up {label}: {n_bars} bars in {seconds:.1f} s", file=sys.stderr)
    return seconds


def time_closes(engine: FeatureEngine, market: Market, n: int, first_bar: int, reps: int,
                put: Callable[[dict], dict] = lambda b: b, sync: Callable[[], None] = lambda: None,
                clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Seconds of ``engine.step`` for all ``n`` rows, one new bar per repetition (bars are built
    and, through ``put``, moved before the clock starts)."""
    out = np.empty(reps)
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            bars = put(market.bar(first_bar + r, slice(0, n)))
            sync()
            t0 = clock()
            engine.step(bars)
            sync()
            out[r] = clock() - t0
    finally:
        gc.enable()
    return out


def warmup_bars(kernels: list[Kernel], extra: int) -> int:
    """Bars that take every row of these kernels past every lookback, plus ``extra``."""
    return max(k.lookback for k in kernels) + extra


def run_engine(kernels: list[Kernel], market: Market, n: int, warmup: int, reps: int, label: str,
               clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Seconds per close of a fresh NumPy engine of ``n`` rows, warmed up through ``warmup`` bars."""
    engine = FeatureEngine(kernels, n=n)
    warm_up(engine, market, n, warmup, label)
    return time_closes(engine, market, n, warmup, reps, clock=clock)


# ------------------------------------------------------------------------------------ TA-Lib

def talib_window(k: Kernel) -> int:
    """Bars per TA-Lib call: lookback + 1 rounded up to a power of two, at least 16."""
    return max(16, 1 << k.lookback.bit_length())


def talib_baseline(kernels: list[Kernel], market: Market, n_sub: int, last_bar: int, reps: int,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds, per kernel, for TA-Lib to give each of ``n_sub`` symbols its newest value;
    and the kernels TA-Lib refused to run as described (name -> error), left out."""
    import talib

    w_max = max(talib_window(k) for k in kernels)
    bars = [market.bar(i, slice(0, n_sub)) for i in range(last_bar - w_max + 1, last_bar + 1)]
    fields = {f for k in kernels for f in k.talib_inputs}
    hist = {f: np.ascontiguousarray(np.stack([b[f] for b in bars], axis=1)) for f in fields}
    out, failed = {}, {}
    for k in kernels:
        w = talib_window(k)
        args = [[hist[f][i, -w:] for f in k.talib_inputs] for i in range(n_sub)]
        try:  # fails here, not in the clock, if the kernel's TA-Lib description is off
            fn, kw = getattr(talib, k.talib), k.talib_kwargs()
            fn(*args[0], **kw)
        except Exception as exc:
            failed[k.name] = f"{type(exc).__name__}: {exc}"
            continue
        times = []
        for _ in range(reps):
            t0 = clock()
            for a in args:
                fn(*a, **kw)
            times.append(clock() - t0)
        out[k.name] = float(np.median(times))
    return out, failed


# ------------------------------------------------------------------------------------ talipp

# TA-Lib functions whose talipp 2.7 counterpart takes one parameter (timeperiod) or none, by input.
_TALIPP_CLOSE = {"SMA": "SMA", "EMA": "EMA", "WMA": "WMA", "DEMA": "DEMA", "TEMA": "TEMA", "TRIX": "TRIX",
                 "RSI": "RSI", "ROC": "ROC", "STDDEV": "StdDev"}
_TALIPP_OHLCV = {"ATR": "ATR", "NATR": "NATR", "CCI": "CCI", "WILLR": "Williams", "AROON": "Aroon",
                 "AROONOSC": "Aroon", "ADX": "ADX", "PLUS_DI": "ADX", "MINUS_DI": "ADX", "DX": "ADX"}
_TALIPP_OHLCV_NOARG = {"OBV": "OBV", "AD": "AccuDist", "BOP": "BOP"}


def talipp_spec(k: Kernel) -> tuple[str, str, Callable[[], Any]] | None:
    """(input kind "close"/"ohlcv", label, builder) of the talipp indicator computing ``k``, or None.

    The label identifies the talipp computation: kernels with equal labels share one indicator.
    """
    if not k.talib:
        return None
    from talipp import indicators as ti
    import talib.abstract

    kw = {**talib.abstract.Function(k.talib).parameters, **k.talib_kwargs()}
    if any(v != 0 for key, v in kw.items() if key.endswith("matype")):
        return None  # talipp's moving-average types do not line up with TA-Lib's beyond SMA

    def spec(kind: str, cls: str, *args, then: Callable[[Any], None] | None = None):
        label = f"{cls}({', '.join(format(a, 'g') if isinstance(a, float) else str(a) for a in args)})"

        def build():
            ind = getattr(ti, cls)(*args)
            if then is not None:
                then(ind)
            return ind
        return kind, label + (" + SMA" if then else ""), build

    fn, p = k.talib, kw.get("timeperiod")
    if fn in _TALIPP_CLOSE:
        return spec("close", _TALIPP_CLOSE[fn], p)
    if fn in ("ADX", "PLUS_DI", "MINUS_DI", "DX"):
        return spec("ohlcv", "ADX", p, p)
    if fn in _TALIPP_OHLCV:
        return spec("ohlcv", _TALIPP_OHLCV[fn], p)
    if fn in _TALIPP_OHLCV_NOARG:
        return spec("ohlcv", _TALIPP_OHLCV_NOARG[fn])
    if fn == "KAMA":
        return spec("close", "KAMA", p, 2, 30)  # TA-Lib's fixed fast/slow constants
    if fn == "T3":
        return spec("close", "T3", p, kw["vfactor"])
    if fn == "MACD":
        return spec("close", "MACD", kw["fastperiod"], kw["slowperiod"], kw["signalperiod"])
    if fn == "BBANDS":
        return spec("close", "BB", p, kw["nbdevup"])
    if fn == "STOCHF":
        return spec("ohlcv", "Stoch", kw["fastk_period"], kw["fastd_period"])
    if fn == "STOCH":
        # talipp's Stoch gives the raw %K and its SMA; TA-Lib's slow %D is one SMA further, chained.
        def slow_d(root):
            ti.SMA(kw["slowd_period"], input_indicator=root, input_modifier=lambda v: v.d)
        return spec("ohlcv", "Stoch", kw["fastk_period"], kw["slowk_period"], then=slow_d)
    if fn == "STOCHRSI":
        return spec("close", "StochRSI", p, kw["fastk_period"], 1, kw["fastd_period"])
    if fn == "ULTOSC":
        return spec("ohlcv", "UO", kw["timeperiod1"], kw["timeperiod2"], kw["timeperiod3"])
    if fn == "SAR":
        return spec("ohlcv", "ParabolicSAR", kw["acceleration"], kw["acceleration"], kw["maximum"])
    if fn == "ADOSC":
        return spec("ohlcv", "ChaikinOsc", kw["fastperiod"], kw["slowperiod"])
    return None


def talipp_baseline(specs: dict[str, tuple[str, Callable[[], Any]]], market: Market, n_sub: int, warmup: int,
                    reps: int, clock: Callable[[], float] = time.perf_counter
                    ) -> tuple[dict[str, float], list[str], dict[str, str]]:
    """Median seconds, per talipp indicator, of one .add() for each of ``n_sub`` symbols after
    ``warmup`` bars; the labels of indicators still without a value after the warm-up; and the
    indicators that failed (label -> error), left out."""
    from talipp.ohlcv import OHLCV

    def values(i: int, kind: str) -> list:
        b = market.bar(i, slice(0, n_sub))
        if kind == "close":
            return b["close"].tolist()
        return [OHLCV(*row) for row in zip(*(b[f].tolist() for f in ("open", "high", "low", "close", "volume")))]

    inputs = {kind: [values(i, kind) for i in range(warmup + reps)] for kind in {k for k, _ in specs.values()}}
    out, cold, failed = {}, [], {}
    tty = sys.stderr.isatty()
    for j, (label, (kind, build)) in enumerate(specs.items()):
        if tty:
            print(f"\r  talipp warm-up: {label} ({j + 1}/{len(specs)})", end=" " * 20, file=sys.stderr, flush=True)
        try:
            inds = [build() for _ in range(n_sub)]
            for i in range(warmup):
                for ind, v in zip(inds, inputs[kind][i]):
                    ind.add(v)
        except Exception as exc:  # a mapping talipp does not accept: reported, left out of both sides
            failed[label] = f"{type(exc).__name__}: {exc}"
            continue
        if len(inds[0]) == 0 or inds[0][-1] is None:
            cold.append(label)
        times = []
        gc.collect()
        gc.disable()
        try:
            for r in range(reps):
                vals = inputs[kind][warmup + r]
                t0 = clock()
                for ind, v in zip(inds, vals):
                    ind.add(v)
                times.append(clock() - t0)
        finally:
            gc.enable()
        out[label] = float(np.median(times))
    if tty:
        print("\r" + " " * 80 + "\r", end="", file=sys.stderr)
    return out, cold, failed


# ---------------------------------------------------------------------------------------- main

def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes needs positive sizes, got {text!r}")
    return sizes


def machine_line() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"machine: {platform.node()} {platform.machine()} {model} {os.cpu_count()} cpus{load}, "
            f"Python {platform.python_version()}, NumPy {np.__version__}")


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _baselines(args, kernels: list[Kernel], market: Market, n_market: int, warmup: int,
               clock: Callable[[], float]) -> dict:
    """Both baselines on their subsets (they do not depend on N), and the kernels each one covers."""
    ta_all = [k for k in kernels if k.talib]
    n_ta = min(args.talib_symbols, n_market)
    talib_s, ta_failed = ({}, {})
    if ta_all:
        talib_s, ta_failed = talib_baseline(ta_all, market, n_ta, warmup, args.baseline_reps, clock)
    ta_kernels = [k for k in ta_all if k.name in talib_s]
    specs, map_failed = {}, {}
    for k in ta_kernels:
        try:
            specs[k.name] = talipp_spec(k)
        except Exception as exc:  # TA-Lib runs the kernel but its parameters do not map
            map_failed[k.name] = f"no mapping ({type(exc).__name__}: {exc})"
            specs[k.name] = None
    unique: dict[str, tuple[str, Callable[[], Any]]] = {}
    for k in ta_kernels:
        if specs[k.name] is not None:
            kind, label, build = specs[k.name]
            unique.setdefault(label, (kind, build))
    n_tp = min(args.talipp_symbols, n_market)
    talipp_s, cold, tp_failed = ({}, [], {})
    if unique:
        talipp_s, cold, tp_failed = talipp_baseline(unique, market, n_tp, warmup, args.baseline_reps, clock)
    tp_failed.update(map_failed)
    tp_kernels = [k for k in ta_kernels if specs[k.name] is not None and specs[k.name][1] in talipp_s]
    return {"ta_kernels": ta_kernels, "talib_s": talib_s, "n_ta": n_ta, "ta_failed": ta_failed,
            "specs": specs, "tp_kernels": tp_kernels, "talipp_s": talipp_s, "n_tp": n_tp, "cold": cold,
            "tp_failed": tp_failed}


def _print_baselines(base: dict, rows: list[dict], warmup: int, detail: bool) -> None:
    ta_kernels, tp_kernels, specs = base["ta_kernels"], base["tp_kernels"], base["specs"]
    talib_per_sym = sum(base["talib_s"].values()) / base["n_ta"]
    talipp_per_sym = sum(base["talipp_s"].values()) / base["n_tp"]
    ta_out = sum(len(k.outputs) for k in ta_kernels)
    tp_out = sum(len(k.outputs) for k in tp_kernels)
    print(f"\nsame indicators, ours vs baseline, ms per close for all N symbols (ours: p50 of an engine holding "
          f"only those kernels; * = scaled linearly from {base['n_ta']:,} symbols for TA-Lib, "
          f"{base['n_tp']:,} for talipp)")
    header = (f"{'symbols':>9} | {'TA-Lib feats':>12} {'ours ms':>9} {'TA-Lib ms*':>11} {'TA-Lib/ours':>12}"
              f" | {'talipp feats':>12} {'ours ms':>9} {'talipp ms*':>11} {'talipp/ours':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['n']:>9,} |"
        for key, n_out, per_sym in (("ta", ta_out, talib_per_sym), ("tp", tp_out, talipp_per_sym)):
            if key == "tp":
                line += " |"
            if key in r:
                ours, theirs = np.median(r[key]), per_sym * r["n"]
                line += f" {n_out:>12} {ours * 1e3:>9.2f} {theirs * 1e3:>11.1f} {theirs / ours:>11.1f}x"
            else:
                line += f" {'-':>12} {'':>9} {'':>11} {'':>12}"
        print(line.rstrip())
    print("TA-Lib bars per call W = lookback + 1 rounded up to a power of two (min 16): "
          + ", ".join(f"{k.name} {talib_window(k)}" for k in ta_kernels))
    if base["talipp_s"]:
        print("talipp indicators: " + ", ".join(
            f"{label} <- {'/'.join(k.name for k in tp_kernels if specs[k.name][1] == label)}"
            for label in base["talipp_s"]))
    unmapped = [k.name for k in ta_kernels if k not in tp_kernels]
    if unmapped:
        print(f"no talipp counterpart: {', '.join(unmapped)}")
    for name, err in base["ta_failed"].items():
        print(f"warning: {name} left out of the TA-Lib comparison, TA-Lib refused it: {err}")
    for what, err in base["tp_failed"].items():
        print(f"warning: {what} left out of the talipp comparison: {err}")
    if base["cold"]:
        print(f"warning: talipp {', '.join(base['cold'])} had no value yet after {warmup} bars")
    if detail:
        print("\nbaseline cost per symbol and close:")
        for name, s in base["talib_s"].items():
            print(f"  TA-Lib {name:<32} {s / base['n_ta'] * 1e6:9.2f} us")
        for label, s in base["talipp_s"].items():
            print(f"  talipp {label:<32} {s / base['n_tp'] * 1e6:9.2f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=parse_sizes, default=[1000, 10_000, 100_000],
                    help="symbol counts, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--reps", type=int, default=20, help="timed bar closes per engine (default 20)")
    ap.add_argument("--warmup-extra", type=int, default=32, help="warm-up bars beyond the largest lookback")
    ap.add_argument("--talib-symbols", type=int, default=1000, help="symbols TA-Lib is timed on (scaled to N)")
    ap.add_argument("--talipp-symbols", type=int, default=100, help="symbols talipp is timed on (scaled to N)")
    ap.add_argument("--baseline-reps", type=int, default=5, help="repetitions of each baseline (median)")
    ap.add_argument("--no-baselines", action="store_true", help="time our engine only")
    ap.add_argument("--detail", action="store_true", help="also print each baseline indicator's cost")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter (default); cpu: this thread's CPU time, steadier on a shared machine")
    args = ap.parse_args()
    if min(args.reps, args.warmup_extra, args.talib_symbols, args.talipp_symbols, args.baseline_reps) < 1:
        ap.error("--reps, --warmup-extra, --talib-symbols, --talipp-symbols and --baseline-reps must be >= 1")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time

    kernels = default_kernels()
    if not kernels:
        print("features.py: default_kernels() is empty; nothing to measure", file=sys.stderr)
        return 2
    n_out = sum(len(k.outputs) for k in kernels)
    max_lb = max(k.lookback for k in kernels)
    warmup = warmup_bars(kernels, args.warmup_extra)
    w_max = max((talib_window(k) for k in kernels if k.talib), default=0)
    n_market = max(max(args.sizes), args.talib_symbols, args.talipp_symbols)
    market = Market(load_real(), n_market, warmup + max(args.reps, args.baseline_reps) + 1, history=w_max)
    state_row, hist_row = state_bytes_per_row(kernels)

    print(machine_line())
    print("threads: " + ", ".join(f"{v}={os.environ[v]}" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                      "MKL_NUM_THREADS"))
          + " (NumPy's elementwise work is single-threaded)")
    print(f"features: {len(kernels)} kernels, {n_out} outputs (default_kernels()), "
          f"{sum(1 for k in kernels if k.talib)} kernels TA-Lib-named")
    print(f"clock: {'wall time (perf_counter)' if args.clock == 'wall' else 'CPU time of this thread (thread_time)'}"
          " for every figure below")
    print(f"warm-up: {warmup} bars (largest lookback {max_lb} + {args.warmup_extra}; a subset engine: its own "
          f"largest + {args.warmup_extra}), then {args.reps} timed closes per engine; bars: {REAL_BARS.name} "
          "replayed per symbol at its own start and scale")
    print(f"memory: state {state_row:,} B + input histories {hist_row:,} B per symbol; an engine of N symbols "
          f"needs ~{step_bytes_needed(kernels, 1):,} B x N during a step "
          f"({_gib(step_bytes_needed(kernels, 100_000))} at 100k); engines run one at a time")

    base = None if args.no_baselines else _baselines(args, kernels, market, n_market, warmup, clock)
    rows = []
    for n in args.sizes:
        need, avail = step_bytes_needed(kernels, n), mem_available()
        if avail is not None and need > 0.9 * avail:
            print(f"N={n:,}: skipped, needs ~{_gib(need)} and {_gib(avail)} is available", file=sys.stderr)
            continue
        row = {"n": n, "full": run_engine(kernels, market, n, warmup, args.reps, f"N={n:,}, all features",
                                          clock)}
        if base is not None:
            for key, subset, label in (("ta", base["ta_kernels"], "TA-Lib-named"),
                                       ("tp", base["tp_kernels"], "talipp-mapped")):
                if subset:
                    row[key] = row["full"] if len(subset) == len(kernels) else \
                        run_engine(subset, market, n, warmup_bars(subset, args.warmup_extra), args.reps,
                                   f"N={n:,}, {label} features", clock)
        rows.append(row)
        gc.collect()

    print()
    header = f"{'symbols':>9} {'features':>9} {'ms/close p50':>13} {'p90':>8} {'updates/s':>15}"
    print(header)
    print("-" * len(header))
    for r in rows:
        med, p90 = np.median(r["full"]), np.percentile(r["full"], 90)
        print(f"{r['n']:>9,} {n_out:>9} {med * 1e3:>13.2f} {p90 * 1e3:>8.2f} {r['n'] * n_out / med:>15,.0f}")
    if base is not None and rows and (base["ta_kernels"] or base["tp_kernels"]):
        _print_baselines(base, rows, warmup, args.detail)

    goal = next((r for r in rows if r["n"] == GOAL_SYMBOLS), None)
    if goal is None:
        figure = f"not measured (add {GOAL_SYMBOLS} to --sizes)"
    else:
        med = np.median(goal["full"]) * 1e3
        figure = f"measured {med:.2f} ms (p50, {n_out} features) -> {'met' if med <= GOAL_MS else 'NOT met'}"
    print(f"\ngoal: all features for 10k symbols <= 20 ms per close on one core: {figure}")
    print(f"peak RSS of this run: {_gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
