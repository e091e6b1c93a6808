"""Forecast model: training, the NumPy/CuPy forward pass against torch, the served model in tritonserver.

Networks here are tiny and trained for an epoch or two on slices of real bars: the tests check
that the served arithmetic equals the reference, not that the forecasts are good (that is
`core.models.forecast.evaluate`'s job, reported with its figures, not asserted).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError
from core.models import forecast as fc
from core.models._repo import file_sha256, load_weights
from core.models.data import HORIZONS_BARS, MODEL_FEATURES, walk_forward
from tests._models import MODELS, copy_version, head_csv, infer_windows, recorded_dataset, runtime_module, \
    temp_repo, train_args

TINY = {"lstm": fc.NetSpec(arch="lstm", hidden=8, layers=2),
        "transformer": fc.NetSpec(arch="transformer", d_model=8, n_heads=2, layers=2, ff=16)}
nn = runtime_module("nn")


@pytest.fixture(scope="module")
def btc():
    """Windows of 2,500 real BTC-perp minutes: (x, y, end)."""
    return recorded_dataset("btc_perp_1m_2022-01.csv", 10_000, 12_500).supervised()


@pytest.fixture(scope="module")
def eurusd_windows():
    """200 windows of real EUR/USD hours, months away from the training slice."""
    return recorded_dataset("eurusd_1h_2017-2018.csv", 3_000, 3_300).supervised()[0][:200]


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def trained(request, btc):
    """A tiny network of each architecture fitted for two epochs on the BTC slice."""
    x, y, _ = btc
    res = fc.fit(x[:1800], y[:1800], x[1815:], y[1815:], spec=TINY[request.param], seed=5, epochs=2)
    return res


def _inputs(btc, eurusd_windows) -> np.ndarray:
    """Real windows, plus copies blown up 1000x so the [-10, 10] clip is exercised."""
    x = np.concatenate([btc[0][-300:], eurusd_windows])
    return np.concatenate([x, x[:20] * 1000.0])


def test_erf_matches_libm():
    xs = np.concatenate([np.linspace(-30.0, 30.0, 60_001), [0.0, -0.0, 1e-300, -1e-20, 0.25, 0.84375, -0.84375,
                                                           1.25, -1.25, 1 / 0.35, -1 / 0.35, 6.0, -6.0, 28.0, -28.0]])
    want_erf = np.array([math.erf(v) for v in xs])
    want_erfc = np.array([math.erfc(v) for v in xs])
    np.testing.assert_allclose(nn.erf(xs), want_erf, rtol=0, atol=4e-16)
    np.testing.assert_allclose(nn.erfc(xs), want_erfc, rtol=4e-15, atol=1e-300)
    # Deep in the tail, the rounding of x / sqrt(2) alone moves the result by ~x^2 ulps.
    want_cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in xs])
    np.testing.assert_allclose(nn.normal_cdf(xs), want_cdf, rtol=2e-13, atol=1e-17)


def test_gelu_and_layer_norm_match_torch():
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 7, 16)) * 4
    w, b = rng.standard_normal(16), rng.standard_normal(16)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(nn.gelu(x), torch.nn.functional.gelu(t).numpy(), rtol=0, atol=1e-15)
    want = torch.nn.functional.layer_norm(t, (16,), torch.from_numpy(w), torch.from_numpy(b), 1e-5).numpy()
    np.testing.assert_allclose(nn.layer_norm(x, w, b, 1e-5), want, rtol=0, atol=1e-13)


def test_numpy_forward_equals_torch_reference(trained, btc, eurusd_windows):
    weights = fc.export_weights(trained.net)
    x = _inputs(btc, eurusd_windows)
    z = (x - weights["x_center"]) / weights["x_scale"]
    assert (np.abs(z) > 10).any(), "the inputs must reach the clip"
    ref = fc.reference_forward(weights, x)
    got = nn.forecast_forward(nn.prepare_forecast(weights), x)
    for name in ("MEAN", "STD", "P_UP"):
        assert got[name].shape == (len(x), len(HORIZONS_BARS))
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert (got["STD"] > 0).all() and ((got["P_UP"] >= 0) & (got["P_UP"] <= 1)).all()
    # The reference is the trained network itself, not a re-implementation of it.
    direct = fc.predict(trained.net, x)
    for name in ("MEAN", "STD", "P_UP"):
        np.testing.assert_array_equal(direct[name], ref[name])


def test_training_is_deterministic(btc):
    x, y, _ = btc
    spec = TINY["transformer"]  # dropout and batch order both draw from the seed
    runs = [fc.export_weights(fc.fit(x[:1000], y[:1000], x[1015:1200], y[1015:1200], spec=spec, seed=s,
                                     epochs=1).net) for s in (3, 3, 4)]
    for k, v in runs[0].items():
        np.testing.assert_array_equal(v, runs[1][k], err_msg=k)
    assert not np.array_equal(runs[0]["head.weight"], runs[2]["head.weight"])


@pytest.mark.parametrize("source", ["data", "synthetic"])
def test_train_command_writes_a_version(tmp_path, source, btc):
    if source == "data":
        csv = head_csv(tmp_path, "btc_perp_1m_2022-01.csv", 1_500)
        args = train_args(tmp_path, fc, "--data", str(csv), "--arch", "transformer", "--d-model", "8", "--epochs", "1",
                          "--version", "2", "--seed", "7")
    else:
        args = train_args(tmp_path, fc, "--synthetic", "2500", "--hidden", "4", "--epochs", "2", "--seed", "7")
    seen = []
    metrics = fc.train(args, lambda done, total, note="": seen.append((done, total, note)))
    vdir = Path(args.repo) / "forecast" / str(args.version)
    assert any("val nll" in note for _, _, note in seen), "a progress line per epoch with the loss"
    weights = load_weights(vdir)
    assert str(weights["arch"]) == args.arch
    assert weights["feature_names"].tolist() == list(MODEL_FEATURES)
    card = json.loads((vdir / "card.json").read_text())
    assert card["seed"] == 7 and card["metrics"]["n_val"] == metrics["n_val"] > 0
    if source == "data":
        assert card["data"][0]["sha256"] == file_sha256(csv) and Path(card["data"][0]["path"]).name == csv.name
    else:
        assert card["data"] == [{"description": "synthetic_bars(n_bars=2500, seed=7)"}]
    for h in map(str, HORIZONS_BARS):
        assert 0 <= metrics["val"][h]["cover80"] <= 1 and math.isfinite(metrics["val"][h]["nll"])
    x = btc[0][:64]
    ref = fc.reference_forward(weights, x)
    got = nn.forecast_forward(nn.prepare_forecast(weights), x)
    np.testing.assert_allclose(got["MEAN"], ref["MEAN"], rtol=1e-9, atol=1e-12)


def test_bad_inputs_get_clear_errors(tmp_path, trained, btc):
    weights = fc.export_weights(trained.net)
    x = btc[0][:4].copy()
    x[2, 5, MODEL_FEATURES.index("rsi_14")] = np.nan
    with pytest.raises(ModelError, match="non-finite.*rsi_14"):
        fc.reference_forward(weights, x)
    with pytest.raises(ModelError, match=r"shape \[4, 31, 29\]"):
        fc.reference_forward(weights, x[:, 1:])
    with pytest.raises(ModelError, match="not forecast weights"):
        fc.reference_forward({k: v for k, v in weights.items() if k != "head.weight"}, btc[0][:4])
    with pytest.raises(ValueError, match="head.weight"):
        nn.prepare_forecast({k: v for k, v in weights.items() if k != "head.weight"})
    with pytest.raises(ModelError, match="too few samples"):
        fc.fit(btc[0][:30], btc[1][:30], btc[0][40:60], btc[1][40:60])
    missing = tmp_path / "no_such_bars.csv"
    with pytest.raises(ModelError, match="no_such_bars.csv"):
        fc.train(train_args(tmp_path, fc, "--data", str(missing)), lambda *a: None)
    with pytest.raises(ModelError, match="at least 2000"):
        fc.train(train_args(tmp_path, fc, "--synthetic", "500"), lambda *a: None)


def test_walk_forward_evaluation_on_real_bars():
    ds = recorded_dataset("eurusd_1h_2017-2018.csv", 2_000, 3_600)
    res = fc.evaluate([ds], "lstm", seed=1, folds=2, epochs=1, spec=TINY["lstm"])
    x, y, end = ds.supervised()
    d = res["datasets"][ds.name]
    assert d["n_windows"] == len(x)
    # Recompute the baselines from the splits: every test window comes after its training span.
    splits = list(walk_forward(len(x), 2))
    test = np.concatenate([np.arange(te.start, te.stop) for _, te in splits])
    assert d["n_test"] == len(test) and test[0] == splits[0][0].stop
    logc = np.log(ds.close)
    for j, h in enumerate(HORIZONS_BARS):
        m = d["horizons"][str(h)]
        yj = y[test, j]
        moved = yj != 0
        assert m["mse_zero"] == pytest.approx(np.mean(yj ** 2), rel=1e-12)
        assert m["acc_always_up"] == pytest.approx(np.mean(yj[moved] > 0), rel=1e-12)
        past = [y[:tr.stop - max(HORIZONS_BARS), j] for tr, _ in splits]
        majority = np.concatenate([np.full(te.stop - te.start, 1.0 if np.sum(p > 0) >= np.sum(p < 0) else -1.0)
                                   for p, (_, te) in zip(past, splits)])
        assert m["acc_majority"] == pytest.approx(np.mean(majority[moved] == np.sign(yj[moved])), rel=1e-12)
        last = logc[end[test]] - logc[end[test] - h]
        want_last = np.mean(np.where(last[moved] == 0, 0.5, np.sign(last[moved]) == np.sign(yj[moved])))
        assert m["acc_last_return"] == pytest.approx(want_last, rel=1e-12)
        assert 0 <= m["cover50"] <= m["cover80"] <= m["cover95"] <= 1
        assert all(math.isfinite(m[k]) for k in ("nll", "nll_const_var", "nll_recent_vol", "mse_skill"))


def test_shipped_versions_load_and_match_the_reference(btc, eurusd_windows):
    x = _inputs(btc, eurusd_windows)
    for version, arch in ((1, "lstm"), (2, "transformer")):
        vdir = MODELS / "forecast" / str(version)
        assert (vdir / "weights.npz").stat().st_size < 2_000_000
        card = json.loads((vdir / "card.json").read_text())
        # Shipped weights are trained on our own synthetic bars only, never on ../shared/data.
        assert all("description" in d and d["description"].startswith("synthetic_bars(") for d in card["data"])
        weights = load_weights(vdir)
        assert str(weights["arch"]) == arch
        ref = fc.reference_forward(weights, x)
        got = nn.forecast_forward(nn.prepare_forecast(weights), x)
        for name in ("MEAN", "STD", "P_UP"):
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-9, atol=1e-12, err_msg=f"v{version} {name}")


# ---------------------------------------------------------------------------------------------
# The real tritonserver


def _served_repo(tmp_path: Path, btc) -> Path:
    """A temp repository: forecast v1/v2 tiny nets trained here, v3/v4 the shipped weights."""
    repo = temp_repo(tmp_path, "forecast", [1, 2])
    x, y, _ = btc
    for version, arch in ((1, "lstm"), (2, "transformer")):
        res = fc.fit(x[:1500], y[:1500], x[1515:], y[1515:], spec=TINY[arch], seed=version, epochs=1)
        np.savez(repo / "forecast" / str(version) / "weights.npz", **fc.export_weights(res.net))
        copy_version(repo, "forecast", version, as_version=version + 2)
    return repo


async def test_triton_serves_the_reference_forward(tmp_path, triton_server, btc, eurusd_windows):
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    repo = _served_repo(tmp_path, btc)
    server = triton_server(repo, ["forecast"])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = _inputs(btc, eurusd_windows)

    async def infer(version: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        return await infer_windows(client, "forecast", version, batch, ("MEAN", "STD", "P_UP"))

    try:
        for version in (1, 2, 3, 4):
            weights = load_weights(repo / "forecast" / str(version))
            ref = fc.reference_forward(weights, x)
            # Many small concurrent requests: dynamic batching joins them, each gets its own rows back.
            chunks = [x[i:i + 37] for i in range(0, len(x), 37)]
            got = await asyncio.wait_for(asyncio.gather(*(infer(version, c) for c in chunks)), 60)
            for name in ("MEAN", "STD", "P_UP"):
                served = np.concatenate([g[name] for g in got])
                assert served.dtype == np.float64 and served.shape == (len(x), 3)
                np.testing.assert_allclose(served, ref[name], rtol=1e-6, atol=1e-9, err_msg=f"v{version} {name}")

        bad = x[:3].copy()
        bad[1, 7, MODEL_FEATURES.index("cci_14")] = np.inf
        with pytest.raises(InferenceServerException, match="cci_14"):
            await infer(1, bad)
        with pytest.raises(InferenceServerException):
            await infer(2, x[:2, :, :28].copy())
        # The server is still fine after the bad requests.
        again = await infer(2, x[:5])
        assert again["MEAN"].shape == (5, 3)
    finally:
        await client.close()
