"""Live feature state: one engine row per (timeframe, venue, symbol), fed by closed bars.

`FeatureBook.on_bars` takes bars in stream order (as the feature worker fetches them) and returns
their feature vectors:

* Bars of one chunk are stepped in *rounds*: round k holds the k-th bar of each series in the
  chunk, so one engine step covers every symbol whose bar closed, and each series still sees its
  bars in order.
* ``ref_close`` of a bar is the close of the reference symbol's bar with the same timeframe, venue
  and start, if that bar came earlier in the stream (the reference itself uses its own close);
  otherwise NaN, and beta/correlation skip the bar (see `core.features.stats`).
* Multi-timeframe columns follow `core.features.featureset`: the latest higher-timeframe bar of
  the same venue and symbol that ended at or before this bar's start. The bar worker publishes a
  series' bars in end-time order (higher timeframe first on a tie), so that bar is always earlier
  in the stream and the result does not depend on how the stream is cut into chunks.

The whole state (engine rows, reference closes, last higher-timeframe values) round-trips through
`snapshot` / `restore`, so a restarted worker continues with identical vectors.
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

import msgspec
import numpy as np

from core.errors import SchemaError
from core.features._xp import to_numpy
from core.features.featureset import LADDER, FeatureSet, asof_index, higher_tf
from core.schema import TIMEFRAME_NS, Bar

__all__ = ["FeatureBook"]

_SNAPSHOT_VERSION = 1
_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "buy_volume", "sell_volume")


class _Snapshot(msgspec.Struct, array_like=True):
    version: int
    digest: str
    keys: list[tuple[str, str, str]]
    engine: bytes
    ref: list[tuple[str, str, int, float]]
    last: list[tuple[int, list[tuple[int, bytes]]]]


def _tf_ns(tf: str) -> int:
    return TIMEFRAME_NS.get(tf) or LADDER[tf]


class FeatureBook:
    """Feature state of every live series.

    Args:
        fs: the feature layout.
        xp: array module of the engine.
        reference: symbol that beta and correlation are measured against ("" for none).
    """

    def __init__(self, fs: FeatureSet, xp: ModuleType = np, reference: str = "") -> None:
        self.fs = fs
        self.reference = reference
        self.engine = fs.engine(xp)
        self._rows: dict[tuple[str, str, str], int] = {}
        self._keys: list[tuple[str, str, str]] = []
        self._ref: dict[tuple[str, str], tuple[int, float]] = {}
        # Per row, its last two (end_ns, multi-timeframe values): a lower bar ending together with
        # a higher one needs the higher bar before it.
        self._last: dict[int, list[tuple[int, np.ndarray]]] = {}

    def __repr__(self) -> str:
        return f"FeatureBook(series={len(self._keys)}, features={len(self.fs.names)}, reference={self.reference!r})"

    @property
    def series(self) -> int:
        return len(self._keys)

    def on_bars(self, bars: Sequence[Bar]) -> tuple[np.ndarray, np.ndarray]:
        """Feature vectors of ``bars`` (in stream order).

        Returns:
            ``(values, refused)``: a (len(bars), len(fs.names)) float64 array, and the positions of
            bars refused by the engine's input policy (their vectors are NaN).
        """
        n = len(bars)
        fs = self.fs
        out = np.full((n, len(fs.names)), np.nan)
        if n == 0:
            return out, np.zeros(0, dtype=np.int64)
        rows = np.empty(n, dtype=np.int64)
        rnd = np.empty(n, dtype=np.int64)
        ref_close = np.full(n, np.nan)
        seen: dict[int, int] = {}
        fresh = 0
        for i, b in enumerate(bars):
            key = (b.tf, b.venue, b.symbol)
            r = self._rows.get(key)
            if r is None:
                r = self._rows[key] = len(self._keys)
                self._keys.append(key)
                fresh += 1
            rows[i] = r
            rnd[i] = seen.get(r, 0)
            seen[r] = rnd[i] + 1
            if self.reference:
                if b.symbol == self.reference:
                    self._ref[(b.tf, b.venue)] = (b.start_ns, b.close)
                    ref_close[i] = b.close
                else:
                    ref = self._ref.get((b.tf, b.venue))
                    if ref is not None and ref[0] == b.start_ns:
                        ref_close[i] = ref[1]
        if fresh:
            self.engine.grow(fresh)
        cols = {f: np.fromiter((getattr(b, f) for b in bars), dtype=np.float64, count=n) for f in _FIELDS}
        cols["ref_close"] = ref_close
        cols["ts_ns"] = np.fromiter((b.start_ns for b in bars), dtype=np.int64, count=n)
        n_base = len(fs.base_names)
        refused = []
        for k in range(int(rnd.max()) + 1):
            sel = np.flatnonzero(rnd == k)
            res = self.engine.step({f: c[sel] for f, c in cols.items()}, rows[sel])
            out[sel, :n_base] = to_numpy(res.values)
            refused.extend(sel[res.refused].tolist())
        refused_arr = np.array(sorted(refused), dtype=np.int64)
        self._join(bars, rows, out, set(refused))
        return out, refused_arr

    def _join(self, bars: Sequence[Bar], rows: np.ndarray, out: np.ndarray, refused: set[int]) -> None:
        fs = self.fs
        if not fs.mtf or not fs.levels:
            return
        m = len(fs.mtf)
        n_base = len(fs.base_names)
        # Higher-timeframe values available in this chunk: the last one from before, then the
        # chunk's own in stream order.
        hist: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        for r, entries in self._last.items():
            hist[r] = ([end for end, _ in entries], [vals for _, vals in entries])
        for i, b in enumerate(bars):
            if i in refused:
                continue
            ends, vals = hist.setdefault(int(rows[i]), ([], []))
            ends.append(b.start_ns + _tf_ns(b.tf))
            vals.append(out[i, fs.mtf_index].copy())
        for i, b in enumerate(bars):
            if i in refused:
                continue  # a refused bar's vector stays all NaN
            for level in range(1, fs.levels + 1):
                htf = higher_tf(b.tf, level)
                hr = self._rows.get((htf, b.venue, b.symbol)) if htf else None
                entry = hist.get(hr) if hr is not None else None
                if entry is None:
                    continue
                j = asof_index(entry[0], b.start_ns)
                if j >= 0:
                    lo = n_base + (level - 1) * m
                    out[i, lo:lo + m] = entry[1][j]
        for r, (ends, vals) in hist.items():
            self._last[r] = list(zip(ends[-2:], vals[-2:]))

    def snapshot(self) -> bytes:
        """The whole state as bytes."""
        snap = _Snapshot(_SNAPSHOT_VERSION, self.fs.digest, list(self._keys), self.engine.snapshot(),
                         [(tf, venue, start, close) for (tf, venue), (start, close) in self._ref.items()],
                         [(r, [(end, vals.tobytes()) for end, vals in entries]) for r, entries in self._last.items()])
        return msgspec.msgpack.encode(snap)

    def restore(self, data: bytes) -> None:
        """Continues from a `snapshot` taken with the same feature layout.

        Raises:
            SchemaError: the snapshot is unreadable or from another layout.
        """
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"unreadable feature-book snapshot: {exc}") from None
        if snap.version != _SNAPSHOT_VERSION or snap.digest != self.fs.digest:
            raise SchemaError(f"feature-book snapshot v{snap.version}/{snap.digest} does not match "
                              f"v{_SNAPSHOT_VERSION}/{self.fs.digest}")
        self.engine.restore(snap.engine)
        self._keys = [tuple(k) for k in snap.keys]
        self._rows = {k: i for i, k in enumerate(self._keys)}
        self._ref = {(tf, venue): (start, close) for tf, venue, start, close in snap.ref}
        self._last = {r: [(end, np.frombuffer(v, dtype=np.float64).copy()) for end, v in entries]
                      for r, entries in snap.last}
