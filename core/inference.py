"""The inference client: micro-batched async gRPC to Triton, with deadlines, a circuit breaker,
a rule-based fallback, and version routing (canary, A/B, shadow).

Callers ask for one prediction at a time (one symbol's window); `MicroBatcher` sends a request at
once when none is in flight for that (model, version), and otherwise gathers the requests of many
symbols until the one in flight returns, ``window_ms`` passes or ``max_batch`` rows are waiting,
then sends them as one Triton request: no added latency at low load, large batches at high load. A request that fails or passes its deadline counts against the
model's `CircuitBreaker`; while it is open the caller gets the model's fallback at once, marked
``degraded``, and after ``breaker_open_s`` one probe goes through (half-open): success closes it.

Example:
    >>> router = Router({"forecast": Route(production=1, candidate=2, canary_share=0.1)})
    >>> router.choose("forecast", "binance/BTC-USDT")
    (1, 'production')
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import deque
from typing import Callable, Mapping

import msgspec
import numpy as np

from core.errors import InferenceError

__all__ = [
    "Route",
    "Router",
    "CircuitBreaker",
    "VersionStats",
    "Result",
    "MicroBatcher",
    "InferenceClient",
    "stable_share",
]


class Route(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which versions of one model serve which symbols.

    Attributes:
        production: the version most symbols get (0: the highest version Triton has loaded).
        candidate: a version under test (0: none).
        canary_share: share of symbols, by a stable hash of the symbol, sent to ``candidate``.
        shadow: a version also asked for every request whose answers are only measured (0: none).
        previous: the production version before the last promotion (what rollback returns to).
    """

    production: int = 0
    candidate: int = 0
    canary_share: float = 0.0
    shadow: int = 0
    previous: int = 0


def stable_share(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone (same on every host and run)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Router:
    """The routes of every model; replaceable at run time (promote, rollback) without a restart."""

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})

    def route(self, model: str) -> Route:
        return self.routes.get(model, Route())

    def set(self, model: str, route: Route) -> None:
        self.routes[model] = route

    def choose(self, model: str, key: str) -> tuple[int, str]:
        """``(version, role)`` for ``key`` (a symbol): role is "production" or "candidate"."""
        r = self.route(model)
        if r.candidate and stable_share(f"{model}/{key}") < r.canary_share:
            return r.candidate, "candidate"
        return r.production, "production"


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures; open → half-open after ``open_s``;
    half-open lets one probe through: success closes, failure opens again.

    Args:
        failures: consecutive failures that open the circuit.
        open_s: how long it stays open before a probe.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, failures: int = 5, open_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.open_s = open_s
        self.clock = clock
        self._state = "closed"
        self._count = 0
        self._opened_at = 0.0
        self._probing = False
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> str:
        if self._state == "open" and self.clock() - self._opened_at >= self.open_s:
            self._state = "half_open"
            self._probing = False
        return self._state

    def allow(self) -> bool:
        """Whether a request may go to the server now (in half-open: only the one probe)."""
        s = self.state
        if s == "closed":
            return True
        if s == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._state, self._count, self._probing = "closed", 0, False

    def failure(self) -> None:
        self._count += 1
        if self._state == "half_open" or self._count >= self.failures:
            if self._state != "open":
                self.opened += 1
            self._state, self._opened_at, self._probing = "open", self.clock(), False


class VersionStats:
    """Live figures of one (model, version): counts, latency percentiles, batch sizes, shadow gap."""

    def __init__(self, latency_samples: int = 2048) -> None:
        self.requests = 0
        self.ok = 0
        self.errors = 0
        self.timeouts = 0
        self.fallbacks = 0
        self.rows_sent = 0
        self.batches_sent = 0
        self.shadow_compared = 0
        self.shadow_abs_diff = 0.0
        self._latency_s: deque[float] = deque(maxlen=latency_samples)

    def latency(self, seconds: float) -> None:
        self._latency_s.append(seconds)

    def snapshot(self) -> dict[str, float]:
        lat = np.array(self._latency_s) * 1e3 if self._latency_s else np.array([np.nan])
        return {
            "requests": self.requests, "ok": self.ok, "errors": self.errors, "timeouts": self.timeouts,
            "fallbacks": self.fallbacks,
            "mean_batch": self.rows_sent / self.batches_sent if self.batches_sent else 0.0,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "shadow_compared": self.shadow_compared,
            "shadow_mean_abs_diff": self.shadow_abs_diff / self.shadow_compared if self.shadow_compared else 0.0,
        }


