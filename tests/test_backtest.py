"""`tickmesh backtest`: a bar file through the live decision stage with the served models run in
process; history read back from ClickHouse replays to the very same signals; baselines."""

from __future__ import annotations

import argparse

import msgspec
import numpy as np
import pytest

from core.backtest import LocalModels, compare, file_inputs, run, _stored_inputs
from core.config import Config, StoreConfig
from core.signals import DecisionStage
from core.store import Store
from core.schema import Bar
from tests.conftest import shared_file

GOOG = "bars/goog_daily_2004-2013.csv"


@pytest.fixture(scope="module")
def goog():
    return file_inputs(str(shared_file(GOOG)), LocalModels())


def test_file_inputs_carry_the_served_models_predictions(goog):
    vectors, preds = goog
    assert len(vectors) == 2148 and all(v.tf == "1d" and v.close > 0 for v in vectors)
    with_models = [p for p in preds if p]
    assert len(with_models) > 1900  # every vector once the 32-bar window of model features is full
    assert all(set(p) == {"anomaly", "forecast", "regime"} for p in with_models)
    served = LocalModels().versions
    assert all(p["forecast"].version == served["forecast"] and not p["forecast"].degraded for p in with_models)
    assert all(0 <= p["forecast"].outputs["P_UP"][0] <= 1 for p in with_models)


def test_compare_reports_the_strategy_and_its_baselines(goog):
    vectors, preds = goog
    reports = compare("goog", vectors, preds, Config())
    strategy, rnd, capped, full = reports
    assert strategy.buys + strategy.sells == strategy.signals > 0 and strategy.fills > 0
    assert 0 <= strategy.max_drawdown < 1 and 0 <= strategy.hit_rate <= 1
    assert rnd.signals > 0 and abs(rnd.buys / rnd.bars - strategy.buys / strategy.bars) < 0.05  # same frequencies
    assert capped.sells == 0 and capped.total_return > 0  # GOOG rose 2004-2013
    close = np.array([v.close for v in vectors])
    assert full.total_return == pytest.approx(close[-1] / close[0] - 1)
    assert set(strategy.by_source) >= {"trend", "momentum", "forecast"}
    # The calibration table covers the BUY/SELL signals scored against the next bar.
    assert strategy.calibration and all(0 <= hit <= 1 and n > 0 for _, _, n, hit in strategy.calibration)
    assert sum(n for _, _, n, _ in strategy.calibration) <= strategy.signals


def test_history_from_clickhouse_replays_to_the_same_signals(tmp_path, goog):
    vectors, preds = goog
    vectors, preds = vectors[:400], preds[:400]
    cfg = Config(data_dir=str(tmp_path), store=StoreConfig(dsn=f"chdb:///{tmp_path / 'ch'}"))
    with Store.open(cfg.store_dsn, cfg.store.database) as store:
        store.insert_features(vectors)
        store.insert_predictions([p for ps in preds for p in ps.values()])
        store.insert_bars([Bar(venue=v.venue, symbol=v.symbol, tf=v.tf, start_ns=v.start_ns, open=v.close,
                               high=v.close, low=v.close, close=v.close, volume=1.0, vwap=v.close, n_trades=1,
                               buy_volume=0.5, sell_volume=0.5) for v in vectors])
    args = argparse.Namespace(venue=vectors[0].venue, symbol=vectors[0].symbol, timeframe="1d", from_=None, to=None)
    stored_vectors, stored_preds = _stored_inputs(args, cfg)
    assert len(stored_vectors) == 400
    live, _ = run(vectors, preds, DecisionStage(vectors[0].names))
    replayed, _ = run(stored_vectors, stored_preds, DecisionStage(stored_vectors[0].names))
    assert [msgspec.msgpack.encode(s) for s in replayed] == [msgspec.msgpack.encode(s) for s in live]
