"""The vectorized shape: every feature kernel advanced for many series at once.

A `FeatureEngine` owns one row per series (a (timeframe, venue, symbol) in the worker, a file
offline) and the state of every kernel for every row, as arrays of one array module (NumPy or
CuPy). `FeatureEngine.step` takes the bars that just closed for some rows and returns their
feature vectors; rows not named keep their state. Python loops run over kernels, never over rows
or over a kernel's window.

Input policy (documented in docs/FEATURES.md): a bar whose open, high, low, close or volume is not
finite, or whose volume is negative, is *refused*: its row does not advance, its vector is all NaN,
and `StepResult.refused` names it so the caller can dead-letter it. Outputs are finite or NaN:
an infinity (a division by zero in a non-TA-Lib feature) becomes NaN.
"""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any, Mapping, Sequence

import msgspec
import numpy as np

from core.errors import ConfigError, SchemaError
from core.features._xp import to_numpy
from core.features.kernel import DERIVED, FIELDS, Bars, Kernel, Stage, derive

__all__ = ["FeatureEngine", "StepResult", "names_digest"]

NAN = float("nan")
_SNAPSHOT_VERSION = 3  # bumped whenever a kernel's state changes meaning
_REQUIRED = ("open", "high", "low", "close", "volume")


def names_digest(names: Sequence[str]) -> str:
    """A short digest of an ordered feature-name list: equal digests mean equal vectors' layout."""
    return hashlib.blake2b("\x00".join(names).encode(), digest_size=8).hexdigest()


class StepResult(msgspec.Struct, frozen=True):
    """What one step produced.

    Attributes:
        values: (len(rows), n_features) float64 array of the engine's array module, row i for
            ``rows[i]``; all NaN for a refused bar.
        refused: positions (into ``rows``) of bars refused by the input policy.
    """

    values: Any
    refused: np.ndarray


class _Arr(msgspec.Struct, array_like=True):
    dtype: str
    shape: tuple[int, ...]
    data: bytes


class _Snapshot(msgspec.Struct, array_like=True):
    version: int
    digest: str
    n: int
    t: _Arr
    hist: dict[str, _Arr]
    states: list[dict[str, _Arr]]
    stage_states: list[dict[str, _Arr]] = []


class _History:
    """The last ``width`` values of one bar field per row, time-major (width, rows).

    Time-major because a reduction over the window then runs along the outer axis, about 10x
    faster in NumPy than along short contiguous rows; kernels see the transposed view (rows,
    width) through `Bars.window`. The buffer has spare rows below the window, so a step of every
    row appends one row and moves the window's end (O(rows)) instead of shifting it (O(width *
    rows)); when the spare rows run out, the window is copied back to the top.
    """

    _SPARE = 4  # spare rows per window row

    def __init__(self, xp: ModuleType, width: int, n: int) -> None:
        self.xp = xp
        self.width = width
        self.buf = xp.full((width * (1 + self._SPARE), n), NAN)
        self.end = width

    def window(self):
        return self.buf[self.end - self.width:self.end]

    def pushed(self, x, idx=None):
        """The window of rows ``idx`` (all when None) with ``x`` appended, oldest value dropped:
        a view into the buffer for all rows (committed at once), a new array for a subset
        (committed by `commit`)."""
        xp = self.xp
        if idx is not None:
            return xp.concatenate([self.window()[1:, idx], x[None, :]], axis=0)
        if self.end == self.buf.shape[0]:
            self.buf[: self.width - 1] = self.buf[self.end - self.width + 1:self.end]
            self.end = self.width - 1
        self.buf[self.end] = x
        self.end += 1
        return self.window()

    def commit(self, idx, win) -> None:
        self.buf[self.end - self.width:self.end, idx] = win

    def grow(self, n_new: int) -> None:
        self.buf = self.xp.concatenate([self.buf, self.xp.full((self.buf.shape[0], n_new), NAN)], axis=1)

    def reset(self, rows) -> None:
        self.buf[:, rows] = NAN

    def pack(self) -> "_Arr":
        return _pack(self.window())

    @classmethod
    def unpack(cls, xp: ModuleType, a: "_Arr") -> "_History":
        win = _unpack(xp, a)
        h = cls(xp, int(win.shape[0]), int(win.shape[1]))
        h.buf[: h.width] = win
        return h


def _collect_stages(kernels: Sequence[Kernel]) -> tuple[Stage, ...]:
    """Every distinct stage the kernels read (by `Stage.key`), each after the stages it reads."""
    found: dict[Any, Stage] = {}

    def visit(st: Stage) -> None:
        if st.key not in found:
            for dep in st.stages():
                visit(dep)
            found.setdefault(st.key, st)

    for k in kernels:
        for st in k.stages():
            visit(st)
    return tuple(found.values())


def _pack(a) -> _Arr:
    a = np.ascontiguousarray(to_numpy(a))
    return _Arr(a.dtype.str, tuple(a.shape), a.tobytes())


