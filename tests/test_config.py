from pathlib import Path

import numpy as np
import pytest

from core.config import Config, load_config
from core.decision import Calibration, CalibrationMap, DecisionSettings
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


def test_decision_calibrations_name_a_table_per_series_pattern(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    btc, hourly, rest = (fitted_calibration(tmp_path / n) for n in ("btc_1m.json", "fx_1h.json", "rest.json"))
    path = tmp_path / "tm.toml"
    path.write_text('[decision]\ncalibration = "rest.json"\n'
                    'calibrations = {"binance/BTC-USDT/1m" = "btc_1m.json", "*/*/1h" = "fx_1h.json"}\n')
    m = load_config(path, env={}).load_calibration()
    assert isinstance(m, CalibrationMap) and m.tables == {"binance/BTC-USDT/1m": btc, "*/*/1h": hourly}
    assert m.resolve("binance", "BTC-USDT", "1m") == btc and m.resolve("oanda", "EUR-USD", "1h") == hourly
    assert m.resolve("binance", "ETH-USDT", "1m") == rest  # no pattern: the single file is the fallback
    path.write_text('[decision]\ncalibrations = {"*/*/1h" = "fx_1h.json"}\n')
    assert load_config(path, env={}).load_calibration().resolve("binance", "ETH-USDT", "1m") is None


@pytest.mark.parametrize("mapping, text, match", [
    ('{"binance/BTC-USDT/1m" = "nope.json"}', None,
     r"calibrations 'binance/BTC-USDT/1m': calibration file not found: .*nope\.json"),
    ('{"*/*/1h" = "bad.json"}', b"{not json", r"calibrations '\*/\*/1h': calibration file .*bad\.json is not a calib"),
])
def test_a_missing_or_corrupt_file_in_the_mapping_names_the_pattern_and_file(tmp_path, monkeypatch, mapping,
                                                                              text, match):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        (tmp_path / "bad.json").write_bytes(text)
    path = tmp_path / "tm.toml"
    path.write_text(f"[decision]\ncalibrations = {mapping}\n")
    cfg = load_config(path, env={})
    with pytest.raises(ConfigError, match=match):
        cfg.load_calibration()


def test_a_bad_calibration_pattern_is_refused_when_the_config_loads(tmp_path):
    path = tmp_path / "tm.toml"
    path.write_text('[decision]\ncalibrations = {"binance/BTC-USDT" = "x.json"}\n')
    with pytest.raises(ConfigError, match=r"tm\.toml: \[decision\] calibration pattern 'binance/BTC-USDT' is not"):
        load_config(path, env={})
    path.write_text('[decision]\ncalibrations = {"binance/*/1m" = "a.json", "*/BTC-USDT/1m" = "b.json"}\n')
    with pytest.raises(ConfigError, match="equally specific"):
        load_config(path, env={})


async def test_the_inference_worker_refuses_to_start_without_a_mapped_file(tmp_path, nc):
    fitted_calibration(tmp_path / "fx.json")
    ok = DecisionSettings(calibrations={"*/*/1h": str(tmp_path / "fx.json")})
    worker = InferenceWorker(nc.jetstream(), Config(decision=ok), "127.0.0.1:1")
    stage = DecisionStage(list(FeatureSet().names), *worker._decision_cfg)
    assert isinstance(stage.engine.calibration, CalibrationMap)
    missing = DecisionSettings(calibrations={"*/*/1h": str(tmp_path / "fx.json"),
                                             "binance/*/1m": str(tmp_path / "btc.json")})
    with pytest.raises(ConfigError, match=r"'binance/\*/1m': calibration file not found: .*btc\.json"):
        InferenceWorker(nc.jetstream(), Config(decision=missing), "127.0.0.1:1")
