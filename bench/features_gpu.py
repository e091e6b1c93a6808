"""Feature engine on the GPU: every default feature on CuPy, checked against NumPy, then timed.

1. Check. A NumPy and a CuPy `FeatureEngine(default_kernels())` step the same bars for
   --check-steps closes over --check-symbols symbols. Rows start at different steps (staggered
   over 64 closes, so rows sit at different points of their warm-up and the engine's row-subset
   path runs until every row is live), and every 50th close one bar has a NaN close (the refused
   path). Every output of every close must agree: |gpu - cpu| <= 1e-9 * max(1, |cpu|), NaN at the
   same positions, the same bars refused.
2. Timing. For each size N, a CuPy engine (built with xp = core.features._xp.array_module("gpu"))
   is warmed up past every kernel's lookback, then --reps closes of `engine.step(bars)` for all N
   rows are timed with cupy.cuda.Device().synchronize() before and after each: once with the bars
   already on the device (the engine's own cost), once from host NumPy arrays (adds the upload of
   10 columns). The results stay on the device. Baseline in the same run: the NumPy engine at the
   same N on one CPU thread (--cpu-reps closes; 0 skips it; only up to --cpu-max symbols).
3. Bandwidth. Bytes per close / p50 time, where the bytes are what one close must touch at least
   once, per row, from the kernels' own declarations: every kernel state array read and written
   (2 x Kernel.init bytes), the shared input histories read and rewritten (2 x Kernel.windows
   widths x 8 B), the 10 bar columns read (80 B) and the feature block written (8 B per feature).
   Every elementwise temporary (each xp.where, each arithmetic op) is a further full column
   written and read back, so real DRAM traffic is several times this: the figure is the useful
   bandwidth, a lower bound on what the memory system delivered, shown against the card's peak
   (2 x memory clock x bus width) where CUDA reports it.

Bars are those of bench/features.py (the real BTC perpetual series replayed per symbol at its own
start and price/volume scale). On a fresh machine CuPy compiles each elementwise kernel once
(NVRTC, cached in ~/.cupy/kernel_cache): that happens in the check and the warm-up, off the clock.

Exit status: 0 when the check passed, 1 when it found a mismatch (the timings still print), 2 when
CuPy or a usable GPU is missing (one line on stderr, no traceback).

Usage:
    .venv/bin/python bench/features_gpu.py [--sizes 1000,10000,100000] [--reps 50] [--cpu-reps 5]
        [--cpu-max 10000] [--check-steps 300] [--check-symbols 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bench.features sets the CPU thread counts to 1 before NumPy is imported; import it first.
from bench.features import (GOAL_MS, GOAL_SYMBOLS, REAL_BARS, Market, load_real, machine_line,  # noqa: E402
                            parse_sizes, run_engine, state_bytes_per_row, step_bytes_needed, time_closes,
                            warm_up, warmup_bars)

import numpy as np  # noqa: E402

from core.errors import ConfigError  # noqa: E402
from core.features._xp import array_module  # noqa: E402
from core.features.catalogue import default_kernels  # noqa: E402
from core.features.engine import FeatureEngine  # noqa: E402

STAGGER = 64  # rows start at steps 0 .. STAGGER - 1 in the check
REFUSE_EVERY = 50  # every this many closes of the check, one bar has a NaN close
BAR_COLUMNS = 10  # open, high, low, close, volume, vwap, buy_volume, sell_volume, ref_close, ts_ns


def gpu_module():
    """CuPy, after a probe that compiles and runs an elementwise kernel.

    Raises:
        ConfigError: CuPy is missing, no CUDA device is usable, or CuPy cannot run kernels on it.
    """
    try:
        cp = array_module("gpu")
    except ConfigError:
        raise
    except Exception as exc:  # CuPy present but broken (driver/library mismatch)
        raise ConfigError(f"features device 'gpu': CuPy failed to load ({type(exc).__name__}: {exc})") from None
    try:
        a = cp.arange(8, dtype=cp.float64)
        float(cp.where(a > 2.0, a, 0.0).sum())
    except Exception as exc:  # NVRTC missing, no kernel image for this GPU, out of memory...
        raise ConfigError(f"features device 'gpu': CuPy cannot run kernels here ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return cp


def device_line(cp) -> tuple[str, float | None]:
    """The GPU's description and its peak memory bandwidth in B/s (None where CUDA does not say)."""
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props.get("name", b"?")
    name = name.decode() if isinstance(name, bytes) else str(name)
    clock_khz, bus_bits = props.get("memoryClockRate"), props.get("memoryBusWidth")
    peak = 2.0 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None
    free, total = cp.cuda.runtime.memGetInfo()
    return (f"gpu: {name}, {total / 2**30:.0f} GiB ({free / 2**30:.0f} free), peak memory bandwidth "
            f"{f'{peak / 1e9:,.0f} GB/s' if peak else 'unknown'}; CuPy {cp.__version__}, "
            f"CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}"), peak


