"""The volume family: VWAPs, the volume profile and trade-side imbalance against straightforward
NumPy/Python references over whole bar files, OBV/AD/ADOSC on inputs the bar files lack, edge cases
(zero volume, flat prices, bars without side information), and engine == Indicator with rows at
different warm-up points.

OBV, AD and ADOSC are compared with TA-Lib on every bar file by tests/test_features_talib.py.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view

from core.features import volume
from core.features._run import run_series
from core.features.barfile import BarSeries, load_bars
from core.features.engine import FeatureEngine
from core.features.incremental import Indicator
from tests.conftest import shared_file

DAY_NS = 86_400_000_000_000
# The BTC file is cut to its first bars: the references are whole-series, the engine is stepped.
BAR_FILES = {"btc_perp_1m_2022-01.csv": 4000, "goog_daily_2004-2013.csv": None,
             "eurusd_1h_2017-2018.csv": None, "kraken_xbtusdt_1m_rest.json": None,
             "binance_adabtc_1m_klines.csv": None}
OWN = [k for k in volume.defaults() if not k.talib]
TALIB = [k for k in volume.defaults() if k.talib]


def _with_sides(cols: dict, seed: int) -> dict:
    """Taker buy/sell volume where the file has none: a random split of the volume."""
    if "buy_volume" not in cols:
        share = np.random.default_rng(seed).uniform(0, 1, len(cols["close"]))
        cols["buy_volume"] = cols["volume"] * share
        cols["sell_volume"] = cols["volume"] - cols["buy_volume"]
    return cols


def _load(name: str, n: int | None, sides: bool = True) -> BarSeries:
    s = load_bars(shared_file(f"bars/{name}"))[0]
    cols = {k: v[:n] for k, v in s.columns.items()}
    return BarSeries(name=name, columns=_with_sides(cols, len(name)) if sides else cols)


def _series(close, high=None, low=None, volume_=None, ts_ns=None, buy=None, sell=None) -> BarSeries:
    close = np.asarray(close, dtype=np.float64)
    n = len(close)
    cols = {"ts_ns": np.arange(n, dtype=np.int64) * 60_000_000_000 if ts_ns is None else np.asarray(ts_ns),
            "open": close.copy(), "close": close,
            "high": close.copy() if high is None else np.asarray(high, dtype=np.float64),
            "low": close.copy() if low is None else np.asarray(low, dtype=np.float64),
            "volume": np.ones(n) if volume_ is None else np.asarray(volume_, dtype=np.float64)}
    if buy is not None:
        cols["buy_volume"], cols["sell_volume"] = np.asarray(buy, float), np.asarray(sell, float)
    return BarSeries(name="synthetic", columns=cols)


def _run(kernels, series):
    """{output name: values} per series, from one engine running all series at once."""
    engine = FeatureEngine(kernels)
    return [dict(zip(engine.names, v.T)) for v in run_series(engine, series)]


def _close(got, want, rtol=1e-12, name=""):
    """NaN exactly where the reference is NaN, elsewhere equal to ``rtol`` (exact zeros stay exact)."""
    assert np.array_equal(np.isnan(got), np.isnan(want)), (
        f"{name}: NaN mismatch at {np.flatnonzero(np.isnan(got) != np.isnan(want))[:10]}")
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=0, err_msg=name)


@pytest.fixture(scope="module")
def files():
    series = [_load(name, n) for name, n in BAR_FILES.items()]
    return list(zip(series, _run(OWN, series)))


# ------------------------------------------------------------------------- references


def _typical(c):
    return (c["high"] + c["low"] + c["close"]) / 3.0


def _vwap_session(c):
    typical, vol, day = _typical(c), c["volume"], c["ts_ns"] // DAY_NS
    out = np.empty(len(vol))
    pv = v = 0.0
    for i in range(len(vol)):
        if i == 0 or day[i] != day[i - 1]:
            pv = v = 0.0
        pv += typical[i] * vol[i]
        v += vol[i]
        out[i] = pv / v if v > 0 else typical[i]
    return out


def _window_sum(x, n):
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1:] = np.cumsum(sliding_window_view(x, n), axis=1)[:, -1]  # oldest first, as the kernel adds
    return out


def _vwap(c, n=20):
    typical = _typical(c)
    pv, v = _window_sum(typical * c["volume"], n), _window_sum(c["volume"], n)
    with np.errstate(all="ignore"):
        return np.where(v > 0, pv / v, np.where(np.isnan(v), np.nan, typical))


def _profile(high, low, close, vol, n_bins=24, area=0.7):
    """One window's (poc, vah, val), written out as the definition reads."""
    lo, hi = low.min(), high.max()
    width = hi - lo
    scale = n_bins / width if width > 0 else 0.0
    bins = np.clip(np.floor(((high + low + close) / 3.0 - lo) * scale).astype(int), 0, n_bins - 1)
    hist = np.zeros(n_bins)
    for b, v in zip(bins, vol):
        hist[b] += v
    total = hist.sum()
    if not total > 0:
        return np.nan, np.nan, np.nan
    poc = int(np.argmax(hist))
    bottom = top = poc
    held = hist[poc]
    while held < area * total:
        above = hist[top + 1] if top + 1 < n_bins else None
        below = hist[bottom - 1] if bottom >= 1 else None
        if below is None or (above is not None and above >= below):
            top += 1
            held += above
        else:
            bottom -= 1
            held += below
    w = width / n_bins
    return lo + (poc + 0.5) * w, lo + (top + 1) * w, lo + bottom * w


