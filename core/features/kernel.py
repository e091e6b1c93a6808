"""The shape every feature has: a recurrence over bars, advanced for many symbols at once.

A `Kernel` holds its parameters; its state lives outside it, in a dict of arrays whose first axis
is the symbol (row), created by `Kernel.init`. `Kernel.step` advances that state by one bar for
every row it is given and returns the outputs of that bar, one array per output. The engine
(`core.features.engine`) runs every kernel over the rows whose bar closed; the incremental object
(`core.features.incremental.Indicator`) runs one kernel over one row. Both execute the same
`step`, so the two shapes cannot drift apart.

Rules a kernel follows:

* Only array operations of the module ``xp`` it is given (NumPy or CuPy): no Python loop over rows
  or over a window, no ``.item()``, no host round trip.
* Rows are at different points of their warm-up (symbols start at different times), so phases are
  selected per row with ``xp.where`` on the row's bar count ``b.t`` (bars seen before this one).
* A state entry is replaced (``s[key] = new``) or written in place; the engine gathers and scatters
  rows around the call, so a kernel never needs to know which rows it got.
* Outputs before ``lookback`` bars have been seen are masked to NaN by the caller; a kernel whose
  own warm-up depends on more than the bar count (an input that may be missing) returns NaN itself.
* A feature TA-Lib also computes repeats TA-Lib's arithmetic in TA-Lib's order, so the float
  results agree to rounding (see tests/test_features_talib.py).

Kernels that compute the same intermediate (the five LINEARREG functions share one least-squares
fit, the directional kernels one set of Wilder sums) declare it as a `Stage` in `Kernel.stages`:
the engine keeps one state per distinct stage, advances it once per close before the kernels run,
and each kernel reads that bar's result with `Bars.stage`. A kernel alone (`Indicator`) runs its
own stages the same way, so sharing changes no value.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar

__all__ = ["Bars", "Kernel", "Stage", "FIELDS", "DERIVED", "derive", "fmt_param"]

# Bar fields a kernel may read. ``ref_close`` is the close of the reference symbol's bar of the
# same interval (NaN where it is unknown); ``ts_ns`` is the bar's start time.
FIELDS = ("open", "high", "low", "close", "volume", "vwap", "buy_volume", "sell_volume", "ref_close")
# Columns the engine derives from each bar when a kernel reads their history (`Kernel.windows`):
# computed once per close and appended to a shared history like a bar field, where a kernel would
# recompute them for every slot of its window every close. ``typical`` is the typical price.
DERIVED = ("typical",)


def derive(field: str, cols: dict[str, Any]):
    """The derived column ``field`` (one of `DERIVED`) of one bar per row, from the bar fields.

    ``typical``: (high + low + close) / 3.0, rounded as every kernel that computes it rounds it.
    """
    if field == "typical":
        return (cols["high"] + cols["low"] + cols["close"]) / 3.0
    raise KeyError(field)


def fmt_param(value: Any) -> str:
    """A parameter as it appears in a feature name: ``14``, ``2`` (for 2.0), ``0.7``, ``0.02``."""
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


class Bars:
    """One bar per row, as arrays of the engine's array module.

    Attributes:
        xp: the array module.
        n: number of rows.
        t: int64 bars seen by each row before this one (0 on a row's first bar).
        ts_ns: int64 start time of each row's bar.
        open, high, low, close, volume, vwap, buy_volume, sell_volume, ref_close: float64 columns;
            a `DERIVED` column too when some kernel reads its history.
    """

    __slots__ = ("xp", "n", "t", "ts_ns", "_cols", "_hist", "_stages")

    def __init__(self, xp: ModuleType, t, ts_ns, cols: dict[str, Any], hist: dict[str, Any]) -> None:
        self.xp = xp
        self.n = int(t.shape[0])
        self.t = t
        self.ts_ns = ts_ns
        self._cols = cols
        self._hist = hist
        self._stages: dict[Any, Any] = {}  # Stage.key -> this bar's result, filled by `run_stage`

    def __getattr__(self, name: str):
        try:
            return self._cols[name]
        except KeyError:
            raise AttributeError(name) from None

    def window(self, field: str, width: int):
        """The last ``width`` values of ``field`` per row, oldest first, this bar's in the last column.

        Values from before a row's first bar are NaN. The kernel must have declared the window in
        `Kernel.windows`; the result is a view of the engine's shared history, never to be written.
        """
        return self._hist[field][-width:].T

    def run_stage(self, stage: "Stage", state: dict[str, Any]) -> None:
        """Advances ``stage`` (its ``state``) by this bar and keeps the result for `stage`; the
        engine calls it once per close for every stage, dependencies first."""
        self._stages[stage.key] = stage.step(self.xp, state, self)

    def stage(self, stage: "Stage"):
        """This bar's result of ``stage``, shared by every kernel that reads it: never to be written.

        Raises:
            KeyError: the stage was not declared (in `Kernel.stages` or `Stage.stages`).
        """
        try:
            return self._stages[stage.key]
        except KeyError:
            raise KeyError(f"{stage!r} was not run for this bar: declare it in stages()") from None


class Stage:
    """An intermediate result several kernels read, computed once per close for all of them.

    Like a kernel without outputs of its own: parameters (``__init__`` keywords), `windows`,
    `init` and `step`, with the same rules. Its state lives in the engine beside the kernels'
    states, one per distinct `key` (class and parameters), so two kernels asking for equal stages
    share one state and one computation. `step` returns whatever its readers need (an array or a
    tuple of arrays); readers get it with `Bars.stage` and must not write into it. A stage may read
    other stages, named in `stages`.
    """

    def __init__(self, **params: Any) -> None:
        self.params = params
        self._key = (type(self), tuple(params.items()))  # looked up by every reader every close

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    @property
    def key(self) -> tuple:
        """Identity of the computation: equal keys, equal results."""
        return self._key

    def stages(self) -> tuple["Stage", ...]:
        """Stages this one reads through `Bars.stage` (advanced before it)."""
        return ()

    def windows(self) -> dict[str, int]:
        """Widths of the shared input histories this stage reads through `Bars.window`."""
        return {}

    def init(self, xp: ModuleType, n: int) -> dict[str, Any]:
        """Fresh state for ``n`` rows: every array has ``n`` as its first axis."""
        return {}

    def step(self, xp: ModuleType, s: dict[str, Any], b: Bars) -> Any:
        """Advances ``s`` by the bar ``b`` of each row; returns this bar's result."""
        raise NotImplementedError


class Kernel:
    """Base class of every feature kernel.

    Subclasses set the class attributes, pass their parameters to ``__init__`` in TA-Lib's order,
    and implement `lookback`, `init` and `step`.

    Attributes:
        fn: the function name: TA-Lib's, lowercase, when TA-Lib computes this feature.
        output_names: for a multi-output function, the name of each output (TA-Lib's when it has
            them); empty for a single output.
        inputs: bar fields read (documentation and `Indicator.update` arguments).
        talib: TA-Lib's function name when this feature equals it, else None.
        talib_inputs: for `talib`, the bar fields passed positionally to TA-Lib, in its order.
        family: section in docs/FEATURES.md.
    """

    fn: ClassVar[str] = ""
    output_names: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[str, ...]] = ("close",)
    talib: ClassVar[str | None] = None
    talib_inputs: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    @property
    def name(self) -> str:
        """``fn`` followed by every parameter in order, joined by ``_``."""
        return "_".join([self.fn, *(fmt_param(v) for v in self.params.values())])

    @property
    def outputs(self) -> tuple[str, ...]:
        """Full names of the outputs: ``name`` or ``name.<output>`` for each output."""
        if not self.output_names:
            return (self.name,)
        return tuple(f"{self.name}.{o}" for o in self.output_names)

    @property
    def lookback(self) -> int:
        """Bars before the first defined output (TA-Lib's ``*_Lookback`` for TA-Lib features)."""
        raise NotImplementedError

    def windows(self) -> dict[str, int]:
        """Widths of the shared input histories this kernel reads through `Bars.window`."""
        return {}

    def stages(self) -> tuple[Stage, ...]:
        """Shared stages this kernel reads through `Bars.stage`."""
        return ()

    def init(self, xp: ModuleType, n: int) -> dict[str, Any]:
        """Fresh state for ``n`` rows: every array has ``n`` as its first axis."""
        return {}

    def step(self, xp: ModuleType, s: dict[str, Any], b: Bars) -> tuple:
        """Advances ``s`` by the bar ``b`` of each row; returns one float64 array per output."""
        raise NotImplementedError

    def talib_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for TA-Lib's function (the parameters, under TA-Lib's names)."""
        return dict(self.params)