def check(cp, kernels, market: Market, n: int, steps: int) -> tuple[bool, list[str]]:
    """Steps a NumPy and a CuPy engine side by side; returns (all equal, report lines)."""
    cpu, gpu = FeatureEngine(kernels, np, n), FeatureEngine(kernels, cp, n)
    names = cpu.names
    first = np.random.default_rng(11).integers(0, STAGGER, n)  # row j's bar 0 comes at step first[j]
    worst = np.zeros(len(names))
    bad_count = np.zeros(len(names), dtype=np.int64)
    first_bad: dict[int, str] = {}
    refused_diff = 0
    compared = 0
    tty = sys.stderr.isatty()
    for i in range(steps):
        live = np.flatnonzero(first <= i)
        bars = market.bar(i - first[live], live)
        if i % REFUSE_EVERY == REFUSE_EVERY - 1:
            bars["close"][0] = np.nan
        rows = None if live.size == n else live
        # Each engine gets arrays of its own: an engine may keep an input column as state.
        rc = cpu.step({f: a.copy() for f, a in bars.items()}, rows)
        rg = gpu.step({f: cp.asarray(a) for f, a in bars.items()}, rows)
        want, got = rc.values, cp.asnumpy(rg.values)
        if not np.array_equal(rc.refused, rg.refused):
            refused_diff += 1
        nan_w, nan_g = np.isnan(want), np.isnan(got)
        both = ~nan_w & ~nan_g
        rel = np.zeros_like(want)
        rel[both] = np.abs(got[both] - want[both]) / np.maximum(1.0, np.abs(want[both]))
        rel[nan_w != nan_g] = np.inf
        worst = np.maximum(worst, rel.max(axis=0, initial=0.0))
        bad = rel > 1e-9
        if bad.any():
            bad_count += bad.sum(axis=0)
            for f in np.flatnonzero(bad.any(axis=0)):
                if f not in first_bad:
                    r = int(np.flatnonzero(bad[:, f])[0])
                    first_bad[f] = (f"close {i}, symbol {int(live[r])}: "
                                    f"cpu {float(want[r, f])!r} gpu {float(got[r, f])!r}")
        compared += want.size
        if tty and (i % 20 == 0 or i == steps - 1):
            print(f"\r  check: close {i + 1}/{steps}", end="", file=sys.stderr, flush=True)
    if tty:
        print("\r" + " " * 40 + "\r", end="", file=sys.stderr)
    lines = []
    ok = not first_bad and refused_diff == 0
    finite = worst[np.isfinite(worst)]
    lines.append(f"check: {steps} closes x {n:,} symbols (staggered starts, a refused bar every {REFUSE_EVERY} "
                 f"closes) x {len(names)} features = {compared:,} values: "
                 + ("all equal" if ok else "MISMATCH")
                 + f", largest |gpu-cpu|/max(1,|cpu|) {finite.max(initial=0.0):.1e}")
    if refused_diff:
        lines.append(f"  refused bars differ on {refused_diff} closes")
    for f in sorted(first_bad, key=lambda f: -bad_count[f])[:20]:
        what = "NaN positions differ" if np.isinf(worst[f]) else f"max rel err {worst[f]:.1e}"
        lines.append(f"  {names[f]}: {bad_count[f]:,} values off ({what}); first at {first_bad[f]}")
    if len(first_bad) > 20:
        lines.append(f"  ... and {len(first_bad) - 20} more features")
    return ok, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=parse_sizes, default=[1000, 10_000, 100_000],
                    help="symbol counts, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--reps", type=int, default=50, help="timed closes per size and input placement (default 50)")
    ap.add_argument("--cpu-reps", type=int, default=5, help="timed closes of the NumPy baseline (0: skip it)")
    ap.add_argument("--cpu-max", type=int, default=10_000,
                    help="largest N the NumPy baseline runs at (default 10000: at 100k its warm-up takes minutes)")
    ap.add_argument("--warmup-extra", type=int, default=32, help="warm-up bars beyond the largest lookback")
    ap.add_argument("--check-steps", type=int, default=300, help="closes compared with NumPy (default 300)")
    ap.add_argument("--check-symbols", type=int, default=1000, help="symbols compared with NumPy (default 1000)")
    args = ap.parse_args()
    if min(args.reps, args.warmup_extra, args.check_symbols) < 1 or args.cpu_reps < 0 or args.check_steps < 0:
        ap.error("--reps, --warmup-extra and --check-symbols must be >= 1; --cpu-reps, --check-steps >= 0")
    try:
        cp = gpu_module()
    except ConfigError as exc:
        print(f"features_gpu.py: {exc}", file=sys.stderr)
        return 2

    kernels = default_kernels()
    if not kernels:
        print("features_gpu.py: default_kernels() is empty; nothing to measure", file=sys.stderr)
        return 2
    n_out = sum(len(k.outputs) for k in kernels)
    max_lb = max(k.lookback for k in kernels)
    warmup = warmup_bars(kernels, args.warmup_extra)
    reps = max(args.reps, args.cpu_reps)
    n_market = max(max(args.sizes), args.check_symbols)
    market = Market(load_real(), n_market, max(warmup + 2 * reps, args.check_steps) + 1)
    state_row, hist_row = state_bytes_per_row(kernels)
    touched_row = 2 * state_row + 2 * hist_row + 8 * BAR_COLUMNS + 8 * n_out
    gpu_desc, peak = device_line(cp)

    print(machine_line())
    print(gpu_desc)
    print(f"features: {len(kernels)} kernels, {n_out} outputs (default_kernels()); warm-up {warmup} bars "
          f"(largest lookback {max_lb} + {args.warmup_extra}); bars: {REAL_BARS.name} replayed per symbol")
    print(f"bytes touched per symbol and close: 2 x state {state_row:,} + 2 x histories {hist_row:,} + inputs "
          f"{8 * BAR_COLUMNS} + outputs {8 * n_out} = {touched_row:,} B")

    ok = True
    if args.check_steps:
        if args.check_steps < warmup + STAGGER:
            print(f"note: --check-steps {args.check_steps} < warm-up {warmup} + stagger {STAGGER}: the last rows "
                  "to start are compared before their steady state only")
        ok, lines = check(cp, kernels, market, min(args.check_symbols, n_market), args.check_steps)
        print("\n".join(lines))

    sync = cp.cuda.Device().synchronize
    to_dev = lambda bars: {f: cp.asarray(a) for f, a in bars.items()}  # noqa: E731
    pool = cp.get_default_memory_pool()
    oom = getattr(getattr(cp.cuda, "memory", None), "OutOfMemoryError", MemoryError)
    rows = []
    for n in args.sizes:
        pool.free_all_blocks()
        free = cp.cuda.runtime.memGetInfo()[0]
        need = step_bytes_needed(kernels, n)
        if need > 0.8 * free:
            print(f"N={n:,}: skipped, needs ~{need / 2**30:.1f} GiB of GPU memory, {free / 2**30:.1f} GiB free",
                  file=sys.stderr)
            continue
        try:
            engine = FeatureEngine(kernels, cp, n)
            warm_up(engine, market, n, warmup, f"N={n:,}, GPU", put=to_dev)
            dev = time_closes(engine, market, n, warmup, args.reps, put=to_dev, sync=sync)
            host = time_closes(engine, market, n, warmup + args.reps, args.reps, sync=sync)
        except oom as exc:
            print(f"N={n:,}: skipped, out of GPU memory ({exc})", file=sys.stderr)
            continue
        finally:
            engine = None
            pool.free_all_blocks()
        cpu = run_engine(kernels, market, n, warmup, args.cpu_reps, f"N={n:,}, NumPy") \
            if args.cpu_reps and n <= args.cpu_max else None
        rows.append((n, dev, host, cpu))

    print()
    header = (f"{'symbols':>9} {'features':>9} {'GPU ms p50':>11} {'p90':>7} {'host bars p50':>14} {'updates/s':>15}"
              f" {'NumPy ms p50':>13} {'NumPy/GPU':>10} {'MB/close':>9} {'GB/s':>8} {'of peak':>8}")
    print(header)
    print("-" * len(header))
    for n, dev, host, cpu in rows:
        med = float(np.median(dev))
        touched = touched_row * n
        line = (f"{n:>9,} {n_out:>9} {med * 1e3:>11.3f} {np.percentile(dev, 90) * 1e3:>7.3f} "
                f"{np.median(host) * 1e3:>14.3f} {n * n_out / med:>15,.0f}")
        line += (f" {np.median(cpu) * 1e3:>13.2f} {np.median(cpu) / med:>9.1f}x" if cpu is not None
                 else f" {'-':>13} {'-':>10}")
        line += f" {touched / 1e6:>9.1f} {touched / med / 1e9:>8.1f}"
        line += f" {touched / med / peak:>7.1%}" if peak else f" {'-':>8}"
        print(line)
    print("GPU ms: bars already on the device; host bars: the same step given NumPy bars (upload included); "
          "results stay on the device.\nGB/s: bytes touched / GPU p50, a lower bound on the real traffic "
          "(the docstring of bench/features_gpu.py explains the estimate).")
    goal = next((r for r in rows if r[0] == GOAL_SYMBOLS), None)
    if goal is not None:
        print(f"\nfor reference, the CPU goal (all features for 10k symbols <= {GOAL_MS:g} ms per close): "
              f"GPU {np.median(goal[1]) * 1e3:.2f} ms"
              + (f", NumPy here {np.median(goal[3]) * 1e3:.2f} ms" if goal[3] is not None else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