def _vp(c, n=50):
    out = np.full((3, len(c["close"])), np.nan)
    for t in range(n - 1, len(c["close"])):
        w = slice(t - n + 1, t + 1)
        out[:, t] = _profile(c["high"][w], c["low"][w], c["close"][w], c["volume"][w])
    return out


def _imbalance(buy, sell):
    with np.errstate(all="ignore"):
        return np.where((buy == 0) & (sell == 0), 0.0, (buy - sell) / (buy + sell))


def test_vwap_session_restarts_each_utc_day(files):
    for s, ours in files:
        _close(ours["vwap_session"], _vwap_session(s.columns), name=s.name)
    btc = files[0][0].columns
    assert len(np.unique(btc["ts_ns"] // DAY_NS)) >= 3  # several sessions are exercised


def test_rolling_vwap_matches_window_sums(files):
    for s, ours in files:
        _close(ours["vwap_20"], _vwap(s.columns), name=s.name)


def test_volume_profile_matches_the_definition(files):
    for s, ours in files:
        want = _vp(s.columns)
        for name, w in zip(("vp_50.poc", "vp_50.vah", "vp_50.val"), want):
            _close(ours[name], w, name=f"{s.name} {name}")
        ok = ~np.isnan(want[0])
        assert (want[2][ok] <= want[0][ok]).all() and (want[0][ok] <= want[1][ok]).all()


def test_imbalance_matches_the_sides(files):
    for s, ours in files:
        c = s.columns
        _close(ours["imbalance"], _imbalance(c["buy_volume"], c["sell_volume"]), name=s.name)
        buy, sell = _window_sum(c["buy_volume"], 20), _window_sum(c["sell_volume"], 20)
        _close(ours["imbalance_20"], _imbalance(buy, sell), name=s.name)
    binance = files[-1][1]["imbalance"]
    assert np.isfinite(binance).all()  # the klines file's own taker volume


# ------------------------------------------------------------------------------- edge cases


def test_the_value_area_takes_the_larger_neighbour_and_the_upper_one_on_a_tie():
    # range [0, 24] so that bin = floor(price); volume 5 at bin 10, 2 at 11 and 9, 3 at 12, 1 at 8.
    # Total 13, 70% = 9.1: 10 -> tie 11/9 goes up -> 12 (3) beats 9 (2) -> [10, 12] holds 10.
    price = np.r_[0.0, 24.0, 10.5, 11.5, 9.5, 12.5, 8.5, np.full(43, 20.5)]
    vol = np.r_[0.0, 0.0, 5.0, 2.0, 2.0, 3.0, 1.0, np.zeros(43)]
    ours = _run([volume.VolumeProfile(50)], [_series(price, volume_=vol)])[0]
    assert (ours["vp_50.poc"][-1], ours["vp_50.vah"][-1], ours["vp_50.val"][-1]) == (10.5, 13.0, 10.0)
    assert np.isnan(ours["vp_50.poc"][:-1]).all()


def test_zero_volume_and_flat_prices():
    n = 80
    zero = _series(np.full(n, 42.0), volume_=np.zeros(n), buy=np.zeros(n), sell=np.zeros(n))
    ours = _run(volume.defaults(), [zero])[0]
    last = {k: v[-1] for k, v in ours.items()}
    assert last["vwap_session"] == last["vwap_20"] == 42.0
    assert last["obv"] == last["ad"] == last["adosc_3_10"] == last["imbalance"] == last["imbalance_20"] == 0.0
    assert np.isnan([last["vp_50.poc"], last["vp_50.vah"], last["vp_50.val"]]).all()
    flat = _series(np.full(n, 42.0), volume_=np.full(n, 3.0), buy=np.full(n, 1.0), sell=np.full(n, 2.0))
    ours = _run(volume.defaults(), [flat])[0]
    last = {k: v[-1] for k, v in ours.items()}
    assert last["vwap_session"] == last["vwap_20"] == 42.0
    assert last["vp_50.poc"] == last["vp_50.vah"] == last["vp_50.val"] == 42.0
    assert last["obv"] == 3.0 and last["ad"] == 0.0 and last["adosc_3_10"] == 0.0
    assert last["imbalance"] == last["imbalance_20"] == pytest.approx(-1 / 3, rel=1e-15)


def test_vwap_falls_back_to_the_typical_price_while_volume_is_zero():
    rng = np.random.default_rng(4)
    n = 3 * 24 * 60 // 30  # three days of 30-minute bars
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    vol = rng.exponential(5, n)
    day_start = np.arange(n) % 48 == 0
    vol[day_start | np.roll(day_start, 1)] = 0.0  # each day opens with two empty bars
    vol[100:130] = 0.0  # and a 30-bar hole longer than the rolling window
    ts = 1_700_006_400 * 1_000_000_000 + np.arange(n, dtype=np.int64) * 1_800_000_000_000
    s = _series(close, close + 0.5, close - 0.5, vol, ts_ns=ts)
    ours = _run([volume.VWAPSession(), volume.VWAP(20)], [s])[0]
    c = s.columns
    _close(ours["vwap_session"], _vwap_session(c), name="session")
    _close(ours["vwap_20"], _vwap(c), name="rolling")
    assert (ours["vwap_20"][120:130] == _typical(c)[120:130]).all()


def test_imbalance_is_nan_without_side_information():
    n = 40
    buy, sell = np.full(n, 2.0), np.full(n, 1.0)
    buy[10] = np.nan
    kernels = [volume.Imbalance(), volume.ImbalanceRolling(20)]
    ours = _run(kernels, [_series(np.full(n, 1.0), buy=buy, sell=sell)])[0]
    assert np.isnan(ours["imbalance"][10]) and (ours["imbalance"][np.arange(n) != 10] == 1 / 3).all()
    imb = ours["imbalance_20"]
    assert np.isnan(imb[:30]).all() and (imb[30:] == 1 / 3).all()
    no_sides = _run(kernels, [_series(np.ones(n))])[0]
    assert all(np.isnan(v).all() for v in no_sides.values())


def test_obv_ad_adosc_on_hard_inputs():
    rng = np.random.default_rng(8)
    n = 400
    close = 40000 + np.cumsum(rng.normal(0, 20, n))
    close[100:160] = close[99]  # flat closes
    high, low = close + rng.uniform(0, 30, n), close - rng.uniform(0, 30, n)
    high[120:160] = low[120:160] = close[120:160]  # bars with no range
    vol = rng.exponential(100, n) * 10.0 ** rng.integers(-3, 4, n)
    vol[200:230] = 0.0
    cols = {"high": high, "low": low, "close": close, "volume": vol}
    ours = _run(TALIB, [_series(close, high, low, vol)])[0]
    for k in TALIB:
        want = getattr(talib, k.talib)(*[cols[f] for f in k.talib_inputs], **k.talib_kwargs())
        got = ours[k.name]
        assert np.array_equal(np.isnan(got), np.isnan(want)), k.name
        ok = ~np.isnan(want)
        assert (np.abs(got[ok] - want[ok]) <= 1e-9 * np.maximum(1, np.abs(want[ok]))).all(), k.name


def test_fma_emulation_rounds_once():
    rng = np.random.default_rng(9)
    a = 1.0 - 2.0 / 11.0
    b = rng.normal(0, 1, 2000) * 10.0 ** rng.uniform(-6, 9, 2000)
    near = -(a * b[:1000]) * (1 + rng.normal(0, 1e-12, 1000))  # cancelling a * b
    c = np.r_[near, rng.normal(0, 1, 1000) * 10.0 ** rng.uniform(-6, 9, 1000)]
    got = volume._fma(a, b, c)
    want = np.array([float(Fraction(a) * Fraction(x) + Fraction(y)) for x, y in zip(b, c)])
    np.testing.assert_array_equal(got, want)


def test_names():
    assert [o for k in volume.defaults() for o in k.outputs] == [
        "obv", "ad", "adosc_3_10", "vwap_session", "vwap_20", "vp_50.poc", "vp_50.vah", "vp_50.val",
        "imbalance", "imbalance_20"]
    assert {k.name: k.lookback for k in volume.defaults()} == {
        "obv": 0, "ad": 0, "adosc_3_10": 9, "vwap_session": 0, "vwap_20": 19, "vp_50": 49, "imbalance": 0,
        "imbalance_20": 19}


# ------------------------------------------------------------------- engine == Indicator


@pytest.mark.parametrize("kernel", volume.defaults(), ids=lambda k: k.name)
def test_engine_equals_indicator_with_staggered_rows(kernel):
    n = 300
    a = _load("btc_perp_1m_2022-01.csv", n).columns
    g = _load("kraken_xbtusdt_1m_rest.json", n).columns  # zero-volume bars
    fields = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume")
    ind = Indicator(kernel)
    alone = np.array([np.atleast_1d(ind.update(**{f: float(a[f][i]) for f in fields},
                                               ts_ns=int(a["ts_ns"][i]))) for i in range(n)])
    # row 0: the series from its start; row 1: another series; row 2: the series again, 61 bars late
    engine = FeatureEngine([kernel])
    engine.grow(3)
    out = {0: [], 1: [], 2: []}
    for i in range(n):
        src = [(0, a, i), (1, g, i)] + ([(2, a, i - 61)] if i >= 61 else [])
        bars = {f: np.array([c[f][j] for _, c, j in src]) for f in (*fields, "ts_ns")}
        res = engine.step(bars, np.array([r for r, _, _ in src]))
        for (r, _, _), v in zip(src, res.values):
            out[r].append(v)
    np.testing.assert_array_equal(np.array(out[0]), alone)
    np.testing.assert_array_equal(np.array(out[2]), alone[: n - 61])
    kraken = BarSeries(name="kraken", columns={f: g[f] for f in (*fields, "ts_ns")})
    np.testing.assert_array_equal(np.array(out[1]), run_series(FeatureEngine([kernel]), [kraken])[0])
