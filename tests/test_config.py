from pathlib import Path

import numpy as np
import pytest

from core.config import Config, load_config
from core.decision import Calibration, DecisionSettings
from core.errors import ConfigError
from core.features.featureset import FeatureSet
from core.inference_worker import InferenceWorker
from core.signals import DecisionStage


def test_defaults_need_no_file():
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.store_dsn.startswith("chdb:///")


def test_toml_then_env_override(tmp_path):
    path = tmp_path / "tm.toml"
    path.write_text('data_dir = "/tmp/x"\n[api]\nport = 9000\n[sim]\nsymbols = ["A-B"]\n')
    cfg = load_config(path, env={"TICKMESH_API__PORT": "9100", "TICKMESH_SIM__TRADES_PER_S": "5"})
    assert cfg.api.port == 9100 and cfg.sim.symbols == ["A-B"] and cfg.sim.trades_per_s == 5
    assert cfg.data_dir == "/tmp/x"


@pytest.mark.parametrize("text, env, match", [
    ("[api]\nport = 70000\n", {}, r"\$\.api\.port"),
    ("[apy]\nport = 1\n", {}, "apy"),
    ("", {"TICKMESH_WORKER__TIMEFRAMES": '["2m"]'}, "unknown timeframes"),
    ("[api\n", {}, "invalid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, text, env, match):
    path = tmp_path / "tm.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path, env=env)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_readme_example_is_a_valid_config(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "tickmesh.toml"
    path.write_text(example)
    cfg = load_config(path, env={})
    assert cfg.triton.grpc_port == 8001 and cfg.inference.routes["forecast"].production == 0


def fitted_calibration(path: Path) -> Calibration:
    rng = np.random.default_rng(0)
    strength = rng.uniform(0.15, 1, 500)
    cal = Calibration.fit(strength, rng.uniform(0, 1, 500) < 0.45 + 0.2 * strength)
    cal.save(path)
    return cal


def test_decision_calibration_is_a_path_from_the_working_directory(tmp_path, monkeypatch):
    assert Config().decision.calibration == "" and Config().load_calibration() is None  # uncalibrated
    (tmp_path / "cal").mkdir()
    cal = fitted_calibration(tmp_path / "cal" / "btc.json")
    path = tmp_path / "tm.toml"
    path.write_text('[decision]\ncalibration = "cal/btc.json"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(path, env={}).load_calibration() == cal
    cfg = load_config(env={"TICKMESH_DECISION__CALIBRATION": "cal/nope.json"})
    with pytest.raises(ConfigError, match="calibration file not found: .*cal/nope.json"):
        cfg.load_calibration()


async def test_the_inference_worker_decides_with_the_configured_calibration(tmp_path, nc):
    cal = fitted_calibration(tmp_path / "cal.json")
    cfg = Config(decision=DecisionSettings(calibration=str(tmp_path / "cal.json")))
    worker = InferenceWorker(nc.jetstream(), cfg, "127.0.0.1:1")
    # The worker makes its stage from `_decision_cfg` (on the first vector, or from a snapshot).
    stage = DecisionStage(list(FeatureSet().names), *worker._decision_cfg)
    assert stage.engine.calibration == cal
    assert InferenceWorker(nc.jetstream(), Config(), "127.0.0.1:1")._decision_cfg[2] is None
    with pytest.raises(ConfigError, match="not found"):  # at start-up, not at the first vector
        InferenceWorker(nc.jetstream(), Config(decision=DecisionSettings(calibration=str(tmp_path / "x.json"))),
                        "127.0.0.1:1")
