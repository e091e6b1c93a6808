"""The inference worker: feature vectors in from ``feat.*``, predictions out on
``pred.<model>.<venue>.<symbol>`` and signals on ``sig.<venue>.<symbol>``.

For each (timeframe, venue, symbol) it keeps the last `WINDOW_BARS` vectors restricted to
`MODEL_FEATURES` (the models' input). Once a series has that many consecutive vectors with every
model feature finite, each new vector gets one prediction per model in ``inference.models``,
through `core.inference.InferenceClient`: micro-batched across symbols, routed by version, and
answered by the rule-based fallback (``degraded``) while Triton is down or slow.

Every vector then gets a signal from the decision stage (`core.signals.DecisionStage`: rules,
the predictions as evidence, risk sizing, the paper book); vectors still warming up for the models
get rule-only signals. The vectors of one bar close are decided in one call, as soon as the close
is complete (`core.closes.BarCloses`: the grouping depends on the stream alone, not on how fetches
cut it, so a restart or a replay gives the same signals).

Windows and the decision state are snapshotted like the feature worker's state
(`core._snapshot_worker`), so a restart gives the same windows, the same requests and, Triton
answering, the same predictions and signals under the same Msg-Ids (`core.schema.pred_msg_id`,
`core.schema.sig_id`).

Dead letters (``dlq.inference.<venue>``): a message that is not a feature vector, a vector
without the model features, a vector whose model features turn non-finite after the series had
warmed up (e.g. a refused bar), and a request Triton refuses as invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import msgspec
import nats
import numpy as np
from nats.js import JetStreamContext

from core import streams, subjects
from core._service import run_command
from core._snapshot_worker import SnapshotWorker
from core.config import Config
from core.errors import InferenceError, SchemaError, TickmeshError
from core.features.engine import names_digest
from core.inference import InferenceClient, Result, Router
from core.models.data import MODEL_FEATURES, WINDOW_BARS
from core.models.serving import FALLBACKS, summarize
from core.routing import config_route, decode_route
from core._jspublish import Message, header_block
from core.schema import (HDR_MSG_ID, HDR_SCHEMA, SCHEMA_VERSION, TIMEFRAME_NS, Alert, Codec, FeatureVector,
                         Prediction, Signal, pred_msg_id)
from core.alerts import Alerter, Deliverer, Delivery
from core.closes import BarCloses
from core.signals import DecisionStage, Execution, Feedback, SignalBatch

__all__ = ["InferenceWorker", "InferenceStats", "register", "signal_message", "signal_messages"]

log = logging.getLogger("tickmesh.inference")

METRICS_SUBJECT = "tickmesh.metrics.inference"
_SCHEMA = str(SCHEMA_VERSION)
_LAYOUT = names_digest(MODEL_FEATURES) + f"/{WINDOW_BARS}"
_MAX_SUBJECTS = 1_000_000  # bound of the signal subjects a worker keeps (one per series)
# A signal's header block around its id: what `header_block` makes of {HDR_MSG_ID: id, HDR_SCHEMA: _SCHEMA}.
_SIG_HEADERS = tuple(header_block({HDR_MSG_ID: "\0", HDR_SCHEMA: _SCHEMA}).split("\0"))


class InferenceStats(msgspec.Struct):
    """Counters of one inference worker, published once a second as JSON."""

    messages: int = 0
    vectors: int = 0
    predictions: int = 0
    degraded: int = 0
    signals: int = 0
    buy: int = 0
    sell: int = 0
    feedback: int = 0
    executions: int = 0
    alerts: int = 0
    alerts_delivered: int = 0
    alert_deliveries_failed: int = 0
    warming: int = 0
    dead_letters: int = 0
    series: int = 0
    last_seq: int = 0
    lag: int = 0
    restored_seq: int = 0
    snapshots: int = 0
    models: dict[str, dict] = {}


class _Series:
    __slots__ = ("window", "finite_run", "warmed")

    def __init__(self) -> None:
        self.window = np.full((WINDOW_BARS, len(MODEL_FEATURES)), np.nan)
        self.finite_run = 0  # consecutive vectors with every model feature finite
        self.warmed = False  # had a full finite window once: later non-finite input is an error


# A vector waiting for its bar close, with the predictions made for it.
_Decidable = tuple[FeatureVector, dict[str, Prediction]]


class _State(msgspec.Struct, array_like=True):
    layout: str
    keys: list[tuple[str, str, str]]
    windows: bytes
    finite_runs: list[int]
    warmed: list[bool]
    decision_names: list[str] = []
    decision: bytes = b""
    feedback_applied: list[str] = []
    open_alerts: list[Alert] = []
    closes: bytes = b""  # bar closes received, not yet decided


class InferenceWorker(SnapshotWorker):
    """Consumes feature vectors and publishes predictions, recoverably.

    Args:
        js: JetStream context.
        cfg: the whole config (``inference`` and ``triton`` sections are read).
        triton_url: Triton's gRPC endpoint "host:port".
        name: durable consumer name and snapshot name.
    """

    stage = "inference"
    stream = streams.FEAT_STREAM
    kind = streams.INFERENCE_WORKER

    def __init__(self, js: JetStreamContext, cfg: Config, triton_url: str,
                 name: str = streams.INFERENCE_WORKER) -> None:
        self.cfg = cfg.inference
        unknown = sorted(set(self.cfg.models) - set(FALLBACKS))
        if unknown:
            raise TickmeshError(f"inference.models {unknown} are not window models; known: {sorted(FALLBACKS)}")
        self.triton_url = triton_url
        self.stats = InferenceStats()
        super().__init__(js, name, self.cfg.fetch_batch, self.cfg.snapshot_interval_s)
        self.router = Router({m: config_route(cfg, m) for m in self.cfg.models})
        self.series: dict[tuple[str, str, str], _Series] = {}
        self._columns: dict[str, np.ndarray | None] = {}
        self._client: InferenceClient | None = None
        self._watches: list[asyncio.Task] = []
        self._feedback_applied: set[str] = set()  # signal ids whose feedback moved the weights
        self._decision_cfg = (cfg.decision, cfg.risk, cfg.load_calibration())  # DecisionStage's settings
        self.alerter = Alerter(cfg.alerts)
        self.deliverer = Deliverer(cfg.alerts, self._on_delivery)
        self._letters: set[asyncio.Task] = set()  # dead letters of failed deliveries, in flight
        self.decisions: DecisionStage | None = None  # made for the layout of the first vector
        self.closes: BarCloses[_Decidable] = BarCloses()
        self._sig_subjects: dict[tuple[str, str, str], str] = {}  # see signal_messages

    def __repr__(self) -> str:
        return f"InferenceWorker(name={self.name!r}, models={self.cfg.models}, triton={self.triton_url!r})"

    # -- state --------------------------------------------------------------------------------
    def reset_state(self) -> None:
        self.series = {}
        self.decisions = None
        self._feedback_applied = set()
        self.alerter.open_alerts = {}
        self.closes = BarCloses()

    def state_bytes(self) -> bytes:
        keys = list(self.series)
        windows = np.stack([self.series[k].window for k in keys]) if keys else np.empty(0)
        d = self.decisions
        return msgspec.msgpack.encode(_State(_LAYOUT, keys, windows.astype("<f8").tobytes(),
                                             [self.series[k].finite_run for k in keys],
                                             [self.series[k].warmed for k in keys],
                                             d.names if d else [], d.snapshot() if d else b"",
                                             sorted(self._feedback_applied), list(self.alerter.open_alerts.values()),
                                             self.closes.snapshot()))

    def restore_state(self, data: bytes) -> None:
        st = msgspec.msgpack.decode(data, type=_State)
        if st.layout != _LAYOUT:
            raise SchemaError(f"inference snapshot of another model input layout ({st.layout} != {_LAYOUT})")
        windows = np.frombuffer(st.windows, dtype="<f8").reshape(len(st.keys), WINDOW_BARS, len(MODEL_FEATURES))
        self.series = {}
        for i, key in enumerate(st.keys):
            s = _Series()
            s.window[:] = windows[i]
            s.finite_run, s.warmed = st.finite_runs[i], st.warmed[i]
            self.series[tuple(key)] = s
        self.decisions = None
        self._feedback_applied = set(st.feedback_applied)
        self.alerter.open_alerts = {(a.venue, a.symbol, a.tf): a for a in st.open_alerts}
        self.closes = BarCloses()
        if st.closes:
            self.closes.restore(st.closes, _Decidable)
        if st.decision:
            self.decisions = DecisionStage(st.decision_names, *self._decision_cfg)
            self.decisions.restore(st.decision)

    # -- lifecycle ----------------------------------------------------------------------------
    async def on_start(self) -> None:
        if self._client is None:
            self._client = InferenceClient(
                self.triton_url, {m: FALLBACKS[m] for m in self.cfg.models}, self.router,
                window_ms=self.cfg.window_ms, max_batch=self.cfg.max_batch, deadline_ms=self.cfg.deadline_ms,
                breaker_failures=self.cfg.breaker_failures, breaker_open_s=self.cfg.breaker_open_s)
            await self._client.__aenter__()
        await super().on_start()
        # (Re)started after the state is restored: a new watch delivers every current value
        # again, so feedback given after the restored snapshot is applied (once: ids are kept).
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        self._watches = [asyncio.create_task(self._watch("route.*", self._apply_route)),
                         asyncio.create_task(self._watch("feedback.*", self._apply_feedback)),
                         asyncio.create_task(self._watch("execution.*", self._apply_execution))]

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await super().run(stop)
            try:  # alerts already published still go out, within reason
                await asyncio.wait_for(self.deliverer.drain(), 10.0)
            except asyncio.TimeoutError:
                log.warning("alert deliveries still pending at stop")
            await asyncio.gather(*self._letters, return_exceptions=True)
            await self._out.wait()
        finally:
            for task in self._watches:
                task.cancel()
            await asyncio.gather(*self._watches, return_exceptions=True)
            if self._client is not None:
                await self._client.close()

    async def snapshot(self) -> None:
        """The state snapshot, then the paper portfolio for the API (``portfolio`` in the state
        bucket, JSON)."""
        await super().snapshot()
        if self.decisions is None:
            return
        book = self.decisions.portfolio.snapshot()
        for row in book["positions"]:
            row["symbol"], _, row["timeframe"] = row["symbol"].rpartition("/")  # one book per series
        book["updated_ns"] = time.time_ns()
        book["last_seq"] = self.stats.last_seq
        kv = await self.js.key_value(streams.STATE_BUCKET)
        await kv.put(streams.PORTFOLIO_KEY, msgspec.json.encode(book))  # NaN (a price not seen yet) -> null

    async def _watch(self, pattern: str, apply) -> None:
        """Calls ``apply(entry)`` for every value put under ``pattern`` in the state bucket (the
        current ones first), for as long as the worker runs; a failed watch is retried."""
        while True:
            try:
                kv = await self.js.key_value(streams.STATE_BUCKET)
                watcher = await kv.watch(pattern)
                while True:
                    try:
                        entry = await watcher.updates(timeout=5.0)
                    except (nats.errors.TimeoutError, asyncio.TimeoutError):
                        continue
                    if entry is None or not entry.value or entry.operation in ("DEL", "PURGE"):
                        continue
                    try:
                        apply(entry)
                    except (TickmeshError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.warning("ignoring %s: %s", entry.key, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watch is retried; inference goes on
                log.warning("watch of %s failed (%s); retrying", pattern, exc)
                await asyncio.sleep(1.0)

    def _apply_execution(self, entry) -> None:
        """A user's fill into the paper book (once per id: the book remembers the ids it applied).
        Before the first feature vector there is no book yet: the fill waits for the next start."""
        ex = msgspec.json.decode(entry.value, type=Execution)
        if self.decisions is not None and self.decisions.execute(ex):
            self.stats.executions += 1

    def _on_delivery(self, d: Delivery) -> None:
        """Counts deliveries; one given up on (its last attempt failed) becomes a dead letter."""
        if d.ok:
            self.stats.alerts_delivered += 1
        elif d.attempt >= self.deliverer.settings.retries:
            self.stats.alert_deliveries_failed += 1
            reason = f"alert delivery to {d.channel} failed after {d.attempt} attempts: {d.error}"
            venue = d.alert_id.split(".")[1]  # alert.<venue>.<symbol>.<tf>.<start_ns>
            task = asyncio.get_running_loop().create_task(
                self.dead_letter(d.channel, reason, msgspec.json.encode(d), f"{d.alert_id}.{d.channel}", venue=venue))
            self._letters.add(task)
            task.add_done_callback(self._letters.discard)

    def _apply_route(self, entry) -> None:
        model = entry.key.split(".", 1)[1]
        route = decode_route(entry.value)
        self.router.set(model, route)
        log.info("route of %s is now %s", model, route)

    def _apply_feedback(self, entry) -> None:
        """A user's verdict moves the voting sources' hit rates on that series, once per signal."""
        fb = msgspec.json.decode(entry.value, type=Feedback)
        if fb.id in self._feedback_applied or self.decisions is None:
            return
        if self.decisions.feedback(fb):
            self.stats.feedback += 1
        self._feedback_applied.add(fb.id)

    # -- messages -----------------------------------------------------------------------------
    def _model_columns(self, vec: FeatureVector) -> np.ndarray | None:
        """Where the model features sit in ``vec`` (None when some are missing)."""
        cols = self._columns.get(vec.digest)
        # The digest only names a layout: check it before trusting the cached positions.
        if cols is not None and len(vec.names) > cols.max() \
                and all(vec.names[c] == n for c, n in zip(cols, MODEL_FEATURES)):
            return cols
        index = {n: i for i, n in enumerate(vec.names)}
        if not all(n in index for n in MODEL_FEATURES):
            return None
        cols = np.array([index[n] for n in MODEL_FEATURES], dtype=np.int64)
        self._columns[vec.digest] = cols
        return cols

    async def on_chunk(self, msgs: list) -> None:
        """Windows updated in stream order, every due prediction requested at once, then the
        vectors grouped into bar closes (`core.closes.BarCloses`) and each due close decided in
        one call, its predictions as evidence."""
        due: list[tuple[int, np.ndarray]] = []
        vectors: list[FeatureVector] = []
        arrivals: list[tuple[FeatureVector, int | None]] = []  # stream order; None: not decided
        for msg in msgs:
            if not self.accept(msg):
                continue
            seq = msg.metadata.sequence.stream
            try:
                vec = self._codec.decode(msg.data)
                if not isinstance(vec, FeatureVector):
                    raise SchemaError(f"expected a FeatureVector on {msg.subject}, got {type(vec).__name__}")
                values = vec.array()
            except SchemaError as exc:
                await self.dead_letter(msg.subject, str(exc), msg.data, str(seq))
                continue
            self.stats.vectors += 1
            cols = self._model_columns(vec)
            if (reason := self._check(vec, cols)) is None:
                reason = self._window(vec, values[cols])
            if reason:
                await self.dead_letter(msg.subject, reason, msg.data, str(seq))
                if vec.tf in TIMEFRAME_NS:  # present at its bar close, so as not to hold it back
                    arrivals.append((vec, None))
                continue
            vectors.append(vec)
            arrivals.append((vec, len(vectors) - 1))
            s = self.series[(vec.tf, vec.venue, vec.symbol)]
            if s.finite_run >= WINDOW_BARS:
                s.warmed = True
                due.append((len(vectors) - 1, s.window.copy()))
            else:
                self.stats.warming += 1
        self.stats.series = len(self.series)
        preds: list[dict[str, Prediction]] = [{} for _ in vectors]
        if due:
            await self._predict_and_publish(vectors, due, preds)
        for vec, i in arrivals:
            for group in self.closes.add(vec.tf, vec.venue, vec.symbol, vec.start_ns,
                                         None if i is None else (vec, preds[i])):
                await self._decide_and_publish(group)
        await self.ack(msgs)
        self.stats.models = self._client.metrics() if self._client else {}

    def _check(self, vec: FeatureVector, cols: np.ndarray | None) -> str | None:
        """Why a vector cannot be used (None: it can; ``cols``: where its model features sit);
        makes the decision stage on the first."""
        if vec.tf not in TIMEFRAME_NS:
            return f"unknown timeframe {vec.tf!r}"
        if cols is None:
            return f"feature vector lacks model features {[n for n in MODEL_FEATURES if n not in vec.names]}"
        if self.decisions is None:
            self.decisions = DecisionStage(vec.names, *self._decision_cfg)
        elif vec.names != self.decisions.names:
            return "feature layout differs from the one this worker decides on"
        return None

    def _window(self, vec: FeatureVector, x: np.ndarray) -> str | None:
        """Appends the vector's model features ``x`` to its series' window; the reason when they
        turn non-finite after the series warmed up (None: fine)."""
        key = (vec.tf, vec.venue, vec.symbol)
        s = self.series.get(key) or self.series.setdefault(key, _Series())
        s.window[:-1] = s.window[1:]
        s.window[-1] = x
        if np.isfinite(x).all():
            s.finite_run += 1
            return None
        s.finite_run = 0
        if s.warmed:
            bad = [MODEL_FEATURES[i] for i in np.flatnonzero(~np.isfinite(x))]
            return f"non-finite model features after warm-up: {bad}"
        return None

    async def _predict_and_publish(self, vectors: list[FeatureVector], due: list[tuple[int, np.ndarray]],
                                   preds: list[dict[str, Prediction]]) -> None:
        calls = [(i, model, self._client.predict(model, f"{vectors[i].venue}/{vectors[i].symbol}",
                                                  {"FEATURES": w[None]}))
                 for i, w in due for model in self.cfg.models]
        results = await asyncio.gather(*(c for _, _, c in calls), return_exceptions=True)
        for (i, model, _), res in zip(calls, results):
            vec = vectors[i]
            if isinstance(res, InferenceError):
                await self.dead_letter(subjects.feat(vec.tf, vec.venue, vec.symbol), str(res), self._codec.encode(vec),
                                       f"{model}.{vec.tf}.{vec.venue}.{vec.symbol}.{vec.start_ns}")
                continue
            if isinstance(res, BaseException):
                raise res
            preds[i][model] = await self._publish(vec, model, res)

    async def _decide_and_publish(self, group: list[tuple[FeatureVector, dict[str, Prediction]]]) -> None:
        """Signals of one bar close, decided in one call and published in the group's order (each
        signal's alert, when it raised one, right after it), in one write."""
        batch = self.decisions.decide_batch([v for v, _ in group], [p for _, p in group])
        out = signal_messages(batch, self._sig_subjects)
        self.stats.buy += int((batch.action == 1).sum())
        self.stats.sell += int((batch.action == -1).sum())
        # Only these signals can raise an alert or fold into an open one: the alerter sees them,
        # in order, as Signals; each alert is published right after its signal.
        alerts, merged, done = [], [], 0
        for i in batch.alerting().tolist():
            alert = self.alerter.on_signal(batch.signal(i))
            if alert is not None:
                merged += out[done:i + 1]
                merged.append((subjects.alert(alert.priority, alert.venue, alert.symbol), self._codec.encode(alert),
                               {HDR_MSG_ID: alert.id, HDR_SCHEMA: _SCHEMA}))
                done = i + 1
                alerts.append(alert)
        if alerts:
            out = merged + out[done:]
        await self._out.publish_many(out)
        self.stats.signals += len(out) - len(alerts)
        self.stats.alerts += len(alerts)
        for alert in alerts:  # delivered beside the signal path: a slow or dead channel never holds signals
            self.deliverer.submit(alert)

    async def _publish(self, vec: FeatureVector, model: str, res: Result) -> Prediction:
        outputs = {k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in res.outputs.items()}
        label, confidence, uncertainty = summarize(model, res.outputs)
        p = Prediction(model, vec.venue, vec.symbol, vec.tf, vec.start_ns, res.version, res.role, outputs,
                       label=label, confidence=confidence, uncertainty=uncertainty, degraded=res.degraded,
                       reason=res.reason, latency_us=int(res.latency_s * 1e6), last_recv_ns=vec.last_recv_ns)
        await self._out.publish(subjects.pred(model, vec.venue, vec.symbol), self._codec.encode(p),
                                {HDR_MSG_ID: pred_msg_id(p), HDR_SCHEMA: _SCHEMA})
        self.stats.predictions += 1
        self.stats.degraded += res.degraded
        return p


