"""Anomaly model: the exported forest against scikit-learn, the served forward pass, injections, tritonserver.

Models here are small (20 trees, a few autoencoder epochs) and fitted on slices of real bars: the
tests check that the served arithmetic equals scikit-learn and torch, not that the detector is
good (that is `core.models.anomaly.evaluate`'s job, reported with its figures).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataFileError, ModelError
from core.models._repo import file_sha256, load_weights
from core.models import anomaly as an
from core.models.data import MODEL_FEATURES, feature_matrix, sliding_windows, synthetic_bars, walk_forward
from tests._models import MODELS, head_csv, infer_windows, recorded_bars, runtime_module, served_repo, train_args

SMALL = {"n_trees": 20, "epochs": 3}
rt = runtime_module("anomaly")


@pytest.fixture(scope="module")
def btc_windows() -> np.ndarray:
    """Windows of 3,000 real BTC-perp minutes."""
    return sliding_windows(feature_matrix(recorded_bars("btc_perp_1m_2022-01.csv", 5_000, 8_000)))[1]


@pytest.fixture(scope="module")
def eurusd_windows() -> np.ndarray:
    """200 windows of real EUR/USD hours."""
    return sliding_windows(feature_matrix(recorded_bars("eurusd_1h_2017-2018.csv", 3_000, 3_300)))[1][:200]


@pytest.fixture(scope="module")
def model(btc_windows) -> an.AnomalyModel:
    return an.fit(btc_windows[:2_000], seed=5, **SMALL)


def _inputs(btc_windows, eurusd_windows) -> np.ndarray:
    """Unseen real windows of both files, plus copies blown up 1000x so the [-10, 10] clip is exercised."""
    x = np.concatenate([btc_windows[-400:], eurusd_windows])
    return np.concatenate([x, x[:20] * 1000.0])


def test_exported_forest_scores_exactly_like_sklearn(model, btc_windows, eurusd_windows):
    x = _inputs(btc_windows, eurusd_windows)
    z = model.standardize(x)
    assert (np.abs(z) == 10.0).any(), "the inputs must reach the clip"
    weights = an.export_weights(model)
    params = rt.AnomalyParams(weights, np)
    got = rt.iforest_anomaly(np, params, z)
    np.testing.assert_allclose(got, -model.forest.score_samples(z), rtol=1e-9, atol=0)
    # Values a hair above each root's split: scikit-learn rounds them to float32 first, which for
    # about half of the roots lands on the <= side; a float64 comparison would go the other way.
    roots, rows = weights["tree_root"], np.arange(len(weights["tree_root"]))
    probe = np.repeat(z[:1], len(roots), axis=0)
    probe[rows, weights["tree_feature"][roots]] = np.nextafter(weights["tree_threshold"][roots], np.inf)
    want = -model.forest.score_samples(probe)
    np.testing.assert_allclose(rt.iforest_anomaly(np, params, probe), want, rtol=1e-9, atol=0)
    exact = np.repeat(z[:1], len(roots), axis=0)
    exact[rows, weights["tree_feature"][roots]] = weights["tree_threshold"][roots]
    np.testing.assert_allclose(rt.iforest_anomaly(np, params, exact), -model.forest.score_samples(exact),
                               rtol=1e-9, atol=0)
    assert int(weights["tree_max_depth"]) == 8  # ceil(log2(256)) edges from a root to its deepest leaf


def test_numpy_forward_equals_sklearn_torch_reference(model, btc_windows, eurusd_windows):
    x = _inputs(btc_windows, eurusd_windows)
    got = rt.forward(np, rt.AnomalyParams(an.export_weights(model), np), x)
    ref = an.reference_forward(model, x)
    for name in ("SCORE", "IFOREST", "RECON"):
        assert got[name].shape == (len(x), 1) and got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-9, err_msg=name)
        assert ((got[name] >= 0) & (got[name] <= 1)).all()
    assert got["FLAG"].dtype == np.bool_ and got["FLAG"].shape == (len(x), 1)
    np.testing.assert_array_equal(got["FLAG"], ref["FLAG"])
    # The blown-up copies are beyond anything seen in training.
    assert got["FLAG"][-20:].all() and (got["SCORE"][-20:] > 0.99).all()


def test_scores_are_calibrated_on_the_training_windows(model, btc_windows):
    res = an.reference_forward(model, btc_windows[:2_000])
    for name in ("IFOREST", "RECON"):
        # Each part is its own empirical CDF on these windows: uniform.
        assert np.mean(res[name]) == pytest.approx(0.5, abs=0.01)
        assert np.mean(res[name] < 0.1) == pytest.approx(0.1, abs=0.01)
    assert np.mean(res["FLAG"]) == pytest.approx(1 - an.FLAG_QUANTILE, abs=0.002)


def test_training_is_deterministic(btc_windows):
    runs = [an.export_weights(an.fit(btc_windows[:800], seed=s, n_trees=5, epochs=2)) for s in (3, 3, 4)]
    for k, v in runs[0].items():
        np.testing.assert_array_equal(v, runs[1][k], err_msg=k)
    assert not np.array_equal(runs[0]["ae_w0"], runs[2]["ae_w0"])
    assert not np.array_equal(runs[0]["tree_threshold"], runs[2]["tree_threshold"])


def test_injections_change_only_what_they_say():
    series = recorded_bars("eurusd_1h_2017-2018.csv", 0, 1_200)
    before = {k: v.copy() for k, v in series.columns.items()}
    injected, pos, kinds = an.inject_anomalies(series, 600, seed=2, every_bars=50)
    for k, v in series.columns.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"the original {k} changed")
    assert len(pos) == 12 and (pos >= 600).all() and (np.diff(pos) > an.AFTERMATH_BARS).all()
    assert set(kinds.tolist()) == {0, 1, 2}
    cols, orig = injected.columns, series.columns
    gap_factor = np.ones(len(series))
    for p, k in zip(pos, kinds):
        if an.INJECTION_KINDS[k] == "gap":
            gap_factor[p:] *= cols["open"][p] / orig["open"][p] / gap_factor[p]
    for p, k in zip(pos, kinds):
        kind = an.INJECTION_KINDS[k]
        if kind == "volume":
            assert 4.0 <= cols["volume"][p] / orig["volume"][p] <= 12.0
            assert cols["close"][p] == pytest.approx(orig["close"][p] * gap_factor[p], rel=1e-12)
        elif kind == "spike":
            move = abs(np.log(cols["close"][p] / (orig["close"][p] * gap_factor[p])))
            assert move > 0 and cols["high"][p] >= cols["close"][p] >= cols["low"][p]
            assert cols["open"][p + 1] == pytest.approx(orig["open"][p + 1] * gap_factor[p + 1], rel=1e-12)
        else:
            assert abs(np.log(gap_factor[p] / gap_factor[p - 1])) > 0
    untouched = np.setdiff1d(np.arange(len(series)), pos)
    np.testing.assert_allclose(cols["volume"][untouched], orig["volume"][untouched], rtol=0)
    np.testing.assert_allclose(cols["close"][untouched[:600]], orig["close"][untouched[:600]], rtol=0)


def test_walk_forward_evaluation_on_real_bars():
    series = recorded_bars("eurusd_1h_2017-2018.csv", 1_000, 3_000)
    res = an.evaluate([series], seed=1, folds=2, fit_options=SMALL)[series.name]
    # Recompute the baseline from scratch: same injections, same splits, its own threshold per fold.
    injected, pos, kinds = an.inject_anomalies(series, list(walk_forward(len(series), 2))[0][1].start, seed=1,
                                               every_bars=50)
    clean_end, clean_x = sliding_windows(feature_matrix(series))
    inj_end, inj_x = sliding_windows(feature_matrix(injected))
    col = MODEL_FEATURES.index("ret_zscore_20")
    after = np.concatenate([pos + d for d in range(1, an.AFTERMATH_BARS + 1)])
    flags, labels = [], []
    for tr, te in walk_forward(len(series), 2):
        thr = np.quantile(np.abs(clean_x[clean_end < tr.stop][:, -1, col]), 0.99)
        keep = (inj_end >= te.start) & (inj_end < te.stop) & ~np.isin(inj_end, after)
        flags.append(np.abs(inj_x[keep][:, -1, col]) > thr)
        labels.append(np.isin(inj_end[keep], pos))
    flag, label = np.concatenate(flags), np.concatenate(labels)
    assert res["windows"] == len(label) and res["positives"] == int(label.sum()) > 10
    base = res["baseline"]
    assert base["flagged"] == int(flag.sum())
    assert base["precision"] == pytest.approx((flag & label).sum() / flag.sum())
    assert base["recall"] == pytest.approx((flag & label).sum() / label.sum())
    m = res["model"]
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and 0.5 < m["roc_auc"] <= 1
    assert set(m["recall_by_kind"]) == set(an.INJECTION_KINDS)


@pytest.mark.parametrize("source", ["data", "synthetic"])
def test_train_command_writes_a_version(tmp_path, source, btc_windows):
    if source == "data":
        csv = head_csv(tmp_path, "btc_perp_1m_2022-01.csv", 1_500)
        args = train_args(tmp_path, an, "--data", str(csv), "--trees", "10", "--epochs", "2", "--version", "2",
                          "--seed", "7")
    else:
        args = train_args(tmp_path, an, "--synthetic", "1500", "--trees", "10", "--epochs", "2", "--seed", "7")
    seen = []
    metrics = an.train(args, lambda done, total, note="": seen.append((done, total, note)))
    vdir = Path(args.repo) / "anomaly" / str(args.version)
    assert [note.startswith("autoencoder mse") for _, _, note in seen] == [True, True], "a progress line per epoch"
    weights = load_weights(vdir)
    assert weights["feature_names"].tolist() == list(MODEL_FEATURES)
    assert len(weights["tree_root"]) == 10
    card = json.loads((vdir / "card.json").read_text())
    assert card["seed"] == 7 and card["metrics"]["threshold"] == metrics["threshold"] == float(weights["threshold"])
    assert 0.005 <= metrics["train_flag_rate"] <= 0.015
    if source == "data":
        assert card["data"] == [{"path": csv.name, "sha256": file_sha256(csv)}]
    else:
        assert card["data"] == [{"description": "synthetic_bars(n_bars=1500, seed=7)"}]
    got = rt.forward(np, rt.AnomalyParams(weights, np), btc_windows[:64])
    assert ((got["SCORE"] >= 0) & (got["SCORE"] <= 1)).all()


def test_bad_inputs_get_clear_errors(tmp_path, model, btc_windows):
    x = btc_windows[:4].copy()
    x[2, 31, MODEL_FEATURES.index("mfi_14")] = np.inf
    with pytest.raises(ModelError, match="non-finite.*mfi_14"):
        an.reference_forward(model, x)
    with pytest.raises(ModelError, match=r"shape \[4, 32, 28\]"):
        an.reference_forward(model, x[:, :, 1:])
    weights = an.export_weights(model)
    with pytest.raises(ValueError, match="tree_path"):
        rt.AnomalyParams({k: v for k, v in weights.items() if k != "tree_path"}, np)
    with pytest.raises(ModelError, match="at least 100"):
        an.fit(btc_windows[:50], seed=0)
    with pytest.raises(DataFileError, match="no_such_bars.csv"):
        an.train(train_args(tmp_path, an, "--data", str(tmp_path / "no_such_bars.csv")), lambda *a: None)
    with pytest.raises(ModelError, match="at least 500"):
        an.train(train_args(tmp_path, an, "--synthetic", "100"), lambda *a: None)


def _scalar_forest(weights: dict, z: np.ndarray) -> np.ndarray:
    """A plain per-row, per-tree walk of the exported node table (an independent reading of it)."""
    out = np.empty(len(z))
    for i, row in enumerate(z.astype(np.float32)):
        total = 0.0
        for root in weights["tree_root"]:
            node = int(root)
            while weights["tree_left"][node] != node:
                go_left = float(row[weights["tree_feature"][node]]) <= weights["tree_threshold"][node]
                node = int(weights["tree_left"][node] if go_left else weights["tree_right"][node])
            total += weights["tree_path"][node]
        out[i] = 2.0 ** (-total / float(weights["iforest_norm"]))
    return out


def test_shipped_version_loads_and_behaves(btc_windows):
    import torch

    vdir = MODELS / "anomaly" / "1"
    assert (vdir / "weights.npz").stat().st_size < 2_000_000
    card = json.loads((vdir / "card.json").read_text())
    # Shipped weights are trained on our own synthetic bars only, never on ../shared/data.
    assert all("description" in d and d["description"].startswith("synthetic_bars(") for d in card["data"])
    weights = load_weights(vdir)
    params = rt.AnomalyParams(weights, np)
    x = btc_windows[:30]
    zs = np.clip((rt.anomaly_vector(np, x) - weights["center"]) / weights["scale"], -10, 10)
    np.testing.assert_allclose(rt.iforest_anomaly(np, params, zs), _scalar_forest(weights, zs), rtol=1e-12, atol=0)
    # The autoencoder rebuilt in torch from the stored layers gives the same reconstruction.
    layers = []
    for i in range(int(weights["ae_layers"])):
        lin = torch.nn.Linear(*weights[f"ae_w{i}"].shape[::-1], dtype=torch.float64)
        lin.load_state_dict({"weight": torch.from_numpy(weights[f"ae_w{i}"]),
                             "bias": torch.from_numpy(weights[f"ae_b{i}"])})
        layers += [lin, torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        want = net(torch.from_numpy(zs)).numpy()
    np.testing.assert_allclose(rt.mlp_forward(np, params.ae, zs), want, rtol=0, atol=1e-12)
    # Fresh synthetic bars (another seed than the training one): about 1% flagged.
    fresh = sliding_windows(feature_matrix(synthetic_bars(6_000, seed=12345)))[1]
    rate = rt.forward(np, params, fresh)["FLAG"].mean()
    assert 0.002 <= rate <= 0.03


# ---------------------------------------------------------------------------------------------
# The real tritonserver


async def test_triton_serves_the_reference_forward(tmp_path, triton_server, model, btc_windows, eurusd_windows):
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    # v1 fitted here on real bars, v2 the shipped weights.
    repo = served_repo(tmp_path, "anomaly", an.export_weights(model))
    server = triton_server(repo, ["anomaly"])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = _inputs(btc_windows, eurusd_windows)
    names = ("SCORE", "FLAG", "IFOREST", "RECON")

    async def infer(version: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        return await infer_windows(client, "anomaly", version, batch, names)

    try:
        shipped = rt.AnomalyParams(load_weights(repo / "anomaly" / "2"), np)
        # v1: scikit-learn + torch themselves; v2 (shipped, no fitted objects to hand): the in-process
        # NumPy 2 forward pass, which the tests above tie to scikit-learn and torch.
        refs = {1: an.reference_forward(model, x), 2: rt.forward(np, shipped, x)}
        for version, ref in refs.items():
            # Many small concurrent requests: dynamic batching joins them, each gets its own rows back.
            chunks = [x[i:i + 37] for i in range(0, len(x), 37)]
            got = await asyncio.wait_for(asyncio.gather(*(infer(version, c) for c in chunks)), 60)
            for name in names:
                served = np.concatenate([g[name] for g in got])
                assert served.shape == (len(x), 1)
                if name == "FLAG":
                    assert served.dtype == np.bool_
                    np.testing.assert_array_equal(served, ref[name], err_msg=f"v{version}")
                else:
                    assert served.dtype == np.float64
                    np.testing.assert_allclose(served, ref[name], rtol=0, atol=1e-6, err_msg=f"v{version} {name}")

        bad = x[:3].copy()
        bad[1, 7, MODEL_FEATURES.index("rsi_14")] = np.nan
        with pytest.raises(InferenceServerException, match="rsi_14"):
            await infer(1, bad)
        with pytest.raises(InferenceServerException):
            await infer(1, x[:2, :, :28].copy())
        # The server is still fine after the bad requests.
        again = await infer(2, x[:5])
        assert again["SCORE"].shape == (5, 1)
    finally:
        await client.close()
