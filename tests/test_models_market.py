"""The shipped repository on a real tritonserver: every model READY, and ``market`` (anomaly +
forecast + regime in one request, BLS) equal to the three models asked one by one."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from core.features.barfile import load_bars
from core.models.data import Dataset, feature_matrix
from core.triton import PROJECT_ROOT, repository_models
from tests.conftest import shared_file

REPO = PROJECT_ROOT / "triton_models"
PARTS = {"anomaly": {"SCORE": "ANOMALY_SCORE", "FLAG": "ANOMALY_FLAG"},
         "forecast": {"MEAN": "FORECAST_MEAN", "STD": "FORECAST_STD", "P_UP": "FORECAST_P_UP"},
         "regime": {"PROBS": "REGIME_PROBS", "LABEL": "REGIME_LABEL"}}


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    s = load_bars(shared_file("bars/eurusd_1h_2017-2018.csv"))[0]
    s.columns = {k: v[:400] for k, v in s.columns.items()}
    ds = Dataset(name=s.name, ts_ns=s.columns["ts_ns"], close=s.columns["close"], features=feature_matrix(s))
    x, _, _ = ds.supervised()
    return x[::20]


async def _infer(client, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    inp = grpcclient.InferInput("FEATURES", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    res = await client.infer(model, [inp])
    return {o["name"]: res.as_numpy(o["name"]) for o in res.get_response(as_json=True)["outputs"]}


async def test_every_shipped_model_is_ready_and_market_equals_its_parts(triton_server, windows):
    server = triton_server(REPO)  # every model of the repository
    assert server.models == repository_models(REPO) == ["anomaly", "forecast", "market", "regime", "sentiment"]
    async with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for model in server.models:
            assert await client.is_model_ready(model), model
        market = await _infer(client, "market", windows)
        for model, names in PARTS.items():
            alone = await _infer(client, model, windows)
            for theirs, ours in names.items():
                np.testing.assert_array_equal(market[ours], alone[theirs], err_msg=f"{model}.{theirs}")
        bad = windows[:2].copy()
        bad[1, 5, 3] = np.nan
        with pytest.raises(InferenceServerException, match="non-finite"):
            await _infer(client, "market", bad)
    assert len(windows) > 5 and np.isfinite(market["FORECAST_STD"]).all() and (market["FORECAST_STD"] > 0).all()
