"""The inference worker against a real nats-server: windows from real feature vectors, degraded
predictions while Triton is unreachable, identical predictions after a restart, dead letters."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from core import streams, subjects
from core.alerts import Alerter, AlertSettings
from core.closes import BarCloses
from core.config import Config, InferenceConfig, StreamsConfig
from core.features.barfile import load_bars
from core.features.featureset import FeatureSet
from core.features.offline import compute
from core.inference_worker import InferenceWorker, _State
from core.models.data import MODEL_FEATURES, WINDOW_BARS
from core.models.serving import FALLBACKS
from core.natsserver import free_port
from core.schema import HDR_MSG_ID, Codec, FeatureVector, Prediction, Signal, feat_msg_id
from core.decision import SOURCES
from core.signals import DecisionStage, Execution, Feedback, execution_key, feedback_key
from core.triton import PROJECT_ROOT
from tests.conftest import shared_file
from tests.test_alerts import Receiver
from tests.test_worker import stream_messages, wait_until

CODEC = Codec()
MODELS = ("anomaly", "forecast", "regime")


@pytest.fixture(scope="module")
def vectors() -> list[FeatureVector]:
    """Feature vectors of the first bars of two real bar files, interleaved in time order."""
    fs = FeatureSet()
    out = []
    for path, venue, symbol, tf, n in (("bars/eurusd_1h_2017-2018.csv", "fx", "EUR-USD", "1h", 220),
                                       ("bars/btc_perp_1m_2022-01.csv", "perp", "BTC-USD-PERP", "1m", 200)):
        s = load_bars(shared_file(path))[0]
        s.columns = {k: v[:n] for k, v in s.columns.items()}
        values = compute([s], fs)[0]
        for ts, row, close in zip(s.columns["ts_ns"], values, s.columns["close"]):
            out.append(FeatureVector(venue, symbol, tf, int(ts), list(fs.names), row.astype("<f8").tobytes(),
                                     fs.digest, 0, float(close)))
    order = sorted(range(len(out)), key=lambda i: (i % 200, i))  # interleave the two series
    return [out[i] for i in order]


def expected_windows(vectors: list[FeatureVector]) -> dict[tuple, np.ndarray]:
    """(tf, venue, symbol, start_ns) -> the window a prediction must be made from."""
    cols = [vectors[0].names.index(n) for n in MODEL_FEATURES]
    hist: dict[tuple, list[np.ndarray]] = {}
    out = {}
    for v in vectors:
        h = hist.setdefault((v.tf, v.venue, v.symbol), [])
        h.append(v.array()[cols])
        w = np.array(h[-WINDOW_BARS:])
        if len(w) == WINDOW_BARS and np.isfinite(w).all():
            out[(v.tf, v.venue, v.symbol, v.start_ns)] = w
    return out


async def publish(js, vectors: list[FeatureVector]) -> None:
    for v in vectors:
        await js.publish(subjects.feat(v.tf, v.venue, v.symbol), CODEC.encode(v), headers={HDR_MSG_ID: feat_msg_id(v)})


def unreachable_triton_config() -> tuple[Config, str]:
    cfg = Config(inference=InferenceConfig(fetch_batch=50, deadline_ms=200, breaker_failures=1, breaker_open_s=600))
    return cfg, f"127.0.0.1:{free_port()}"


async def run_until(worker: InferenceWorker, messages: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: _seen(worker, messages), timeout_s=60)
    finally:
        stop.set()
        await task


async def _seen(worker, messages: int) -> bool:
    return worker.stats.messages >= messages


def replay_signals(vectors: list[FeatureVector], windows: dict[tuple, np.ndarray],
                   stage: DecisionStage | None = None, grouped: bool = True) -> dict[tuple, Signal]:
    """What the worker must publish with Triton unreachable, computed without NATS or a worker:
    the vectors grouped into bar closes as the worker groups them (``grouped``), or one by one."""
    stage = stage or DecisionStage(vectors[0].names)
    closes = BarCloses()
    out = {}
    for v in vectors:
        key = (v.tf, v.venue, v.symbol, v.start_ns)
        preds = {}
        if key in windows:
            for m in MODELS:
                outputs = FALLBACKS[m]({"FEATURES": windows[key][None]})
                preds[m] = Prediction(m, v.venue, v.symbol, v.tf, v.start_ns, 0, "fallback",
                                      {k: np.asarray(a, dtype=np.float64).ravel().tolist() for k, a in outputs.items()},
                                      degraded=True)
        groups = closes.add(v.tf, v.venue, v.symbol, v.start_ns, (v, preds)) if grouped else [[(v, preds)]]
        for group in groups:
            for sig in stage.decide([g[0] for g in group], [g[1] for g in group]):
                out[(sig.tf, sig.venue, sig.symbol, sig.start_ns)] = sig
    return out


def signals(msgs) -> dict[tuple, Signal]:
    out = {}
    for m in msgs:
        sig = CODEC.decode(m.data)
        assert isinstance(sig, Signal) and m.subject == subjects.sig(sig.venue, sig.symbol)
        out[(sig.tf, sig.venue, sig.symbol, sig.start_ns)] = sig
    return out


def predictions(msgs) -> dict[tuple, Prediction]:
    out = {}
    for m in msgs:
        p = CODEC.decode(m.data)
        assert isinstance(p, Prediction)
        assert m.subject == subjects.pred(p.model, p.venue, p.symbol)
        out[(p.model, p.tf, p.venue, p.symbol, p.start_ns)] = p
    return out


async def test_degraded_predictions_while_triton_is_unreachable(nc, vectors):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    await publish(js, vectors)
    cfg, url = unreachable_triton_config()
    worker = InferenceWorker(js, cfg, url)
    await run_until(worker, len(vectors))
    got = predictions(await stream_messages(js, streams.PRED_STREAM))
    windows = expected_windows(vectors)
    assert {k[2] for k in windows} == {"EUR-USD", "BTC-USD-PERP"} and len(windows) > 100  # both warmed up
    assert set(got) == {(m, *k) for k in windows for m in MODELS}
    for (model, *key), p in got.items():
        assert p.degraded and p.version == 0 and p.role == "fallback" and p.reason
        want = FALLBACKS[model]({"FEATURES": windows[tuple(key)][None]})
        for name, arr in want.items():
            np.testing.assert_array_equal(p.outputs[name], np.asarray(arr, dtype=np.float64).ravel())
    assert worker.stats.degraded == worker.stats.predictions == len(got)
    assert worker.stats.models["anomaly:breaker"]["state"] == "open"
    # Every vector gets a signal: rule-only while the models warm up, then with the (degraded)
    # predictions as evidence.
    sigs = signals(await stream_messages(js, streams.SIG_STREAM))
    assert set(sigs) == {(v.tf, v.venue, v.symbol, v.start_ns) for v in vectors}
    for key, sig in sigs.items():
        if key in windows:
            assert sig.degraded and sig.model_versions == {m: 0 for m in MODELS} and "forecast" in sig.contributions
        else:
            assert not sig.degraded and sig.model_versions == {} and "forecast" not in sig.contributions


async def test_restart_resumes_from_the_snapshot_with_identical_predictions(nc, vectors):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    await publish(js, vectors)
    cfg, url = unreachable_triton_config()
    first = InferenceWorker(js, cfg, url)
    await run_until(first, len(vectors) // 2)  # stops with a snapshot of about half the stream
    assert first.stats.snapshots >= 1
    second = InferenceWorker(js, cfg, url)
    await second.on_start()
    assert second.stats.restored_seq == first.stats.last_seq and len(second.series) == 2
    await run_until(second, len(vectors) - first.stats.last_seq)
    got = predictions(await stream_messages(js, streams.PRED_STREAM))
    windows = expected_windows(vectors)
    assert set(got) == {(m, *k) for k in windows for m in MODELS}
    for (model, *key), p in got.items():
        want = FALLBACKS[model]({"FEATURES": windows[tuple(key)][None]})
        np.testing.assert_array_equal(p.outputs[next(iter(want))], np.asarray(next(iter(want.values())),
                                                                              dtype=np.float64).ravel())
    # The signals after the restart equal a replay of the same vectors and (fallback) predictions
    # through a fresh decision stage: the decision state was restored with the windows.
    resumed = signals(await stream_messages(js, streams.SIG_STREAM))
    stage = DecisionStage(vectors[0].names)
    replayed = replay_signals(vectors, windows, stage)
    assert set(resumed) == set(replayed)
    assert all(CODEC.encode(resumed[k]) == CODEC.encode(replayed[k]) for k in replayed)
    assert sum(s.qty != 0 for s in replayed.values()) > 5  # the paper book traded across the restart
    # The worker's last snapshot put the paper book where GET /api/portfolio reads it.
    kv = await js.key_value(streams.STATE_BUCKET)
    book = msgspec.json.decode((await kv.get(streams.PORTFOLIO_KEY)).value)
    want = stage.portfolio.snapshot()
    assert book["n_fills"] == want["n_fills"] >= sum(s.qty != 0 for s in replayed.values())
    assert book["equity"] == want["equity"] and book["last_seq"] == second.stats.last_seq
    assert {(p["symbol"], p["timeframe"]) for p in book["positions"]} <= {("EUR-USD", "1h"), ("BTC-USD-PERP", "1m")}


@pytest.fixture(scope="module")
def market() -> list[FeatureVector]:
    """Three symbols of one venue and timeframe closing the same 1m bars (real BTC bars, each
    symbol from its own starting row), in bar order; symbol C skips one bar."""
    fs = FeatureSet()
    s = load_bars(shared_file("bars/btc_perp_1m_2022-01.csv"))[0]
    ts = s.columns["ts_ns"][:160]
    per_symbol = []
    for k, symbol in enumerate("ABC"):
        cols = {name: col[40 * k:40 * k + 160] for name, col in s.columns.items()}
        cols["ts_ns"] = ts
        s.columns = cols
        values = compute([s], fs)[0]
        per_symbol.append([FeatureVector("perp", symbol, "1m", int(t), list(fs.names), row.astype("<f8").tobytes(),
                                         fs.digest, 0, float(c)) for t, row, c in zip(ts, values, cols["close"])])
        s = load_bars(shared_file("bars/btc_perp_1m_2022-01.csv"))[0]
    out = [vs[i] for i in range(160) for vs in per_symbol]
    return [v for v in out if not (v.symbol == "C" and v.start_ns == int(ts[100]))]


async def test_bar_closes_are_decided_together_across_a_restart(nc, market):
    """Vectors of one bar close are decided in one call, whatever the fetches cut: chunks of 7
    messages split the closes of 3 symbols, a restart falls in the middle of one, and the
    signals equal a grouped replay (which differs from deciding one vector at a time)."""
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    split = 3 * 60 + 2  # two of the three vectors of bar 60 arrive before the restart
    await publish(js, market[:split])
    cfg = Config(inference=InferenceConfig(fetch_batch=7, deadline_ms=200, breaker_failures=1, breaker_open_s=600))
    url = f"127.0.0.1:{free_port()}"
    first = InferenceWorker(js, cfg, url)
    await run_until(first, split)
    assert first.stats.signals == split - 2 and first.closes.pending == 2
    await publish(js, market[split:])
    second = InferenceWorker(js, cfg, url)
    await second.on_start()
    assert second.closes.pending == 2
    await run_until(second, len(market) - split)
    got = signals(await stream_messages(js, streams.SIG_STREAM))
    windows = expected_windows(market)
    grouped = replay_signals(market, windows)
    assert set(got) == set(grouped) == {(v.tf, v.venue, v.symbol, v.start_ns) for v in market}
    assert all(CODEC.encode(got[k]) == CODEC.encode(grouped[k]) for k in grouped)
    one_by_one = replay_signals(market, windows, grouped=False)
    assert any(CODEC.encode(one_by_one[k]) != CODEC.encode(grouped[k]) for k in grouped)


async def test_the_anomaly_quantiles_survive_a_restart_and_an_older_snapshot_still_restores(nc, vectors):
    """The worker's snapshot carries each series' anomaly quantile; one whose decision state
    predates the quantiles (decision engine snapshot version 1) restores with them started afresh,
    instead of being refused (which would replay the stream from its start)."""
    stage = DecisionStage(vectors[0].names)
    replay_signals(vectors, expected_windows(vectors), stage)
    rows = np.arange(stage.engine.rows)
    for x in np.random.default_rng(0).uniform(0, 1, (150, len(rows))):
        stage.engine.observe_scores(rows, x)
    first = InferenceWorker(nc.jetstream(), Config(), "127.0.0.1:1")
    first.reset_state()
    first.decisions = stage
    state = msgspec.msgpack.decode(first.state_bytes(), type=_State)
    second = InferenceWorker(nc.jetstream(), Config(), "127.0.0.1:1")
    second.restore_state(msgspec.msgpack.encode(state))
    np.testing.assert_array_equal(second.decisions.engine.score_quantile(rows), stage.engine.score_quantile(rows))
    assert np.isfinite(stage.engine.score_quantile(rows)).all() and second.decisions.snapshot() == stage.snapshot()
    engine, book, keys = msgspec.msgpack.decode(state.decision)
    _, hit, votes, price, _ = msgspec.msgpack.decode(engine)
    state.decision = msgspec.msgpack.encode([msgspec.msgpack.encode([hit, votes, price]), book, keys])
    old = InferenceWorker(nc.jetstream(), Config(), "127.0.0.1:1")
    old.restore_state(msgspec.msgpack.encode(state))
    np.testing.assert_array_equal(old.decisions.engine.hit_rate, stage.engine.hit_rate)
    assert np.isnan(old.decisions.engine.score_quantile(rows)).all()
    assert old.decisions.portfolio.snapshot() == stage.portfolio.snapshot()


async def test_bad_input_is_dead_lettered_and_the_worker_goes_on(nc, vectors):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    one = [v for v in vectors if v.venue == "fx"][:150]
    await publish(js, one[:140])
    await js.publish(subjects.feat("1h", "fx", "EUR-USD"), b"\x93not a vector")
    lacking = msgspec.structs.replace(one[140], names=one[140].names[:5], values=one[140].values[:40])
    await publish(js, [lacking])
    nan_row = one[141].array().copy()
    nan_row[one[141].names.index("rsi_14")] = np.nan
    await publish(js, [msgspec.structs.replace(one[141], values=nan_row.tobytes())])
    await js.publish(subjects.feat("1h", "fx", "EUR-USD"),  # a vector of a timeframe nobody makes
                     CODEC.encode(msgspec.structs.replace(one[142], tf="7m")))
    await publish(js, one[143:])
    cfg, url = unreachable_triton_config()
    worker = InferenceWorker(js, cfg, url)
    await run_until(worker, len(one) + 1)
    letters = [CODEC.decode(m.data) for m in await stream_messages(js, streams.DLQ_STREAM)]
    reasons = sorted(x.reason for x in letters)
    assert len(letters) == 4 and all(x.stage == "inference" for x in letters)
    assert any("unknown timeframe '7m'" in r for r in reasons)
    assert any("lacks model features" in r for r in reasons)
    assert any("non-finite model features after warm-up: ['rsi_14']" in r for r in reasons)
    assert any("undecodable" in r or "expected" in r for r in reasons)
    # The window restarts after the NaN row: predictions resume once it is full of finite rows again.
    assert worker.stats.predictions > 0


async def _direct(url: str, model: str, window: np.ndarray) -> dict[str, np.ndarray]:
    async with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("FEATURES", [1, *window.shape], "FP64")
        inp.set_data_from_numpy(window[None])
        res = await client.infer(model, [inp])
        return {o["name"]: res.as_numpy(o["name"]) for o in res.get_response(as_json=True)["outputs"]}


@pytest.mark.timeout(400)
async def test_real_triton_then_killed_then_back(nc, vectors, triton_server):
    """Predictions from the shipped models; tritonserver killed mid-stream gives degraded ones;
    back on the same ports, the circuit closes and real predictions resume by themselves."""
    server = triton_server(PROJECT_ROOT / "triton_models", models=list(MODELS))
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    windows = expected_windows(vectors)
    due = [i for i, v in enumerate(vectors) if (v.tf, v.venue, v.symbol, v.start_ns) in windows]
    first, second = due[len(due) // 3], due[2 * len(due) // 3]
    cfg = Config(inference=InferenceConfig(fetch_batch=20, deadline_ms=5000, breaker_failures=1, breaker_open_s=0.5))
    worker = InferenceWorker(js, cfg, server.grpc_url)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await publish(js, vectors[:first])
        await wait_until(lambda: _seen(worker, first), timeout_s=120)
        server.kill()
        await publish(js, vectors[first:second])
        await wait_until(lambda: _seen(worker, second), timeout_s=120)
        server.start()
        await publish(js, vectors[second:])
        await wait_until(lambda: _seen(worker, len(vectors)), timeout_s=120)
    finally:
        stop.set()
        await task
    got = predictions(await stream_messages(js, streams.PRED_STREAM))
    assert set(got) == {(m, *k) for k in windows for m in MODELS}
    position = {(v.tf, v.venue, v.symbol, v.start_ns): i for i, v in enumerate(vectors)}
    order = sorted(got.values(), key=lambda p: (position[(p.tf, p.venue, p.symbol, p.start_ns)], p.model))
    phases = [p.degraded for p in order]
    assert not phases[0] and phases.count(True) > 0 and not phases[-1]  # real, degraded, real again
    assert worker.stats.models["forecast:breaker"]["state"] == "closed"
    last = order[-1]
    key = (last.tf, last.venue, last.symbol, last.start_ns)
    direct = await _direct(server.grpc_url, last.model, windows[key])
    for name, arr in direct.items():
        np.testing.assert_allclose(last.outputs[name], arr.astype(np.float64).ravel(), rtol=1e-12)
    assert last.version == max(server.trained_versions(last.model)) and last.role == "production"
    # The worker's requests of many symbols reached the model in batches larger than one.
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = (await client.get_inference_statistics("forecast", as_json=True))["model_stats"]
    executions = sum(int(s.get("execution_count", 0)) for s in stats)
    inferences = sum(int(s.get("inference_count", 0)) for s in stats)
    assert 0 < executions < inferences


async def test_feedback_moves_the_voters_once(nc, vectors):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    await publish(js, vectors)
    cfg, url = unreachable_triton_config()
    worker = InferenceWorker(js, cfg, url)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: _seen(worker, len(vectors)), timeout_s=60)
        sigs = signals(await stream_messages(js, streams.SIG_STREAM))
        sig = next(s for s in sigs.values() if s.action == "BUY" and sum(c != 0 for c in s.contributions.values()) > 1)
        row = worker.decisions._rows[(sig.tf, sig.venue, sig.symbol)]
        before = worker.decisions.engine.hit_rate[row].copy()
        fb = Feedback(id=sig.id, venue=sig.venue, symbol=sig.symbol, tf=sig.tf, action=sig.action, kind="executed",
                      contributions=sig.contributions)
        kv = await js.key_value(streams.STATE_BUCKET)
        for _ in range(2):  # given twice (a retry): applied once
            await kv.put(feedback_key(sig.id), msgspec.json.encode(fb))
        await wait_until(lambda: _feedback_seen(worker), timeout_s=20)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
    after = worker.decisions.engine.hit_rate[row]
    for j, source in enumerate(SOURCES):
        c = sig.contributions.get(source, 0.0)
        want = before[j] + 0.02 * ((1.0 if c > 0 else 0.0) - before[j]) if c else before[j]
        assert after[j] == pytest.approx(want), source
    assert worker.stats.feedback == 1


async def _feedback_seen(worker) -> bool:
    return worker.stats.feedback >= 1


async def test_signals_raise_alerts_delivered_to_a_webhook(nc, vectors):
    receiver = Receiver()
    dead = f"json://127.0.0.1:{free_port()}/nobody"
    try:
        js = nc.jetstream()
        await streams.ensure(js, StreamsConfig())
        one = [v for v in vectors if v.venue == "fx"]
        await publish(js, one)
        cfg = Config(inference=InferenceConfig(fetch_batch=50, deadline_ms=200, breaker_failures=1,
                                               breaker_open_s=600),
                     alerts=AlertSettings(min_priority="low", window_s=6 * 3600, retries=2, backoff_s=0.01,
                                          routes={p: [receiver.url, dead] for p in ("low", "medium", "high")}))
        worker = InferenceWorker(js, cfg, f"127.0.0.1:{free_port()}")
        await run_until(worker, len(one))
    finally:
        receiver.close()
    alerts = [CODEC.decode(m.data) for m in await stream_messages(js, streams.ALERT_STREAM)]
    sigs = signals(await stream_messages(js, streams.SIG_STREAM))
    sized = [s for s in sigs.values() if s.qty]
    assert sized and 0 < len(alerts) <= len(sized)  # at most one per 6-hour window of 1h bars
    starts = sorted(a.start_ns for a in alerts)
    assert all(b - a >= 6 * 3600 * 10**9 for a, b in zip(starts, starts[1:]))
    assert sorted(b["title"] for b in receiver.bodies) == sorted(a.title for a in alerts)  # each delivered once
    letters = [CODEC.decode(m.data) for m in await stream_messages(js, streams.DLQ_STREAM)]
    failed = [x for x in letters if "alert delivery" in x.reason]
    assert len(failed) == len(alerts) and all("after 2 attempts" in x.reason and x.venue == "fx" for x in failed)
    assert worker.stats.alerts == len(alerts) == worker.stats.alerts_delivered
    # The alerts an alerter makes of every signal in order: the worker shows it only the signals
    # that can alert (`SignalBatch.alerting`), and that changes nothing.
    every = Alerter(cfg.alerts)
    expected = [a for a in map(every.on_signal, sigs.values()) if a is not None]
    assert [CODEC.encode(a) for a in alerts] == [CODEC.encode(a) for a in expected]


async def test_user_executions_are_booked_once(nc, vectors):
    js = nc.jetstream()
    await streams.ensure(js, StreamsConfig())
    await publish(js, vectors[:60])
    cfg, url = unreachable_triton_config()
    worker = InferenceWorker(js, cfg, url)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: _seen(worker, 60), timeout_s=60)
        ex = Execution(id="my-fill-1", venue="fx", symbol="EUR-USD", tf="1h", qty=1000.0, px=1.07,
                       ts_ns=vectors[0].start_ns)
        kv = await js.key_value(streams.STATE_BUCKET)
        for _ in range(2):  # sent twice: booked once
            await kv.put(execution_key(ex.id), msgspec.json.encode(ex))
        await kv.put(execution_key("bad"), msgspec.json.encode(msgspec.structs.replace(ex, id="bad", qty=0.0)))
        await wait_until(lambda: _executions_seen(worker), timeout_s=20)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
    fills = [f for f in worker.decisions.portfolio.fills if f.source == "execution"]
    assert [(f.venue, f.symbol, f.qty, f.px, f.id) for f in fills] == [("fx", "EUR-USD/1h", 1000.0, 1.07, "my-fill-1")]
    assert worker.stats.executions == 1  # the zero-quantity one was refused, the worker went on
    book = msgspec.json.decode((await (await js.key_value(streams.STATE_BUCKET)).get(streams.PORTFOLIO_KEY)).value)
    assert any(p["symbol"] == "EUR-USD" and p["timeframe"] == "1h" for p in book["positions"])


async def _executions_seen(worker) -> bool:
    return worker.stats.executions >= 1