def signal_message(codec: Codec, sig: Signal) -> Message:
    """What publishes ``sig``: its subject, payload and headers (its id as Nats-Msg-Id)."""
    return subjects.sig(sig.venue, sig.symbol), codec.encode(sig), {HDR_MSG_ID: sig.id, HDR_SCHEMA: _SCHEMA}


def signal_messages(batch: SignalBatch, subject_of: dict[tuple[str, str, str], str]) -> list[Message]:
    """What publishes each signal of ``batch``: for each, what `signal_message` makes of it (its
    headers as their header block, `core._jspublish.header_block`), from the batch's payloads:
    no signal is decoded or encoded again.

    Args:
        batch: a bar close's signals (`DecisionStage.decide_batch`).
        subject_of: the caller's cache of subjects per series ``(tf, venue, symbol)``: escaping a
            symbol into a subject token costs as much as the rest of the message.

    Raises:
        core.errors.SubjectError: a venue that is not a subject name.
    """
    get = subject_of.get
    subject_list = [get(k) for k in batch.keys]
    if None in subject_list:
        if len(subject_of) > _MAX_SUBJECTS:
            subject_of.clear()
        for i, k in enumerate(batch.keys):
            if subject_list[i] is None:
                subject_list[i] = subject_of[k] = subjects.sig(k[1], k[2])
    # The header block written here is `header_block`'s text for an id that needs no cleaning
    # (printable, nothing to strip): a third of the cost of a dict framed by the publisher.
    return [(subject, payload, f"{_SIG_HEADERS[0]}{sig_id}{_SIG_HEADERS[1]}"
             if sig_id.isprintable() and sig_id == sig_id.strip()
             else header_block({HDR_MSG_ID: sig_id, HDR_SCHEMA: _SCHEMA}))
            for subject, payload, sig_id in zip(subject_list, batch.payloads, batch.ids)]


def triton_url(cfg: Config) -> str:
    """The configured Triton gRPC endpoint, else the embedded server's."""
    return cfg.triton.url or f"{cfg.triton.host}:{cfg.triton.grpc_port}"


def _cmd(args: argparse.Namespace, cfg: Config) -> int:
    return run_command("inference-worker", cfg, args.url,
                       lambda js: InferenceWorker(js, cfg, args.triton or triton_url(cfg)), METRICS_SUBJECT)


def register(sub) -> None:
    p = sub.add_parser("inference-worker", help="run the inference worker (feature vectors in, predictions out)")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.add_argument("--triton", help="Triton gRPC host:port (default: from config)")
    p.set_defaults(func=_cmd)
