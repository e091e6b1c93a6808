from pathlib import Path

import pytest

from core.config import Config, load_config
from core.errors import ConfigError


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