def _unpack(xp: ModuleType, a: _Arr):
    return xp.asarray(np.frombuffer(a.data, dtype=a.dtype).reshape(a.shape))


class FeatureEngine:
    """All kernels, all rows, one array module.

    Args:
        kernels: the features to compute, in output order.
        xp: array module (``numpy`` or ``cupy``; see `core.features._xp.array_module`).
        n: initial number of rows (more can be added with `grow`).

    Raises:
        ConfigError: two kernels produce the same output name.
    """

    def __init__(self, kernels: Sequence[Kernel], xp: ModuleType = np, n: int = 0) -> None:
        self.kernels = tuple(kernels)
        self.xp = xp
        self.names = tuple(o for k in self.kernels for o in k.outputs)
        dup = {x for x in self.names if self.names.count(x) > 1}
        if dup:
            raise ConfigError(f"duplicate feature names: {sorted(dup)}")
        self.digest = names_digest(self.names)
        # Stages shared by several kernels: one state each, advanced once per close (kernel.py).
        self._stages = _collect_stages(self.kernels)
        widths: dict[str, int] = {}
        for k in (*self._stages, *self.kernels):
            for field, width in k.windows().items():
                if field not in FIELDS and field not in DERIVED:
                    raise ConfigError(f"{k!r} asks for a history of unknown field {field!r}")
                widths[field] = max(widths.get(field, 0), width)
        self._derived = tuple(f for f in DERIVED if f in widths)
        self.n = 0
        self._t = xp.zeros(0, dtype=xp.int64)
        self._hist = {f: _History(xp, w, 0) for f, w in widths.items()}
        self._states = [k.init(xp, 0) for k in self.kernels]
        self._lookbacks = [k.lookback for k in self.kernels]  # read every close: computed once
        self._stage_states = [st.init(xp, 0) for st in self._stages]
        # The state's layout (history widths, each stage's and kernel's arrays) next to the names:
        # a snapshot restores only into an engine whose state has the same shape.
        self.state_digest = names_digest([
            *self.names, *(f"{f}:{w}" for f, w in sorted(widths.items())),
            *(f"{i}.{key}:{a.dtype.str}{tuple(a.shape[1:])}" for i, s in enumerate(self._states)
              for key, a in sorted(s.items())),
            *(f"{st!r}.{key}:{a.dtype.str}{tuple(a.shape[1:])}" for st, s in zip(self._stages, self._stage_states)
              for key, a in sorted(s.items()))])
        if n:
            self.grow(n)

    def __repr__(self) -> str:
        return f"FeatureEngine(features={len(self.names)}, rows={self.n}, xp={self.xp.__name__})"

    def bytes_per_row(self) -> tuple[int, int]:
        """(state of every kernel and stage plus the bar count, shared input histories) in bytes
        per row: what one more row costs between steps."""
        xp = self.xp
        state = 8 + sum(int(a.nbytes) for k, _ in self._owners() for a in k.init(xp, 1).values())
        return state, 8 * sum(h.width for h in self._hist.values())

    @property
    def bars_seen(self):
        """Bars each row has consumed (a copy)."""
        return self._t.copy()

    def _owners(self):
        """(stage or kernel, its state) for every state the engine keeps."""
        return zip((*self._stages, *self.kernels), (*self._stage_states, *self._states))

    def grow(self, n_new: int) -> range:
        """Adds ``n_new`` fresh rows; returns their indices."""
        xp = self.xp
        self._t = xp.concatenate([self._t, xp.zeros(n_new, dtype=xp.int64)])
        for h in self._hist.values():
            h.grow(n_new)
        for k, s in self._owners():
            fresh = k.init(xp, n_new)
            for key, arr in fresh.items():
                s[key] = xp.concatenate([s[key], arr]) if key in s else arr
        first = self.n
        self.n += n_new
        return range(first, self.n)

    def reset(self, rows) -> None:
        """Returns ``rows`` to their state before any bar."""
        xp = self.xp
        rows = xp.asarray(rows, dtype=xp.int64)
        m = int(rows.shape[0])
        self._t[rows] = 0
        for h in self._hist.values():
            h.reset(rows)
        for k, s in self._owners():
            for key, arr in k.init(xp, m).items():
                s[key][rows] = arr

    def step(self, bars: Mapping[str, Any], rows=None) -> StepResult:
        """Advances ``rows`` (all rows when None) by one bar each.

        Args:
            bars: one array per field of `core.features.kernel.FIELDS` plus ``ts_ns``, aligned
                with ``rows``; ``vwap``, ``buy_volume``, ``sell_volume``, ``ref_close`` and
                ``ts_ns`` may be missing (NaN / 0). Any array-like (NumPy or the engine's module).
            rows: distinct row indices; None means every row, in order.

        Raises:
            SchemaError: a required field is missing or the lengths differ.
        """
        xp = self.xp
        m = self.n if rows is None else len(rows)
        missing = [f for f in _REQUIRED if f not in bars]
        if missing:
            raise SchemaError(f"bars lack the fields {missing}")
        cols = {}
        for f in FIELDS:
            if f in bars:
                # A copy: kernels keep input columns as state (a previous close), and a caller
                # may reuse its buffers for the next bar.
                a = xp.array(bars[f], dtype=xp.float64)
                if a.shape != (m,):
                    raise SchemaError(f"bars[{f!r}] has shape {a.shape}, expected ({m},)")
            else:
                a = xp.full(m, NAN)
            cols[f] = a
        ts = xp.array(bars["ts_ns"], dtype=xp.int64) if "ts_ns" in bars else xp.zeros(m, dtype=xp.int64)
        ok = xp.isfinite(cols["open"]) & xp.isfinite(cols["high"]) & xp.isfinite(cols["low"])
        ok &= xp.isfinite(cols["close"]) & xp.isfinite(cols["volume"]) & (cols["volume"] >= 0)
        refused = np.flatnonzero(~to_numpy(ok))
        if rows is not None and m == self.n and np.array_equal(to_numpy(rows), np.arange(m)):
            rows = None  # every row in order: the cheaper whole-engine path
        idx = None if rows is None else xp.asarray(rows, dtype=xp.int64)
        if refused.size:
            keep = xp.asarray(np.flatnonzero(to_numpy(ok)))
            idx = keep if idx is None else idx[keep]
            cols = {f: a[keep] for f, a in cols.items()}
            ts = ts[keep]
        if idx is not None and int(idx.shape[0]) == 0:
            return StepResult(xp.full((len(self.names), m), NAN).T, refused)
        vals = self._advance(idx, cols, ts)
        if not refused.size:
            return StepResult(vals.T, refused)
        # Only a step with refused bars needs the NaN-filled block (filling it costs as much as a
        # tenth of a close, so the usual step does not build one).
        out = xp.full((len(self.names), m), NAN)
        out[:, keep] = vals
        return StepResult(out.T, refused)

    def _advance(self, idx, cols: dict[str, Any], ts):
        xp = self.xp
        whole = idx is None
        t = self._t if whole else self._t[idx]
        for f in self._derived:
            cols[f] = derive(f, cols)
        hist = {f: h.pushed(cols[f], idx) for f, h in self._hist.items()}
        states = self._states if whole else [{k: v[idx] for k, v in s.items()} for s in self._states]
        stage_states = (self._stage_states if whole
                        else [{k: v[idx] for k, v in s.items()} for s in self._stage_states])
        b = Bars(xp, t, ts, cols, hist)
        out = xp.empty((len(self.names), int(t.shape[0])))
        # One host read per step: rows all past a kernel's warm-up need no mask (the steady state).
        t_min = int(t.min()) if t.shape[0] else 0
        masks: dict[int, Any] = {}
        i = 0
        with np.errstate(all="ignore"):
            for st, s in zip(self._stages, stage_states):
                b.run_stage(st, s)
            for k, s, lb in zip(self.kernels, states, self._lookbacks):
                vals = k.step(xp, s, b)
                if lb <= t_min:
                    for v in vals:
                        out[i] = v
                        i += 1
                    continue
                mask = masks.get(lb)
                if mask is None:
                    mask = masks[lb] = t >= lb
                for v in vals:
                    out[i] = xp.where(mask, v, NAN)
                    i += 1
            # Outputs are finite or NaN (an infinity comes only from a division by zero).
            out[xp.isinf(out)] = NAN
        if whole:
            self._t = t + 1
        else:
            self._t[idx] = t + 1
            for f, win in hist.items():
                self._hist[f].commit(idx, win)
            for full, part in zip((*self._states, *self._stage_states), (*states, *stage_states)):
                for key, v in part.items():
                    full[key][idx] = v
        return out

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """Every row's state as bytes (host memory), restorable with `restore`."""
        snap = _Snapshot(_SNAPSHOT_VERSION, self.state_digest, self.n, _pack(self._t),
                         {f: h.pack() for f, h in self._hist.items()},
                         [{k: _pack(v) for k, v in s.items()} for s in self._states],
                         [{k: _pack(v) for k, v in s.items()} for s in self._stage_states])
        return msgspec.msgpack.encode(snap)

    def restore(self, data: bytes) -> None:
        """Replaces the state by a `snapshot` of an engine with the same features.

        Raises:
            SchemaError: the snapshot is unreadable or was taken with other features.
        """
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"unreadable feature snapshot: {exc}") from None
        if snap.version != _SNAPSHOT_VERSION or snap.digest != self.state_digest:
            raise SchemaError(f"feature snapshot v{snap.version}/{snap.digest} does not match this engine "
                              f"v{_SNAPSHOT_VERSION}/{self.state_digest} (other features or state layout)")
        xp = self.xp
        self.n = snap.n
        self._t = _unpack(xp, snap.t).copy()
        self._hist = {f: _History.unpack(xp, a) for f, a in snap.hist.items()}
        self._states = [{k: _unpack(xp, a).copy() for k, a in s.items()} for s in snap.states]
        self._stage_states = [{k: _unpack(xp, a).copy() for k, a in s.items()} for s in snap.stage_states]
