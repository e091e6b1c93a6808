"""Regime model: Baum-Welch, the served forward filter against the log-space reference, tritonserver.

Models here are fitted in well under a second on slices of real bars; the tests check the
training arithmetic and that the served filter equals the independent reference, not that the
regimes are useful (that is `core.models.regime.evaluate`'s job, reported with its figures).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataFileError, ModelError
from core.models._repo import file_sha256, load_weights
from core.models import regime as rg
from core.models.data import MODEL_FEATURES, Dataset, sliding_windows, walk_forward
from tests._models import MODELS, head_csv, infer_windows, recorded_dataset, runtime_module, served_repo, \
    train_args

hmm = runtime_module("hmm")


@pytest.fixture(scope="module")
def btc() -> Dataset:
    return recorded_dataset("btc_perp_1m_2022-01.csv", 20_000, 24_000)


@pytest.fixture(scope="module")
def eurusd() -> Dataset:
    return recorded_dataset("eurusd_1h_2017-2018.csv", 1_000, 3_000)


@pytest.fixture(scope="module")
def model(btc) -> rg.GaussianHmm:
    return rg.fit([btc.features[:3_000]], seed=3, restarts=2, n_iter=40)


def _inputs(btc: Dataset, eurusd: Dataset) -> np.ndarray:
    """Real windows of both files, copies scaled 1000x (the clip), and flat-price windows (natr 0)."""
    x = np.concatenate([sliding_windows(btc.features)[1][::10], sliding_windows(eurusd.features)[1][:200]])
    flat = x[:5].copy()
    flat[:, :, MODEL_FEATURES.index("natr_14")] = 0.0
    flat[:, :, MODEL_FEATURES.index("logret_1")] = 0.0
    return np.concatenate([x, x[:20] * 1000.0, flat])


def _simulate(n: int, seed: int):
    """A known 3-state chain with 2-D Gaussian emissions."""
    rng = np.random.default_rng(seed)
    trans = np.array([[0.97, 0.02, 0.01], [0.02, 0.96, 0.02], [0.01, 0.04, 0.95]])
    means = np.array([[0.0, -1.5], [0.2, 0.0], [-0.3, 1.5]])
    sds = np.array([[0.5, 0.3], [1.0, 0.3], [2.0, 0.3]])
    s = np.empty(n, dtype=int)
    s[0] = 0
    for t in range(1, n):
        s[t] = rng.choice(3, p=trans[s[t - 1]])
    return means[s] + sds[s] * rng.standard_normal((n, 2)), trans, means


def test_baum_welch_recovers_a_known_chain():
    x, trans, means = _simulate(6_000, seed=11)
    notes = []
    start, got_trans, got_means, covs, ll, iters = rg.fit_hmm(
        [x[:3_000], x[3_000:]], 3, seed=0, restarts=2, n_iter=60, chunk_bars=256,
        progress=lambda done, total, note="": notes.append(note))
    np.testing.assert_allclose(got_means, means, atol=0.12)
    np.testing.assert_allclose(np.diag(got_trans), np.diag(trans), atol=0.02)
    np.testing.assert_allclose(got_trans.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (np.linalg.eigvalsh(covs) > 0).all()
    # EM never lowers the likelihood: the per-iteration progress notes show it.
    first = [float(n.split("ll/bar ")[1]) for n in notes if n.startswith("restart 1/2")]
    assert len(first) > 3 and all(b >= a - 1e-9 for a, b in zip(first, first[1:]))
    assert ll == pytest.approx(max(first), abs=1e-3)


def test_stationary_distribution():
    trans = np.array([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.2, 0.8]])
    p = rg.stationary_distribution(trans)
    np.testing.assert_allclose(p @ trans, p, rtol=0, atol=1e-15)
    assert p.sum() == pytest.approx(1.0, abs=1e-15)


def test_states_are_ordered_by_volatility(model, btc):
    assert np.all(np.diff(model.means[:, 1]) > 0)
    np.testing.assert_allclose(model.start_prob @ model.trans, model.start_prob, atol=1e-14)
    # Filtered labels on the training bars: the turbulent state's bars move more than the calm one's.
    obs = rg.bar_observations(btc.features[:3_000])
    ok = np.isfinite(obs).all(axis=1)
    _, _, probs = rg.sequence_loglik(model, model.standardize(obs[ok]))
    label = probs.argmax(axis=1)
    ret = obs[ok][:, 0]
    assert ret[label == 2].std() > 1.5 * ret[label == 0].std()


def test_runtime_filter_equals_log_space_reference(model, btc, eurusd):
    x = _inputs(btc, eurusd)
    weights = rg.export_weights(model)
    params = hmm.HmmParams(weights, np)
    z = hmm.observations(np, params, x)
    assert (z == model.low).any() and (z == model.high).any(), "the inputs must reach both clip bounds"
    got = hmm.forward(np, params, x)
    ref = rg.reference_forward(model, x)
    assert got["PROBS"].shape == (len(x), 3) and got["PROBS"].dtype == np.float64
    np.testing.assert_allclose(got["PROBS"], ref["PROBS"], rtol=0, atol=1e-9)
    assert got["LABEL"].dtype == np.int32 and got["LABEL"].shape == (len(x), 1)
    np.testing.assert_array_equal(got["LABEL"], ref["LABEL"])
    np.testing.assert_allclose(got["PROBS"].sum(axis=1), 1.0, atol=1e-12)
    assert len(np.unique(got["LABEL"])) == 3, "the windows should visit every regime"
    # Flat prices (natr 0, below anything seen in training) are calm, prices blown up 1000x turbulent.
    assert (got["LABEL"][-5:] == 0).all() and (got["LABEL"][-25:-5] == 2).all()
    # The model rebuilt from its weights is the same model.
    again = rg.reference_forward(rg.GaussianHmm.from_weights(weights), x)
    np.testing.assert_array_equal(again["PROBS"], ref["PROBS"])


def test_sequence_loglik_agrees_with_the_window_filter(model, btc):
    x = sliding_windows(btc.features)[1][-50:]
    params = hmm.HmmParams(rg.export_weights(model), np)
    z = hmm.observations(np, params, x)
    probs, loglik = hmm.forward_filter(np, params, z)
    for i in (0, 17, 49):
        joint, ret, seq_probs = rg.sequence_loglik(model, model.standardize(rg.bar_observations(x[i])))
        assert joint.sum() == pytest.approx(loglik[i], rel=1e-12)
        np.testing.assert_allclose(seq_probs[-1], probs[i], atol=1e-12)
        # The return's predictive density integrates one state's marginal at a time: compare with scipy.
        from scipy.stats import norm

        pred = model.start_prob
        want = np.log(pred @ norm.pdf(model.standardize(rg.bar_observations(x[i]))[0, 0], model.means[:, 0],
                                      np.sqrt(model.covs[:, 0, 0])))
        assert ret[0] == pytest.approx(want, rel=1e-12)


def test_training_is_deterministic(btc):
    runs = [rg.export_weights(rg.fit([btc.features[:2_000]], seed=s, restarts=2, n_iter=15)) for s in (4, 4)]
    for k, v in runs[0].items():
        np.testing.assert_array_equal(v, runs[1][k], err_msg=k)


@pytest.mark.parametrize("source", ["data", "synthetic"])
def test_train_command_writes_a_version(tmp_path, source, btc):
    if source == "data":
        csv = head_csv(tmp_path, "btc_perp_1m_2022-01.csv", 2_000)
        args = train_args(tmp_path, rg, "--data", str(csv), "--version", "2", "--seed", "7", "--restarts", "2",
                          "--iterations", "20")
    else:
        args = train_args(tmp_path, rg, "--synthetic", "3000", "--seed", "7", "--restarts", "1", "--iterations", "20")
    seen = []
    metrics = rg.train(args, lambda done, total, note="": seen.append((done, total, note)))
    vdir = Path(args.repo) / "regime" / str(args.version)
    assert any("iter" in note and "ll/bar" in note for _, _, note in seen), "a progress line per iteration"
    assert seen[-1][0] == seen[-1][1]
    weights = load_weights(vdir)
    assert weights["feature_names"].tolist() == list(MODEL_FEATURES)
    assert weights["state_names"].tolist() == ["calm", "normal", "turbulent"]
    card = json.loads((vdir / "card.json").read_text())
    assert card["seed"] == 7 and card["metrics"]["train_loglik_per_bar"] == metrics["train_loglik_per_bar"]
    assert metrics["train_loglik_per_bar"] > metrics["train_loglik_per_bar_one_gaussian"]
    if source == "data":
        assert card["data"] == [{"path": csv.name, "sha256": file_sha256(csv)}]
    else:
        assert card["data"] == [{"description": "synthetic_bars(n_bars=3000, seed=7)"}]
    x = sliding_windows(btc.features)[1][:64]
    got = hmm.forward(np, hmm.HmmParams(weights, np), x)
    np.testing.assert_allclose(got["PROBS"], rg.reference_forward(rg.GaussianHmm.from_weights(weights), x)["PROBS"],
                               rtol=0, atol=1e-9)


def test_bad_inputs_get_clear_errors(tmp_path, model, btc):
    x = sliding_windows(btc.features)[1][:4].copy()
    x[2, 5, MODEL_FEATURES.index("natr_14")] = np.nan
    with pytest.raises(ModelError, match="non-finite.*natr_14"):
        rg.reference_forward(model, x)
    with pytest.raises(ModelError, match=r"shape \[4, 31, 29\]"):
        rg.reference_forward(model, x[:, 1:])
    weights = rg.export_weights(model)
    with pytest.raises(ModelError, match="not regime weights"):
        rg.GaussianHmm.from_weights({k: v for k, v in weights.items() if k != "trans"})
    with pytest.raises(ValueError, match="trans"):
        hmm.HmmParams({k: v for k, v in weights.items() if k != "trans"}, np)
    broken = dict(weights, covs=-weights["covs"])
    with pytest.raises(ValueError, match="positive definite"):
        hmm.HmmParams(broken, np)
    with pytest.raises(ModelError, match="too few"):
        rg.fit([btc.features[:40]], seed=0)
    with pytest.raises(DataFileError, match="no_such_bars.csv"):
        rg.train(train_args(tmp_path, rg, "--data", str(tmp_path / "no_such_bars.csv")), lambda *a: None)
    with pytest.raises(ModelError, match="at least 500"):
        rg.train(train_args(tmp_path, rg, "--synthetic", "100"), lambda *a: None)


def test_walk_forward_evaluation_on_real_bars(eurusd):
    res = rg.evaluate([eurusd], seed=1, folds=2, restarts=1, n_iter=20)[eurusd.name]
    obs = rg.bar_observations(eurusd.features)
    ok = np.flatnonzero(np.isfinite(obs).all(axis=1))
    splits = list(walk_forward(len(ok), 2))
    assert res["test_bars"] == sum(te.stop - te.start for _, te in splits)
    # Recompute the one-Gaussian baseline of each fold with scipy: fit on the past, score the fold.
    from scipy.stats import multivariate_normal

    for (tr, te), fold in zip(splits, res["folds"]):
        past = obs[ok[tr]]
        center, scale = past.mean(axis=0), past.std(axis=0)
        zp = (past - center) / scale
        zt = np.clip((obs[ok[te]] - center) / scale, zp.min(axis=0), zp.max(axis=0))
        want = multivariate_normal(zp.mean(axis=0), np.cov(zp.T, bias=True) + 1e-3 * np.eye(2)).logpdf(zt).mean()
        assert fold["loglik_per_bar"]["gauss1"] == pytest.approx(want, rel=1e-9)
        for key in ("hmm2", "hmm3", "var1"):
            assert math.isfinite(fold["loglik_per_bar"][key])
        for key in ("gauss1", "var1", "rollvol", "hmm2", "hmm3"):
            assert math.isfinite(fold["ret_loglik_per_bar"][key])
    assert sum(v["share"] for v in res["labels"].values()) == pytest.approx(1.0)
    assert res["gain_hmm3_vs_gauss1"] == pytest.approx(res["loglik_per_bar"]["hmm3"] - res["loglik_per_bar"]["gauss1"])


def test_shipped_version_loads_and_matches_the_reference(btc, eurusd):
    vdir = MODELS / "regime" / "1"
    assert (vdir / "weights.npz").stat().st_size < 2_000_000
    card = json.loads((vdir / "card.json").read_text())
    # Shipped weights are trained on our own synthetic bars only, never on ../shared/data.
    assert all("description" in d and d["description"].startswith("synthetic_bars(") for d in card["data"])
    weights = load_weights(vdir)
    x = _inputs(btc, eurusd)
    got = hmm.forward(np, hmm.HmmParams(weights, np), x)
    ref = rg.reference_forward(rg.GaussianHmm.from_weights(weights), x)
    np.testing.assert_allclose(got["PROBS"], ref["PROBS"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got["LABEL"], ref["LABEL"])


# ---------------------------------------------------------------------------------------------
# The real tritonserver


async def test_triton_serves_the_reference_forward(tmp_path, triton_server, model, btc, eurusd):
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    # v1 fitted here on real bars, v2 the shipped weights.
    repo = served_repo(tmp_path, "regime", rg.export_weights(model))
    server = triton_server(repo, ["regime"])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = _inputs(btc, eurusd)

    async def infer(version: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        return await infer_windows(client, "regime", version, batch, ("PROBS", "LABEL"))

    try:
        for version in (1, 2):
            ref = rg.reference_forward(rg.GaussianHmm.from_weights(load_weights(repo / "regime" / str(version))), x)
            # Many small concurrent requests: dynamic batching joins them, each gets its own rows back.
            chunks = [x[i:i + 37] for i in range(0, len(x), 37)]
            got = await asyncio.wait_for(asyncio.gather(*(infer(version, c) for c in chunks)), 60)
            probs = np.concatenate([g["PROBS"] for g in got])
            label = np.concatenate([g["LABEL"] for g in got])
            assert probs.dtype == np.float64 and probs.shape == (len(x), 3)
            assert label.dtype == np.int32 and label.shape == (len(x), 1)
            np.testing.assert_allclose(probs, ref["PROBS"], rtol=0, atol=1e-6, err_msg=f"v{version}")
            np.testing.assert_array_equal(label, ref["LABEL"], err_msg=f"v{version}")

        bad = x[:3].copy()
        bad[1, 7, MODEL_FEATURES.index("natr_14")] = np.nan
        with pytest.raises(InferenceServerException, match="natr_14"):
            await infer(1, bad)
        with pytest.raises(InferenceServerException):
            await infer(1, x[:2, :, :28].copy())
        with pytest.raises(InferenceServerException):
            await infer(2, x[:2, :16].copy())
        # The server is still fine after the bad requests.
        again = await infer(2, x[:5])
        assert again["PROBS"].shape == (5, 3)
    finally:
        await client.close()
