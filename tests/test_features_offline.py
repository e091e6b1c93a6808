"""``tickmesh features``: every recorded bar file loads, the CLI writes one column per feature with
the live code's values, and bad input gets a clear message."""

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataFileError
from core.features.barfile import load_bars
from core.features.featureset import FeatureSet
from core.features.offline import compute, infer_tf, resample, write_csv
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
BAR_FILES = {  # file -> (bars, timeframe, has buy/sell volume)
    "btc_perp_1m_2022-01.csv": (45_031, "1m", False),
    "goog_daily_2004-2013.csv": (2_148, "1d", False),
    "eurusd_1h_2017-2018.csv": (5_000, "1h", False),
    "kraken_xbtusdt_1m_rest.json": (721, "1m", False),
    "binance_adabtc_1m_klines.csv": (21, "1m", True),
}


def tickmesh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("name", BAR_FILES)
def test_every_recorded_bar_file_loads(name):
    (s,) = load_bars(shared_file(f"bars/{name}"))
    n, tf, sides = BAR_FILES[name]
    assert len(s) == n
    assert infer_tf(s.columns["ts_ns"]) == tf
    assert np.all(np.diff(s.columns["ts_ns"]) > 0)
    for f in ("open", "high", "low", "close", "volume"):
        assert np.isfinite(s.columns[f]).all(), f
    assert ("buy_volume" in s.columns) == sides


def test_cli_writes_one_column_per_feature_equal_to_the_engine(tmp_path):
    src = shared_file("bars/kraken_xbtusdt_1m_rest.json")
    out = tmp_path / "f.csv"
    r = tickmesh("features", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(out.open()))
    fs = FeatureSet()
    assert rows[0] == ["timestamp", "ts_ns", "open", "high", "low", "close", "volume", *fs.names]
    assert len(rows) == 1 + 721
    want = compute(load_bars(src), fs)[0]
    got = np.array([[float(v) if v else np.nan for v in row[7:]] for row in rows[1:]])
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got[-1]).sum() > 80  # past the warm-ups, most features have values


def test_cli_names_reference_and_list(tmp_path):
    src = shared_file("bars/goog_daily_2004-2013.csv")
    out = tmp_path / "f.csv"
    r = tickmesh("features", str(src), "-o", str(out), "--names", "rsi_14,beta_5,correl_30",
                 "--reference", str(src))
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0][7:] == ["rsi_14", "beta_5", "correl_30"]
    assert float(rows[-1][8]) == pytest.approx(1.0)  # a series against itself
    assert float(rows[-1][9]) == pytest.approx(1.0)
    listed = tickmesh("features", "--list").stdout.split()
    assert listed == list(FeatureSet().names) and len(listed) >= 100


def test_bad_input_gets_a_clear_message(tmp_path):
    r = tickmesh("features", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and "bar file not found" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n2024-01-01,1,2,0.5,x,3\n")
    r = tickmesh("features", str(bad))
    assert r.returncode == 2 and "line 2: close 'x' is not a number" in r.stderr
    odd = tmp_path / "odd.csv"
    odd.write_text("when,price\n1,2\n")
    with pytest.raises(DataFileError, match="lacks"):
        load_bars(odd)
    r = tickmesh("features", str(shared_file("bars/goog_daily_2004-2013.csv")), "--names", "rsi_14,nope")
    assert r.returncode == 2 and "unknown feature names ['nope']" in r.stderr


def test_multi_timeframe_columns_come_from_the_files_own_higher_bars():
    (s,) = load_bars(shared_file("bars/kraken_xbtusdt_1m_rest.json"))
    fs = FeatureSet()
    h5 = resample(s, "5m")
    # the same series given with its 5m bars as a second series of the same venue/symbol: the
    # 1m vectors must be the same as when the 5m bars are resampled internally
    s.tf, h5.tf = "1m", "5m"
    both = compute([s, h5], fs)[0]
    alone = compute([s], fs)[0]
    np.testing.assert_array_equal(both, alone)
    col = fs.names.index("rsi_14@htf1")
    five = compute([h5], fs)[0][:, fs.names.index("rsi_14")]
    # bar i gets the 5m bar that ended at or before its start: never the one it belongs to
    ts, ends = s.columns["ts_ns"], h5.columns["ts_ns"] + 300_000_000_000
    for i in range(0, len(s), 37):
        j = np.searchsorted(ends, ts[i], side="right") - 1
        assert (np.isnan(both[i, col]) and (j < 0 or np.isnan(five[j]))) or both[i, col] == five[j]


def test_write_csv_of_several_series_names_them():
    series = load_bars(shared_file("bars/binance_adabtc_1m_klines.csv")) * 2
    buf = io.StringIO()
    fs = FeatureSet()
    write_csv(buf, series, compute(series, fs), fs.names)
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows[0][:4] == ["venue", "symbol", "tf", "timestamp"] and len(rows) == 1 + 42