class Result(msgspec.Struct, kw_only=True):
    """One prediction.

    Attributes:
        model: the model asked.
        version: the version that answered (0 for a fallback).
        role: "production", "candidate" or "fallback".
        outputs: output name -> array for this one request (batch axis removed).
        degraded: True when the fallback answered.
        reason: why it is degraded ("" otherwise).
        latency_s: time from the call to the answer.
    """

    model: str
    version: int
    role: str
    outputs: dict[str, np.ndarray]
    degraded: bool = False
    reason: str = ""
    latency_s: float = 0.0


def _datatype(a: np.ndarray) -> str:
    if a.dtype == object or a.dtype.kind in "SU":
        return "BYTES"
    return {"f8": "FP64", "f4": "FP32", "i4": "INT32", "i8": "INT64", "b1": "BOOL"}[a.dtype.str[1:]]


class _Slot(msgspec.Struct):
    inputs: dict[str, np.ndarray]
    deadline: float
    future: asyncio.Future


class MicroBatcher:
    """Gathers single requests into Triton requests per (model, version).

    Args:
        client: a connected ``tritonclient.grpc.aio.InferenceServerClient``.
        window_ms: how long the first request of a batch waits for others.
        max_batch: rows that send a batch at once
            (capped by each model's ``max_batch_size``, read from Triton on first use).
        on_batch: called as ``on_batch(model, version, rows)`` for each request sent.
    """

    def __init__(self, client, window_ms: float = 2.0, max_batch: int = 256,
                 on_batch: Callable[[str, int, int], None] | None = None) -> None:
        self.client = client
        self.window_s = window_ms / 1e3
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queues: dict[tuple[str, int], list[_Slot]] = {}
        self._timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()
        self._limits: dict[str, int] = {}
        self._limit_lock = asyncio.Lock()
        self._inflight: dict[tuple[str, int], int] = {}

    async def _limit(self, model: str, deadline_s: float) -> int:
        """Rows per request: ``max_batch``, capped by the model's own ``max_batch_size``."""
        async with self._limit_lock:  # one lookup, however many requests wait for it
            if model not in self._limits:
                cfg = await asyncio.wait_for(
                    self.client.get_model_config(model, as_json=True, client_timeout=deadline_s), deadline_s + 0.05)
                self._limits[model] = min(self.max_batch, int(cfg["config"].get("max_batch_size", 0)) or 1)
        return self._limits[model]

    async def submit(self, model: str, version: int, inputs: Mapping[str, np.ndarray],
                     deadline_s: float) -> tuple[dict[str, np.ndarray], int]:
        """Outputs for one request (each input has a leading batch axis of 1), and the version
        that answered (``version`` 0 asks for the highest loaded one).

        Raises:
            tritonclient.utils.InferenceServerException: as the batch's request raised it.
            asyncio.TimeoutError: the deadline passed before the batch was answered.
        """
        loop = asyncio.get_running_loop()
        slot = _Slot(dict(inputs), loop.time() + deadline_s, loop.create_future())
        limit = self._limits.get(model) or await self._limit(model, deadline_s)
        key = (model, version)
        queue = self._queues.setdefault(key, [])
        queue.append(slot)
        # Nothing in flight: send at once (no window wait at low load); else gather until the
        # request in flight returns, the window ends or the batch is full.
        if len(queue) >= limit or not self._inflight.get(key):
            self._flush(key)
        elif key not in self._timers:
            self._timers[key] = loop.call_later(self.window_s, self._flush, key)
        return await slot.future

    def _flush(self, key: tuple[str, int]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        slots = self._queues.pop(key, [])
        if slots:
            self._inflight[key] = self._inflight.get(key, 0) + 1
            task = asyncio.get_running_loop().create_task(self._send(key, slots))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._sent, key))

    def _sent(self, key: tuple[str, int], task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._inflight[key] -= 1
        if self._queues.get(key):  # what gathered meanwhile goes now
            self._flush(key)

    async def _send(self, key: tuple[str, int], slots: list[_Slot]) -> None:
        import tritonclient.grpc.aio as grpcclient

        model, version = key
        loop = asyncio.get_running_loop()
        try:
            inputs = []
            for name in slots[0].inputs:
                arr = np.concatenate([s.inputs[name] for s in slots])
                inp = grpcclient.InferInput(name, list(arr.shape), _datatype(arr))
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            timeout_s = max(1e-3, min(s.deadline for s in slots) - loop.time())
            if self.on_batch:
                self.on_batch(model, version, len(slots))
            res = await asyncio.wait_for(
                self.client.infer(model, inputs, model_version=str(version) if version else "",
                                  client_timeout=timeout_s), timeout_s + 0.05)
            response = res.get_response(as_json=True)
            outputs = {o["name"]: res.as_numpy(o["name"]) for o in response["outputs"]}
            served = int(response.get("model_version") or version)
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear of it, whatever it is
            for s in slots:
                if not s.future.done():
                    s.future.set_exception(exc if isinstance(exc, Exception) else InferenceError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for s in slots:
            n = next(iter(s.inputs.values())).shape[0]
            if not s.future.done():
                s.future.set_result(({k: v[start:start + n] for k, v in outputs.items()}, served))
            start += n

    async def close(self) -> None:
        for key in list(self._queues):
            self._flush(key)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _is_caller_error(exc: Exception) -> bool:
    """Errors about the request itself (bad input, unknown model), not about the server's health."""
    status = getattr(exc, "status", lambda: None)() or ""
    return any(s in str(status) for s in ("INVALID_ARGUMENT", "NOT_FOUND"))


class InferenceClient:
    """Predictions from Triton, degraded to rule-based fallbacks when Triton is down or slow.

    Args:
        url: Triton's gRPC endpoint, "host:port".
        fallbacks: model -> function(inputs) -> outputs (same names and shapes as the model's,
            batch axis included), used while the model's circuit is open or a request fails.
        router: version routing (`Router`).
        window_ms, max_batch: micro-batching (`MicroBatcher`).
        deadline_ms: per-request deadline, queueing included.
        breaker_failures, breaker_open_s: `CircuitBreaker` settings, one breaker per model.
    """

    def __init__(self, url: str, fallbacks: Mapping[str, Callable[[Mapping[str, np.ndarray]], dict]],
                 router: Router | None = None, *, window_ms: float = 2.0, max_batch: int = 256,
                 deadline_ms: float = 250.0, breaker_failures: int = 5, breaker_open_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.fallbacks = dict(fallbacks)
        self.router = router or Router()
        self.window_ms = window_ms
        self.max_batch = max_batch
        self.deadline_s = deadline_ms / 1e3
        self._breaker_args = (breaker_failures, breaker_open_s, clock)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.stats: dict[tuple[str, int], VersionStats] = {}
        self._client = None
        self._batcher: MicroBatcher | None = None
        self._shadow_tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "InferenceClient":
        import tritonclient.grpc.aio as grpcclient

        self._client = grpcclient.InferenceServerClient(self.url)
        self._batcher = MicroBatcher(self._client, self.window_ms, self.max_batch, self._on_batch)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        if self._batcher is not None:
            await self._batcher.close()
        if self._client is not None:
            await self._client.close()
        self._client = self._batcher = None

    def breaker(self, model: str) -> CircuitBreaker:
        if model not in self.breakers:
            self.breakers[model] = CircuitBreaker(*self._breaker_args)
        return self.breakers[model]

    def _stats(self, model: str, version: int) -> VersionStats:
        return self.stats.setdefault((model, version), VersionStats())

    def _on_batch(self, model: str, version: int, rows: int) -> None:
        s = self._stats(model, version)
        s.batches_sent += 1
        s.rows_sent += rows

    def metrics(self) -> dict[str, dict]:
        """Per-version figures keyed ``"<model>:v<version>"`` plus each breaker's state."""
        out = {f"{m}:v{v}": s.snapshot() for (m, v), s in sorted(self.stats.items())}
        for m, b in sorted(self.breakers.items()):
            out[f"{m}:breaker"] = {"state": b.state, "opened": b.opened}
        return out

    async def predict(self, model: str, key: str, inputs: Mapping[str, np.ndarray]) -> Result:
        """One prediction for ``key`` (the symbol, which fixes its version route).

        Args:
            model: the model name.
            key: routing key, e.g. "venue/symbol".
            inputs: input name -> array with a leading batch axis of 1.

        Raises:
            InferenceError: the input itself is unusable (non-finite values, wrong shape, a model
                Triton does not know): the caller dead-letters it; the breaker is not touched.
        """
        if self._batcher is None:
            raise InferenceError("InferenceClient used outside `async with`")
        if model not in self.fallbacks:
            raise InferenceError(f"unknown model {model!r}; known: {sorted(self.fallbacks)}")
        for name, arr in inputs.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InferenceError(f"{model}: input {name!r} has non-finite values")
        t0 = time.perf_counter()
        version, role = self.router.choose(model, key)
        breaker = self.breaker(model)
        stats = self._stats(model, version)
        stats.requests += 1
        if not breaker.allow():
            return self._fallback(model, inputs, stats, t0, f"circuit open for {model}")
        try:
            outputs, served = await self._batcher.submit(model, version, inputs, self.deadline_s)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and grpc's errors
            stats.errors += 1
            if _is_caller_error(exc):
                breaker.success()  # the server answered: it is healthy
                raise InferenceError(f"{model} v{version or 'latest'} refused the request: {exc}") from None
            breaker.failure()
            if isinstance(exc, asyncio.TimeoutError) or "Deadline" in str(exc):
                stats.timeouts += 1
                reason = f"{model} timed out after {self.deadline_s * 1e3:.0f} ms"
            else:
                reason = f"{model} unavailable: {str(exc).splitlines()[0][:200]}"
            return self._fallback(model, inputs, stats, t0, reason)
        breaker.success()
        stats.ok += 1
        latency = time.perf_counter() - t0
        stats.latency(latency)
        result = Result(model=model, version=served, role=role, outputs=outputs, latency_s=latency)
        shadow = self.router.route(model).shadow
        if shadow and shadow != served:
            task = asyncio.get_running_loop().create_task(self._shadow(model, shadow, inputs, outputs))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return result

    def _fallback(self, model: str, inputs, stats: VersionStats, t0: float, reason: str) -> Result:
        stats.fallbacks += 1
        outputs = self.fallbacks[model](inputs)
        return Result(model=model, version=0, role="fallback", outputs=outputs, degraded=True, reason=reason,
                      latency_s=time.perf_counter() - t0)

    async def _shadow(self, model: str, version: int, inputs, primary: dict[str, np.ndarray]) -> None:
        """Asks the shadow version too and records how far its answer is from the one used."""
        stats = self._stats(model, version)
        stats.requests += 1
        t0 = time.perf_counter()
        try:
            out, _ = await self._batcher.submit(model, version, inputs, self.deadline_s)
        except Exception:  # noqa: BLE001 - a shadow's failure never reaches the caller
            stats.errors += 1
            return
        stats.ok += 1
        stats.latency(time.perf_counter() - t0)
        diffs = [np.abs(out[k].astype(np.float64) - primary[k].astype(np.float64)).mean()
                 for k in primary if k in out and primary[k].dtype.kind in "fib"]
        if diffs:
            stats.shadow_compared += 1
            stats.shadow_abs_diff += float(np.mean(diffs))
