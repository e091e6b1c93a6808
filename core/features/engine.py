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
from core.features.kernel import FIELDS, Bars, Kernel

__all__ = ["FeatureEngine", "StepResult", "names_digest"]

NAN = float("nan")
_SNAPSHOT_VERSION = 1
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
        widths: dict[str, int] = {}
        for k in self.kernels:
            for field, width in k.windows().items():
                if field not in FIELDS:
                    raise ConfigError(f"{k!r} asks for a history of unknown field {field!r}")
                widths[field] = max(widths.get(field, 0), width)
        self._widths = widths
        self.n = 0
        self._t = xp.zeros(0, dtype=xp.int64)
        self._hist = {f: xp.full((0, w), NAN) for f, w in widths.items()}
        self._states = [k.init(xp, 0) for k in self.kernels]
        if n:
            self.grow(n)

    def __repr__(self) -> str:
        return f"FeatureEngine(features={len(self.names)}, rows={self.n}, xp={self.xp.__name__})"

    @property
    def bars_seen(self):
        """Bars each row has consumed (a copy)."""
        return self._t.copy()

    def grow(self, n_new: int) -> range:
        """Adds ``n_new`` fresh rows; returns their indices."""
        xp = self.xp
        self._t = xp.concatenate([self._t, xp.zeros(n_new, dtype=xp.int64)])
        for f, w in self._widths.items():
            self._hist[f] = xp.concatenate([self._hist[f], xp.full((n_new, w), NAN)])
        for k, s in zip(self.kernels, self._states):
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
        for f in self._hist:
            self._hist[f][rows] = NAN
        for k, s in zip(self.kernels, self._states):
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
                a = xp.asarray(bars[f], dtype=xp.float64)
                if a.shape != (m,):
                    raise SchemaError(f"bars[{f!r}] has shape {a.shape}, expected ({m},)")
            else:
                a = xp.full(m, NAN)
            cols[f] = a
        ts = xp.asarray(bars["ts_ns"], dtype=xp.int64) if "ts_ns" in bars else xp.zeros(m, dtype=xp.int64)
        ok = xp.isfinite(cols["open"]) & xp.isfinite(cols["high"]) & xp.isfinite(cols["low"])
        ok &= xp.isfinite(cols["close"]) & xp.isfinite(cols["volume"]) & (cols["volume"] >= 0)
        refused = np.flatnonzero(~to_numpy(ok))
        idx = None if rows is None else xp.asarray(rows, dtype=xp.int64)
        if refused.size:
            keep = xp.asarray(np.flatnonzero(to_numpy(ok)))
            idx = keep if idx is None else idx[keep]
            cols = {f: a[keep] for f, a in cols.items()}
            ts = ts[keep]
        out = xp.full((len(self.names), m), NAN)
        if idx is not None and int(idx.shape[0]) == 0:
            return StepResult(out.T, refused)
        vals = self._advance(idx, cols, ts)
        if refused.size:
            out[:, keep] = vals
        else:
            out = vals
        return StepResult(out.T, refused)

    def _advance(self, idx, cols: dict[str, Any], ts):
        xp = self.xp
        whole = idx is None
        t = self._t if whole else self._t[idx]
        hist = {}
        for f, h in self._hist.items():
            hist[f] = xp.concatenate([(h if whole else h[idx])[:, 1:], cols[f][:, None]], axis=1)
        states = self._states if whole else [{k: v[idx] for k, v in s.items()} for s in self._states]
        b = Bars(xp, t, ts, cols, hist)
        out = xp.empty((len(self.names), int(t.shape[0])))
        masks: dict[int, Any] = {}
        i = 0
        with np.errstate(all="ignore"):
            for k, s in zip(self.kernels, states):
                lb = k.lookback
                mask = masks.get(lb)
                if mask is None:
                    mask = masks[lb] = t >= lb
                for v in k.step(xp, s, b):
                    out[i] = xp.where(mask, v, NAN)
                    i += 1
        out[~xp.isfinite(out)] = NAN
        if whole:
            self._t = t + 1
            self._hist = hist
        else:
            self._t[idx] = t + 1
            for f, h in hist.items():
                self._hist[f][idx] = h
            for full, part in zip(self._states, states):
                for key, v in part.items():
                    full[key][idx] = v
        return out

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """Every row's state as bytes (host memory), restorable with `restore`."""
        snap = _Snapshot(_SNAPSHOT_VERSION, self.digest, self.n, _pack(self._t),
                         {f: _pack(h) for f, h in self._hist.items()},
                         [{k: _pack(v) for k, v in s.items()} for s in self._states])
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
        if snap.version != _SNAPSHOT_VERSION or snap.digest != self.digest:
            raise SchemaError(f"feature snapshot v{snap.version}/{snap.digest} does not match this engine "
                              f"v{_SNAPSHOT_VERSION}/{self.digest}")
        xp = self.xp
        self.n = snap.n
        self._t = _unpack(xp, snap.t).copy()
        self._hist = {f: _unpack(xp, a).copy() for f, a in snap.hist.items()}
        self._states = [{k: _unpack(xp, a).copy() for k, a in s.items()} for s in snap.states]
