"""``tickmesh backtest``: history through the very decision stage the live worker runs.

Inputs are feature vectors (with their bar's close) and, per vector, the predictions made for it:

- stored history (``--venue --symbol --timeframe [--from --to]``): the vectors and predictions
  ClickHouse holds, closes from the bars table;
- a bar file (``--bars FILE``): features computed with the live kernels, predictions from the
  served model versions run in this process (`LocalModels`: the same NumPy forward passes
  Triton runs; tests/test_models_* show them equal to Triton's answers within 1e-6).

Each vector goes through `core.signals.DecisionStage.decide` one at a time, in time order, as
the live worker calls it, so a replay of the live inputs gives the live signals. Reported:

- hit rate: BUY/SELL signals whose next bar moved their way (bars that did not move left out);
- P&L of the paper book (realized + unrealized at the last close), total return, Sharpe of the
  per-bar equity returns (annualised from the timeframe), max drawdown of the equity curve,
  turnover (traded notional / mean equity);
- per source: how often the sign of its contribution matched the next bar, and its mean |share|;
- baselines through the same risk rules and book: buy-and-hold at the strategy's largest
  position (``risk.max_position_fraction`` of equity) and at 100 %, and random signals (seeded,
  drawn as often as the strategy has BUY and SELL views before its vetoes).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import msgspec
import numpy as np

from core.config import Config
from core.decision import SOURCES, DecisionEngine
from core.errors import DataFileError, TickmeshError
from core.models.data import MODEL_FEATURES, WINDOW_BARS
from core.models.serving import summarize
from core.features.featureset import LADDER
from core.schema import FeatureVector, Prediction, Signal
from core.signals import DecisionStage

__all__ = ["LocalModels", "Report", "file_inputs", "run", "report", "compare", "register"]

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


def run(vectors: Sequence[FeatureVector], predictions: Sequence[dict[str, Prediction]],
        stage: DecisionStage) -> tuple[list[Signal], np.ndarray]:
    """Signals for every vector, one at a time in order, and the equity after each."""
    signals, equity = [], np.empty(len(vectors))
    for i, (v, p) in enumerate(zip(vectors, predictions)):
        signals.extend(stage.decide([v], [p]))
        equity[i] = stage.portfolio.equity
    return signals, equity


def report(name: str, signals: Sequence[Signal], equity: np.ndarray, stage: DecisionStage) -> Report:
    close = np.array([s.price for s in signals])
    nxt = np.full(len(close), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        nxt[:-1] = np.sign(np.log(close[1:] / close[:-1]))
    action = np.array([{"BUY": 1, "SELL": -1}.get(s.action, 0) for s in signals])
    scored = (action != 0) & np.isfinite(nxt) & (nxt != 0)
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
    for lo in range(50, 100, 10):
        sel = scored & (conf >= lo) & (conf < lo + 10 if lo < 90 else conf <= 100)
        if sel.any():
            calibration.append((float(lo), float(lo + 10), int(sel.sum()), float(right[sel].mean())))
    return Report(name=name, bars=len(signals), signals=int((action != 0).sum()), buys=int((action == 1).sum()),
                  sells=int((action == -1).sum()),
                  hit_rate=float((np.sign(action[scored]) == nxt[scored]).mean()) if scored.any() else float("nan"),
                  fills=len(fills), pnl=float(eq[-1] - start), total_return=float(eq[-1] / start - 1),
                  sharpe=sharpe, max_drawdown=float((1 - eq / peak).max()), turnover=traded / float(eq.mean()),
                  by_source=by_source, calibration=calibration,
                  vetoes=dict(Counter(s.veto for s in signals if s.veto)))


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


def compare(name: str, vectors, predictions, cfg: Config, seed: int = 0) -> list[Report]:
    """The strategy and its baselines on the same inputs."""
    names = vectors[0].names
    stage = DecisionStage(names, cfg.decision, cfg.risk)
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
                                                                      min_risk_reward=0.0))
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


def _table(reports: Sequence[Report]) -> str:
    lines = [f"{'run':<62} {'bars':>6} {'BUY':>5} {'SELL':>5} {'hit':>6} {'return':>9} {'Sharpe':>7} "
             f"{'max DD':>7} {'turnover':>8}"]
    for r in reports:
        lines.append(f"{r.name:<62} {r.bars:>6} {r.buys:>5} {r.sells:>5} {r.hit_rate:>6.3f} {r.total_return:>9.4%} "
                     f"{r.sharpe:>7.2f} {r.max_drawdown:>7.2%} {r.turnover:>8.2f}")
    if reports[0].vetoes:
        lines.append("vetoes (strategy): " + ", ".join(f"{k} {v}" for k, v in sorted(reports[0].vetoes.items())))
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


def _cmd(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.bars:
            vectors, preds = file_inputs(args.bars, None if args.no_models else LocalModels())
            name = Path(args.bars).name
        elif args.venue and args.symbol and args.timeframe:
            vectors, preds = _stored_inputs(args, cfg)
            name = f"{args.venue}/{args.symbol} {args.timeframe}"
        else:
            print("tickmesh backtest: give --bars FILE, or --venue, --symbol and --timeframe", file=sys.stderr)
            return 2
        reports = compare(name, vectors, preds, cfg, args.seed)
    except TickmeshError as exc:
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
    p.set_defaults(func=_cmd)
