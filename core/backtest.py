"""``tickmesh backtest``: history through the very decision stage the live worker runs.

Inputs are feature vectors (with their bar's close) and, per vector, the predictions made for it:

- stored history (``--venue --symbol --timeframe [--from --to]``): the vectors and predictions
  ClickHouse holds, closes from the bars table;
- a bar file (``--bars FILE``): features computed with the live kernels, predictions from the
  served model versions run in this process (`LocalModels`: the same NumPy forward passes
  Triton runs; tests/test_models_* show them equal to Triton's answers within 1e-6).

Each vector goes through `core.signals.DecisionStage.decide` one at a time, in time order: a
backtest replays one series, and the live worker's bar closes (`core.closes.BarCloses`) of one
series hold one vector each, so a replay of the live inputs gives the live signals. Reported:

- hit rate: BUY/SELL signals whose next bar moved their way (bars that did not move left out);
- P&L of the paper book (realized + unrealized at the last close), total return, Sharpe of the
  per-bar equity returns (annualised from the timeframe), max drawdown of the equity curve,
  turnover (traded notional / mean equity);
- per source: how often the sign of its contribution matched the next bar, and its mean |share|;
- baselines through the same risk rules and book: buy-and-hold at the strategy's largest
  position (``risk.max_position_fraction`` of equity) and at 100 %, and random signals (seeded,
  drawn as often as the strategy has BUY and SELL views before its vetoes).

Confidence comes from the calibration ``--calibration FILE`` or ``[decision] calibration`` names,
or from the ``[decision] calibrations`` table whose pattern matches the replayed series (the
strategy only; the baselines keep the uncalibrated mapping), else 50 + 50 |S|.
``--fit-calibration FILE [--holdout 0.5]`` fits one instead (`fit_calibration`): the replay's
scored BUY/SELL signals (right when the next bar moved their way, as the hit rate counts them),
the first 1 − holdout of them in time order fit |S| → hit rate; the file is written; a second
replay with it applied gives the held-out signals' reliability table (`reliability`), beside the
uncalibrated one. The calibration changes confidence and so sizes and risk vetoes, never the
action or S, so both replays score the very same signals.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np

from core.config import Config
from core.decision import SOURCES, Calibration, CalibrationMap, CalibrationProvenance, DecisionEngine
from core.errors import ConfigError, DataFileError, TickmeshError
from core.models.data import MODEL_FEATURES, WINDOW_BARS
from core.models.serving import summarize
from core.features.featureset import LADDER
from core.schema import FeatureVector, Prediction, Signal
from core.signals import DecisionStage

__all__ = ["LocalModels", "Report", "ReliabilityBin", "CalibrationFit", "file_inputs", "run", "outcomes", "report",
           "compare", "reliability", "fit_split", "fit_calibration", "register"]

_YEAR_NS = 365 * 86_400 * 10**9


class LocalModels:
    """The served versions of anomaly, forecast and regime, run in process with the NumPy
    forward passes of ``triton_models/_runtime``.

    Args:
        repo: the Triton model repository (default: this checkout's).
    """

    def __init__(self, repo: str | Path | None = None) -> None:
        from core.models._repo import DEFAULT_REPO, load_weights
        from core.triton import served_versions

        self.repo = Path(repo or DEFAULT_REPO)
        if str(self.repo) not in sys.path:
            sys.path.insert(0, str(self.repo))  # the _runtime package Triton's models import
        from _runtime.anomaly import AnomalyParams
        from _runtime.anomaly import forward as anomaly_forward
        from _runtime.hmm import HmmParams
        from _runtime.hmm import forward as regime_forward
        from _runtime.nn import forecast_forward, prepare_forecast

        self.versions = {m: max(served_versions(self.repo, m)) for m in ("anomaly", "forecast", "regime")}
        w = {m: load_weights(self.repo / m / str(v)) for m, v in self.versions.items()}
        anomaly, forecast, regime = AnomalyParams(w["anomaly"], np), prepare_forecast(w["forecast"]), HmmParams(
            w["regime"], np)
        self._run = {"anomaly": lambda x: anomaly_forward(np, anomaly, x),
                     "forecast": lambda x: forecast_forward(forecast, x),
                     "regime": lambda x: regime_forward(np, regime, x)}

    def __call__(self, windows: np.ndarray, batch: int = 1024) -> dict[str, dict[str, np.ndarray]]:
        """Outputs of every model for (n, 32, 29) windows."""
        out: dict[str, dict[str, list]] = {m: {} for m in self._run}
        for i in range(0, len(windows), batch):
            for m, fn in self._run.items():
                for k, v in fn(windows[i:i + batch]).items():
                    out[m].setdefault(k, []).append(np.asarray(v))
        return {m: {k: np.concatenate(v) for k, v in d.items()} for m, d in out.items()}


def file_inputs(path: str, models: LocalModels | None) -> tuple[list[FeatureVector], list[dict[str, Prediction]]]:
    """Vectors and predictions of the first series in a bar file (see the module docstring)."""
    from core.features.barfile import load_bars
    from core.features.featureset import FeatureSet
    from core.features.offline import compute, infer_tf
    from core.models.data import sliding_windows

    s = load_bars(path)[0]
    tf = s.tf or infer_tf(s.columns["ts_ns"])
    if tf not in LADDER:
        raise DataFileError(f"{path}: bars of timeframe {tf!r}; backtests take one of {list(LADDER)}")
    fs = FeatureSet()
    values = compute([s], fs)[0]
    names = list(fs.names)
    venue, symbol = s.venue or "file", s.symbol or Path(path).stem.upper().replace("_", "-")
    vectors = [FeatureVector(venue, symbol, tf, int(t), names, row.tobytes(), fs.digest, 0, float(c))
               for t, row, c in zip(s.columns["ts_ns"], values, s.columns["close"])]
    preds: list[dict[str, Prediction]] = [{} for _ in vectors]
    if models is not None:
        cols = [names.index(n) for n in MODEL_FEATURES]
        end, windows = sliding_windows(values[:, cols], WINDOW_BARS)
        outputs = models(windows)
        for m, outs in outputs.items():
            for j, i in enumerate(end.tolist()):
                row = {k: np.asarray(v[j], dtype=np.float64).reshape(-1) for k, v in outs.items()}
                label, conf, unc = summarize(m, row)
                preds[i][m] = Prediction(m, venue, symbol, tf, vectors[i].start_ns, models.versions[m], "production",
                                         {k: v.tolist() for k, v in row.items()}, label=label, confidence=conf,
                                         uncertainty=unc)
    return vectors, preds


class Report(msgspec.Struct, kw_only=True):
    """What a backtest measured (see the module docstring for each figure)."""

    name: str
    bars: int
    signals: int
    buys: int
    sells: int
    hit_rate: float
    fills: int
    pnl: float
    total_return: float
    sharpe: float
    max_drawdown: float
    turnover: float
    by_source: dict[str, dict[str, float]]
    # Confidence bins [lo, hi) of the BUY/SELL signals with the share of them that were right.
    calibration: list[tuple[float, float, int, float]] = []
    # Why views did not become positions: veto name -> signals.
    vetoes: dict[str, int] = {}
    # Positions the paper book closed at their stop-loss / take-profit: reason -> fills.
    exits: dict[str, int] = {}


def run(vectors: Sequence[FeatureVector], predictions: Sequence[dict[str, Prediction]],
        stage: DecisionStage) -> tuple[list[Signal], np.ndarray]:
    """Signals for every vector, one at a time in order, and the equity after each."""
    signals, equity = [], np.empty(len(vectors))
    for i, (v, p) in enumerate(zip(vectors, predictions)):
        signals.extend(stage.decide([v], [p]))
        equity[i] = stage.portfolio.equity
    return signals, equity


def outcomes(signals: Sequence[Signal]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one series' signals in time order: the action (+1 BUY, -1 SELL, 0 HOLD), the sign of
    the next bar's log return (NaN for the last), and which are scored: BUY/SELL with a next bar
    that moved. A scored signal is right when ``action == next``."""
    close = np.array([s.price for s in signals], dtype=np.float64)
    nxt = np.full(len(close), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        nxt[:-1] = np.sign(np.log(close[1:] / close[:-1]))
    action = np.array([{"BUY": 1, "SELL": -1}.get(s.action, 0) for s in signals], dtype=np.int64)
    return action, nxt, (action != 0) & np.isfinite(nxt) & (nxt != 0)


def report(name: str, signals: Sequence[Signal], equity: np.ndarray, stage: DecisionStage) -> Report:
    action, nxt, scored = outcomes(signals)
    start = stage.risk.equity_start
    eq = np.concatenate([[start], equity])
    rets = np.diff(eq) / eq[:-1]
    tf_ns = LADDER[signals[0].tf] if signals else 1
    sharpe = float(rets.mean() / rets.std() * np.sqrt(_YEAR_NS / tf_ns)) if rets.std() > 0 else 0.0
    peak = np.maximum.accumulate(eq)
    fills = stage.portfolio.fills
    traded = float(sum(abs(f.qty * f.px) for f in fills))
    by_source = {}
    for j, src in enumerate(SOURCES):
        c = np.array([s.contributions.get(src, np.nan) for s in signals])
        ok = np.isfinite(c) & (c != 0) & np.isfinite(nxt) & (nxt != 0)
        if ok.any():
            by_source[src] = {"votes": int(ok.sum()), "hit_rate": float((np.sign(c[ok]) == nxt[ok]).mean()),
                              "mean_abs_share": float(np.abs(c[ok]).mean())}
    conf = np.array([s.confidence for s in signals])
    right = np.sign(action) == nxt
    calibration = []
    for lo in range(0, 100, 10):  # from 0: a calibrated confidence may be below 50
        sel = scored & (conf >= lo) & (conf < lo + 10 if lo < 90 else conf <= 100)
        if sel.any():
            calibration.append((float(lo), float(lo + 10), int(sel.sum()), float(right[sel].mean())))
    return Report(name=name, bars=len(signals), signals=int((action != 0).sum()), buys=int((action == 1).sum()),
                  sells=int((action == -1).sum()),
                  hit_rate=float((np.sign(action[scored]) == nxt[scored]).mean()) if scored.any() else float("nan"),
                  fills=len(fills), pnl=float(eq[-1] - start), total_return=float(eq[-1] / start - 1),
                  sharpe=sharpe, max_drawdown=float((1 - eq / peak).max()), turnover=traded / float(eq.mean()),
                  by_source=by_source, calibration=calibration,
                  vetoes=dict(Counter(s.veto for s in signals if s.veto)),
                  exits=dict(Counter(f.id.split(".")[1] for f in fills if f.id.startswith("exit."))))


class _RandomEngine(DecisionEngine):
    """Random views with given BUY/SELL frequencies, through the same vote, risk and book."""

    def __init__(self, names, p_buy: float, p_sell: float, seed: int) -> None:
        super().__init__(names)
        self._rng = np.random.default_rng(seed)
        self._p = (p_buy, p_sell)

    def votes(self, features, price, p_up=None, sentiment=None):
        u = self._rng.random(len(price))
        out = np.full((len(price), len(SOURCES)), np.nan)
        out[:, 0] = np.where(u < self._p[0], 1.0, np.where(u < self._p[0] + self._p[1], -1.0, 0.0))
        return out


class _HoldEngine(DecisionEngine):
    """Always BUY: with the per-symbol cap, the book fills up to it and holds."""

    def votes(self, features, price, p_up=None, sentiment=None):
        out = np.full((len(price), len(SOURCES)), np.nan)
        out[:, 0] = 1.0
        return out


def compare(name: str, vectors, predictions, cfg: Config, seed: int = 0,
            calibration: Calibration | None = None) -> list[Report]:
    """The strategy (its confidence from ``calibration``, None: uncalibrated) and its baselines on
    the same inputs."""
    names = vectors[0].names
    stage = DecisionStage(names, cfg.decision, cfg.risk, calibration)
    sigs, equity = run(vectors, predictions, stage)
    out = [report(f"{name}: strategy", sigs, equity, stage)]
    # The strategy's views before vetoes: the random baseline draws views as often, and the same
    # vetoes and risk rules then apply to them.
    n, t = max(len(sigs), 1), cfg.decision.threshold
    p_buy = sum(s.score >= t for s in sigs) / n
    p_sell = sum(s.score <= -t for s in sigs) / n
    rnd = DecisionStage(names, cfg.decision, cfg.risk)
    rnd.engine = _RandomEngine(names, p_buy, p_sell, seed)
    s2, e2 = run(vectors, predictions, rnd)
    out.append(report(f"{name}: random signals (same frequencies)", s2, e2, rnd))
    hold = DecisionStage(names, cfg.decision, msgspec.structs.replace(cfg.risk, min_confidence=0.0,
                                                                      min_risk_reward=0.0, exits=False))
    hold.engine = _HoldEngine(names, msgspec.structs.replace(cfg.decision, threshold=0.0))
    s3, e3 = run(vectors, predictions, hold)
    out.append(report(f"{name}: buy and hold (capped position)", s3, e3, hold))
    close = np.array([v.close for v in vectors])
    ok = np.isfinite(close)
    full = float(close[ok][-1] / close[ok][0] - 1) if ok.sum() > 1 else float("nan")
    out.append(Report(name=f"{name}: buy and hold (100% of equity)", bars=len(vectors), signals=0, buys=0, sells=0,
                      hit_rate=float("nan"), fills=1, pnl=full * cfg.risk.equity_start, total_return=full,
                      sharpe=float("nan"), max_drawdown=float((1 - close[ok] / np.maximum.accumulate(close[ok])).max()),
                      turnover=1.0, by_source={}))
    return out


class ReliabilityBin(msgspec.Struct, frozen=True):
    """Signals whose stated confidence fell in [lo, hi) percent, and how often they were right."""

    lo: float
    hi: float
    signals: int
    stated: float  # mean confidence, percent
    right: float  # observed hit rate, percent


def reliability(confidence: np.ndarray, right: np.ndarray, width: float = 5.0) -> list[ReliabilityBin]:
    """The reliability table of scored signals: confidence (percent) in bins of ``width`` points →
    signals, mean stated confidence, observed hit rate. Calibrated means stated ≈ right per bin."""
    confidence, right = np.asarray(confidence, dtype=np.float64), np.asarray(right, dtype=np.float64)
    k = np.clip(np.floor(confidence / width), 0, np.ceil(100 / width) - 1).astype(np.int64)  # 100 % in the top bin
    out = []
    for b in np.unique(k).tolist():
        sel = k == b
        out.append(ReliabilityBin(b * width, min((b + 1) * width, 100.0), int(sel.sum()),
                                  float(confidence[sel].mean()), float(right[sel].mean() * 100.0)))
    return out


class CalibrationFit(msgspec.Struct, kw_only=True):
    """What `fit_calibration` fitted, and how the held-out signals read before and after.

    Attributes:
        calibration: the fitted table, with its provenance.
        held_out: scored BUY/SELL signals after the fitted ones.
        held_out_from_ns: bar time of the first of them.
        before, after: their reliability tables, uncalibrated and with ``calibration``.
        traded_before, traded_after: their BUY/SELL signals that got a position (non-zero qty).
        vetoes_before, vetoes_after: veto name → their BUY/SELL signals the risk rules kept at 0.
    """

    calibration: Calibration
    held_out: int
    held_out_from_ns: int
    before: list[ReliabilityBin]
    after: list[ReliabilityBin]
    traded_before: int
    traded_after: int
    vetoes_before: dict[str, int]
    vetoes_after: dict[str, int]


def fit_split(signals: Sequence[Signal], holdout: float) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """|S| → hit rate fitted on the first 1 − ``holdout`` of one series' scored BUY/SELL signals
    (`outcomes`) in time order, so nothing after them informs the fit. Bins hold at least 50
    signals (at most 10 bins): a bin's hit rate then has a standard error of at most 7 points.

    Returns:
        The calibration (without provenance), the indices of the signals it was fitted on and
        those of the held-out ones, later than all of those.

    Raises:
        ConfigError: a holdout outside [0, 1), or fewer than 20 signals to fit on.
    """
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout must be in [0, 1): {holdout}")
    action, nxt, scored = outcomes(signals)
    idx = np.flatnonzero(scored)
    n_fit = int(len(idx) * (1.0 - holdout))
    fitted = idx[:n_fit]
    strength = np.abs(np.array([signals[i].score for i in fitted.tolist()], dtype=np.float64))
    cal = Calibration.fit(strength, action[fitted] == nxt[fitted], bins=int(np.clip(n_fit // 50, 1, 10)))
    return cal, fitted, idx[n_fit:]


def fit_calibration(data: str, vectors: Sequence[FeatureVector], predictions: Sequence[dict[str, Prediction]],
                    cfg: Config, holdout: float = 0.5, command: str = "", progress=None) -> CalibrationFit:
    """Fits a confidence calibration on a replay and evaluates it on the held-out signals (see
    the module docstring).

    Args:
        data: what the inputs are (a bar file, or "venue/symbol"), kept in the provenance.
        vectors, predictions: one series, in time order.
        cfg: the ``decision`` and ``risk`` settings of both replays.
        holdout: share of the scored signals, the latest, kept out of the fit; in [0, 1).
        command: the command line, kept in the provenance.
        progress: called with a line of text at each step (None: silent).

    Raises:
        ConfigError: a holdout outside [0, 1), or too few scored signals to fit.
    """
    say = progress or (lambda _: None)
    names = vectors[0].names
    say(f"replaying {len(vectors):,} vectors uncalibrated")
    before, _ = run(vectors, predictions, DecisionStage(names, cfg.decision, cfg.risk))
    cal, fitted, test = fit_split(before, holdout)
    cal = msgspec.structs.replace(cal, provenance=CalibrationProvenance(
        data=data, tf=before[0].tf, start_ns=before[fitted[0]].start_ns, end_ns=before[fitted[-1]].start_ns,
        signals=len(fitted), holdout=holdout, fitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=command))
    say(f"fitted on {len(fitted):,} of {len(fitted) + len(test):,} scored BUY/SELL signals: |S| edges "
        f"{[round(e, 3) for e in cal.edges]} -> hit rate {[round(h, 3) for h in cal.hit_rate]}")
    say(f"replaying {len(vectors):,} vectors with the calibration")
    after, _ = run(vectors, predictions, DecisionStage(names, cfg.decision, cfg.risk, cal))
    action, nxt, _ = outcomes(before)
    right_test = action[test] == nxt[test]

    def conf(sigs):
        return np.array([sigs[i].confidence for i in test.tolist()])

    def traded(sigs):
        return sum(sigs[i].qty != 0 for i in test.tolist())

    def vetoes(sigs):
        return dict(Counter(sigs[i].veto for i in test.tolist() if sigs[i].veto))

    return CalibrationFit(calibration=cal, held_out=len(test),
                          held_out_from_ns=before[test[0]].start_ns if len(test) else 0,
                          before=reliability(conf(before), right_test), after=reliability(conf(after), right_test),
                          traded_before=traded(before), traded_after=traded(after),
                          vetoes_before=vetoes(before), vetoes_after=vetoes(after))


def _gap(bins: Sequence[ReliabilityBin]) -> float:
    """Mean |stated − right| in points, weighted by signals."""
    n = sum(b.signals for b in bins)
    return sum(b.signals * abs(b.stated - b.right) for b in bins) / n if n else float("nan")


def _fit_text(fit: CalibrationFit, path: str) -> str:
    p = fit.calibration.provenance
    lines = [f"wrote {path}: fitted on {p.signals:,} scored BUY/SELL signals of {p.data} {p.tf}, "
             f"{_iso(p.start_ns)} to {_iso(p.end_ns)}"]
    if not fit.held_out:
        return "\n".join(lines + ["no held-out signals (--holdout 0)"])
    lines.append(f"held-out reliability: the {fit.held_out:,} scored BUY/SELL signals from "
                 f"{_iso(fit.held_out_from_ns)} (right: the next bar moved their way; ±2σ: binomial, of right)")
    for title, bins in (("uncalibrated (50 + 50|S|)", fit.before), ("calibrated", fit.after)):
        lines.append(f"  {title}: mean |stated - right| {_gap(bins):.1f} points")
        lines.append(f"    {'confidence':>10} {'signals':>8} {'stated %':>9} {'right %':>8} {'±2σ':>6}")
        for b in bins:
            se = 200.0 * np.sqrt(b.right / 100 * (1 - b.right / 100) / b.signals)
            lines.append(f"    {f'{b.lo:.0f}-{b.hi:.0f}':>10} {b.signals:>8,} {b.stated:>9.1f} {b.right:>8.1f} "
                         f"{se:>6.1f}")
    for title, n, v in (("uncalibrated", fit.traded_before, fit.vetoes_before),
                        ("calibrated", fit.traded_after, fit.vetoes_after)):
        lines.append(f"  {title}: {n:,} of them got a position; vetoes: "
                     + (", ".join(f"{k} {x:,}" for k, x in sorted(v.items())) or "none"))
    return "\n".join(lines)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _table(reports: Sequence[Report]) -> str:
    lines = [f"{'run':<62} {'bars':>6} {'BUY':>5} {'SELL':>5} {'hit':>6} {'return':>9} {'Sharpe':>7} "
             f"{'max DD':>7} {'turnover':>8}"]
    for r in reports:
        lines.append(f"{r.name:<62} {r.bars:>6} {r.buys:>5} {r.sells:>5} {r.hit_rate:>6.3f} {r.total_return:>9.4%} "
                     f"{r.sharpe:>7.2f} {r.max_drawdown:>7.2%} {r.turnover:>8.2f}")
    if reports[0].vetoes:
        lines.append("vetoes (strategy): " + ", ".join(f"{k} {v}" for k, v in sorted(reports[0].vetoes.items())))
    if reports[0].exits:
        lines.append("exits (strategy): " + ", ".join(f"{k} {v}" for k, v in sorted(reports[0].exits.items()))
                     + f" of {reports[0].fills} fills")
    if reports[0].calibration:
        lines.append("confidence calibration (strategy): " + ", ".join(
            f"{lo:.0f}-{hi:.0f}: right {hit:.3f} of {n}" for lo, hi, n, hit in reports[0].calibration))
    src = reports[0].by_source
    if src:
        lines.append("per source (strategy): " + ", ".join(
            f"{k} hit {v['hit_rate']:.3f} over {v['votes']} votes, mean |share| {v['mean_abs_share']:.3f}"
            for k, v in src.items()))
    return "\n".join(lines)


def _stored_inputs(args, cfg: Config) -> tuple[list[FeatureVector], list[dict[str, Prediction]]]:
    from core.store import Store

    start, end = _time_ns(args.from_), _time_ns(args.to)
    with Store.open(cfg.store_dsn, cfg.store.database) as store:
        feats = store.features(args.venue, args.symbol, args.timeframe, None, start, end, limit=10**7)
        bars = {b["start_ns"]: b["close"] for b in store.bars(args.venue, args.symbol, args.timeframe, start, end,
                                                                  limit=10**7)}
        rows = store.predictions(args.venue, args.symbol, args.timeframe, None, start, end, limit=10**8)
    if not feats["start_ns"]:
        raise DataFileError(f"no stored feature vectors for {args.venue}/{args.symbol} {args.timeframe} in that range")
    vectors = [FeatureVector(args.venue, args.symbol, args.timeframe, t, feats["names"],
                             np.asarray(v, dtype=np.float64).tobytes(), "", 0, float(bars.get(t, np.nan)))
               for t, v in zip(feats["start_ns"], feats["values"])]
    by_start: dict[int, dict[str, Prediction]] = {}
    for r in rows:
        by_start.setdefault(r["start_ns"], {})[r["model"]] = Prediction(
            r["model"], r["venue"], r["symbol"], r["tf"], r["start_ns"], r["version"], r["role"], r["outputs"],
            label=r["label"], confidence=r["confidence"], uncertainty=r["uncertainty"], degraded=bool(r["degraded"]))
    return vectors, [by_start.get(v.start_ns, {}) for v in vectors]


def _time_ns(text: str | None) -> int | None:
    """ISO-8601 (UTC unless it says otherwise) or epoch seconds / ms / µs / ns, told by magnitude."""
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise DataFileError(f"not a time: {text!r} (ISO-8601 or epoch seconds/ms/us/ns)") from None
        t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
        return int(t.timestamp()) * 10**9 + t.microsecond * 1000
    for digits, scale in ((11, 10**9), (14, 10**6), (17, 10**3)):
        if abs(n) < 10**digits:
            return n * scale
    return n


def _command(args: argparse.Namespace) -> str:
    """The command line that gave ``args`` (kept in a fitted calibration's provenance)."""
    words = ["tickmesh"] + (["--config", args.config] if getattr(args, "config", None) else []) + ["backtest"]
    for flag, value in (("--bars", args.bars), ("--venue", args.venue), ("--symbol", args.symbol),
                        ("--timeframe", args.timeframe), ("--from", args.from_), ("--to", args.to)):
        words += [flag, str(value)] if value else []
    words += ["--no-models"] if args.no_models else []
    return shlex.join(words + ["--fit-calibration", args.fit_calibration, "--holdout", str(args.holdout)])


def _cmd(args: argparse.Namespace, cfg: Config) -> int:
    def progress(line: str) -> None:
        print(f"tickmesh backtest: {line}", file=sys.stderr, flush=True)

    try:
        # Not when fitting: the configured file may be the one about to be written.
        calibration = None if args.fit_calibration else (
            Calibration.load(args.calibration) if args.calibration else cfg.load_calibration())
        if args.bars:
            progress(f"reading {args.bars}" + ("" if args.no_models else " and running the served models"))
            vectors, preds = file_inputs(args.bars, None if args.no_models else LocalModels())
            name, data = Path(args.bars).name, args.bars
        elif args.venue and args.symbol and args.timeframe:
            vectors, preds = _stored_inputs(args, cfg)
            name, data = f"{args.venue}/{args.symbol} {args.timeframe}", f"{args.venue}/{args.symbol}"
        else:
            print("tickmesh backtest: give --bars FILE, or --venue, --symbol and --timeframe", file=sys.stderr)
            return 2
        if args.fit_calibration:
            fit = fit_calibration(data, vectors, preds, cfg, args.holdout, _command(args), progress)
            fit.calibration.save(args.fit_calibration)
            print(_fit_text(fit, args.fit_calibration))
            return 0
        if isinstance(calibration, CalibrationMap) and vectors:  # the table of the replayed series
            v = vectors[0]
            pattern = calibration.match(v.venue, v.symbol, v.tf)
            calibration = calibration.resolve(v.venue, v.symbol, v.tf)
            progress(f"{v.venue}/{v.symbol}/{v.tf}: " + (f"calibration of pattern {pattern!r}" if pattern else
                     "the fallback calibration" if calibration is not None else "no calibration matches, uncalibrated"))
        if calibration is not None and calibration.provenance is not None:
            p = calibration.provenance
            progress(f"confidence calibrated on {p.signals:,} signals of {p.data} {p.tf}, "
                     f"{_iso(p.start_ns)} to {_iso(p.end_ns)}")
        progress(f"replaying {len(vectors):,} vectors: the strategy and its baselines")
        reports = compare(name, vectors, preds, cfg, args.seed, calibration)
    except (TickmeshError, OSError) as exc:  # OSError: the calibration file could not be written
        print(f"tickmesh backtest: {exc}", file=sys.stderr)
        return 2
    print(_table(reports))
    return 0


def register(sub) -> None:
    p = sub.add_parser("backtest", help="replay history through the live decision stage, with baselines")
    p.add_argument("--bars", help="a bar file (features and model predictions computed here)")
    p.add_argument("--no-models", action="store_true", help="with --bars: rules only, no model predictions")
    p.add_argument("--venue")
    p.add_argument("--symbol")
    p.add_argument("--timeframe")
    p.add_argument("--from", dest="from_", help="inclusive start (ISO-8601 or epoch s/ms/us/ns)")
    p.add_argument("--to", help="exclusive end")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-signal baseline")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibration", metavar="FILE",
                     help="confidence calibration to run the strategy with (default: the [decision] calibrations "
                     "table matching the series, else [decision] calibration)")
    cal.add_argument("--fit-calibration", metavar="OUT", help="fit a confidence calibration on the replay, write "
                     "it to OUT (JSON) and print the held-out reliability table instead of the report")
    p.add_argument("--holdout", type=float, default=0.5,
                   help="with --fit-calibration: share of the scored signals, the latest, kept out of the fit")
    p.set_defaults(func=_cmd)
