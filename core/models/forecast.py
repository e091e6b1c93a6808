"""Multi-horizon return forecast: a small LSTM (version 1) or Transformer encoder (version 2).

Input: one `WINDOW_BARS` x `MODEL_FEATURES` window of raw features. Output, per horizon of
`HORIZONS_BARS` (1, 5, 15 bars): ``MEAN`` (expected log return from the window's last close),
``STD`` (predictive standard deviation) and ``P_UP`` (P(return > 0) under that Gaussian).

The network standardises its input with the training set's median and IQR (clipped to
[-10, 10]), reads the window with an LSTM or a pre-norm Transformer encoder, and a linear head
gives a mean and a log-variance per horizon in units of the training target's std. It is trained
by Gaussian negative log-likelihood, so ``STD`` is meant to be calibrated; `evaluate` measures
whether it is (interval coverage, NLL against constant- and recent-volatility baselines) and
whether ``MEAN`` beats naive forecasts, walk-forward on real bars.

Training is seeded and single-threaded (bitwise reproducible on one machine). The served forward
pass is `triton_models/_runtime/nn.py` (NumPy/CuPy); `reference_forward` is the same network in
torch float64, the yardstick for it.

Example:
    tickmesh models train forecast --arch lstm --version 1 --synthetic 40000 --seed 1
    python -m core.models.forecast --evaluate ../shared/data/bars/eurusd_1h_2017-2018.csv
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
from typing import Callable, Iterator, Mapping, Sequence

import msgspec
import numpy as np

from core.errors import DataFileError, ModelError
from core.models._evaluate import evaluation_main
from core.models._repo import save_version, version_dir
from core.models.data import (
    HORIZONS_BARS,
    MODEL_FEATURES,
    WINDOW_BARS,
    Dataset,
    check_windows,
    load_datasets,
    robust_scale,
    synthetic_dataset,
    walk_forward,
)

__all__ = [
    "NAME",
    "ARCHS",
    "NetSpec",
    "FitResult",
    "add_arguments",
    "train",
    "fit",
    "export_weights",
    "net_from_weights",
    "reference_forward",
    "predict",
    "constant_baselines",
    "forecast_metrics",
    "evaluate",
    "main",
]

NAME = "forecast"
ARCHS = ("lstm", "transformer")
# Log-variance clamp, in units of the scaled target: keeps STD finite on inputs far from training.
LOGVAR_BOUNDS = (-10.0, 10.0)
LAYER_NORM_EPS = 1e-5
# z of the central 50/80/95% Gaussian intervals whose coverage `forecast_metrics` reports.
_INTERVALS = {"50": 0.6744897501960817, "80": 1.2815515655446004, "95": 1.959963984540054}
_LOGRET_1 = MODEL_FEATURES.index("logret_1")

# progress(done, total, note): a `core._progress.Progress` or any callable like it.
ProgressFn = Callable[..., None]


class NetSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Architecture of a forecast network.

    Attributes:
        arch: "lstm" or "transformer".
        hidden: LSTM hidden units.
        layers: LSTM or encoder layers.
        d_model: Transformer width.
        n_heads: attention heads.
        ff: Transformer feed-forward width.
        dropout: Transformer dropout while training (none at inference).
    """

    arch: str = "lstm"
    hidden: int = 32
    layers: int = 1
    d_model: int = 32
    n_heads: int = 2
    ff: int = 64
    dropout: float = 0.1

    def describe(self) -> str:
        if self.arch == "lstm":
            return f"lstm(hidden={self.hidden}, layers={self.layers})"
        return (f"transformer(d_model={self.d_model}, heads={self.n_heads}, layers={self.layers}, ff={self.ff}, "
                f"pre-norm, gelu, learned positions)")


class FitResult(msgspec.Struct, kw_only=True):
    """What `fit` returns.

    Attributes:
        net: the trained ForecastNet, float64, eval mode (weights of the best validation epoch).
        history: per epoch ``(train_nll, val_nll)``, scaled-target units.
        best_epoch: 1-based epoch whose weights were kept.
    """

    net: object
    history: list
    best_epoch: int


# ---------------------------------------------------------------------------------------------
# The torch network (torch is imported lazily: the tickmesh CLI must start fast).


@functools.cache
def _net_class():
    import torch
    from torch import nn

    class ForecastNet(nn.Module):
        """Standardise -> LSTM or pre-norm Transformer encoder -> (mean, log-variance) per horizon.

        Buffers ``x_center``/``x_scale`` (input standardisation) and ``y_scale`` (target std per
        horizon) travel in the state dict, so the exported weights are the whole model.
        """

        def __init__(self, spec: NetSpec, n_features: int = len(MODEL_FEATURES),
                     n_horizons: int = len(HORIZONS_BARS), window_bars: int = WINDOW_BARS) -> None:
            super().__init__()
            self.spec = spec
            self.n_horizons = n_horizons
            self.register_buffer("x_center", torch.zeros(n_features, dtype=torch.float64))
            self.register_buffer("x_scale", torch.ones(n_features, dtype=torch.float64))
            self.register_buffer("y_scale", torch.ones(n_horizons, dtype=torch.float64))
            if spec.arch == "lstm":
                self.lstm = nn.LSTM(n_features, spec.hidden, num_layers=spec.layers, batch_first=True)
                width = spec.hidden
            elif spec.arch == "transformer":
                if spec.d_model % spec.n_heads:
                    raise ModelError(f"d_model {spec.d_model} is not a multiple of n_heads {spec.n_heads}")
                self.embed = nn.Linear(n_features, spec.d_model)
                self.pos = nn.Parameter(0.02 * torch.randn(window_bars, spec.d_model))
                layer = nn.TransformerEncoderLayer(spec.d_model, spec.n_heads, spec.ff, spec.dropout,
                                                   activation="gelu", batch_first=True, norm_first=True,
                                                   layer_norm_eps=LAYER_NORM_EPS)
                self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
                self.norm = nn.LayerNorm(spec.d_model, eps=LAYER_NORM_EPS)
                width = spec.d_model
            else:
                raise ModelError(f"unknown forecast arch {spec.arch!r}; choose one of {ARCHS}")
            self.head = nn.Linear(width, 2 * n_horizons)

        def forward(self, x):
            """Raw windows (B, T, F) -> (mean, log-variance), both (B, H) in scaled-target units."""
            z = torch.clamp((x - self.x_center.to(x.dtype)) / self.x_scale.to(x.dtype), -10.0, 10.0)
            if self.spec.arch == "lstm":
                h = self.lstm(z)[0][:, -1]
            else:
                h = self.encoder(self.embed(z) + self.pos)
                h = self.norm(h[:, -1])
            out = self.head(h)
            return out[:, :self.n_horizons], torch.clamp(out[:, self.n_horizons:], *LOGVAR_BOUNDS)

        def predict(self, x):
            """Raw windows -> ``(MEAN, STD, P_UP)`` in log-return units."""
            mean_s, logvar = self(x)
            y_scale = self.y_scale.to(x.dtype)
            mean = mean_s * y_scale
            std = torch.exp(0.5 * logvar) * y_scale
            p_up = 0.5 * torch.special.erfc(-(mean / std) / math.sqrt(2.0))
            return mean, std, p_up

    return ForecastNet


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, single-threaded, deterministic torch for the duration (settings restored after)."""
    import torch

    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def _gaussian_nll(mean, logvar, y):
    """Mean Gaussian NLL without the constant 0.5*log(2*pi)."""
    import torch

    return 0.5 * (logvar + (y - mean) ** 2 * torch.exp(-logvar)).mean()


def fit(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
        spec: NetSpec = NetSpec(), seed: int = 0, epochs: int = 15, batch_size: int = 256,
        lr: float = 2e-3, patience: int = 3, progress: ProgressFn | None = None) -> FitResult:
    """Trains a forecast network by Gaussian NLL with early stopping on the validation set.

    Args:
        x_train, y_train: windows (n, WINDOW_BARS, n_features) and log returns (n, n_horizons).
        x_val, y_val: a later, time-ordered tail (the caller purges the overlap of horizons).
        spec: architecture.
        seed: seeds initialisation, batch order and dropout.
        epochs: at most this many passes.
        patience: stop after this many epochs without a better validation NLL.
        progress: called ``progress(epoch, epochs, note)`` after each epoch.

    Raises:
        ModelError: too few samples, bad shapes or non-finite values.
    """
    import torch

    x_train, x_val = check_windows(x_train, "training windows"), check_windows(x_val, "validation windows")
    y_train, y_val = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
    if epochs < 1 or batch_size < 1:
        raise ModelError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    if len(x_train) < 64 or len(x_val) < 16:
        raise ModelError(f"too few samples to train the forecast: {len(x_train)} training, {len(x_val)} "
                         "validation windows (need 64 and 16)")
    if y_train.shape != (len(x_train), len(HORIZONS_BARS)) or y_val.shape != (len(x_val), len(HORIZONS_BARS)):
        raise ModelError(f"targets have shapes {y_train.shape}, {y_val.shape}; expected (n, {len(HORIZONS_BARS)})")
    if not (np.isfinite(y_train).all() and np.isfinite(y_val).all()):
        raise ModelError("targets hold non-finite values")
    # Per feature, over the windows' last rows: each training bar counts once.
    center, scale = robust_scale(x_train[:, -1, :])
    y_scale = y_train.std(axis=0)
    if (y_scale <= 0).any():
        raise ModelError(f"training targets do not vary (std per horizon {y_scale.tolist()})")
    with _deterministic(seed):
        net = _net_class()(spec)
        with torch.no_grad():
            net.x_center.copy_(torch.from_numpy(center))
            net.x_scale.copy_(torch.from_numpy(scale))
            net.y_scale.copy_(torch.from_numpy(y_scale))
        # float32 for speed while training; the exported weights are evaluated in float64.
        net = net.float()
        xt = torch.from_numpy(x_train.astype(np.float32))
        yt = torch.from_numpy((y_train / y_scale).astype(np.float32))
        xv = torch.from_numpy(x_val.astype(np.float32))
        yv = torch.from_numpy((y_val / y_scale).astype(np.float32))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        history: list[tuple[float, float]] = []
        best = (math.inf, 0, None)
        for epoch in range(1, epochs + 1):
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            total, count = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                mean, logvar = net(xt[idx])
                loss = _gaussian_nll(mean, logvar, yt[idx])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            net.eval()
            with torch.no_grad():
                val = float(sum(_gaussian_nll(*net(xv[s:s + 4096]), yv[s:s + 4096]) * len(yv[s:s + 4096])
                                for s in range(0, len(xv), 4096)) / len(xv))
            history.append((total / count, val))
            if val < best[0]:
                best = (val, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
            if progress is not None:
                progress(epoch, epochs, f"epoch {epoch}: train nll {total / count:.4f}, val nll {val:.4f}"
                                        f"{' *' if best[1] == epoch else ''}")
            if epoch - best[1] >= patience:
                if progress is not None:
                    progress(epochs, epochs,
                             f"stopped after epoch {epoch}; best epoch {best[1]}, val nll {best[0]:.4f}")
                break
        if best[2] is None:
            raise ModelError(f"training diverged: validation NLL {history[-1][1]} in every epoch")
        net.load_state_dict(best[2])
        net = net.double().eval()
        # The buffers went through float32 with the rest; put the exact float64 values back.
        with torch.no_grad():
            net.x_center.copy_(torch.from_numpy(center))
            net.x_scale.copy_(torch.from_numpy(scale))
            net.y_scale.copy_(torch.from_numpy(y_scale))
    return FitResult(net=net, history=history, best_epoch=best[1])


def export_weights(net) -> dict[str, np.ndarray]:
    """The network as plain arrays for ``weights.npz``: torch's state dict plus settings."""
    spec: NetSpec = net.spec
    weights = {k: (v.detach().double() if v.is_floating_point() else v.detach()).cpu().numpy().copy()
               for k, v in net.state_dict().items()}
    weights.update({
        "arch": np.array(spec.arch),
        "n_heads": np.array(spec.n_heads if spec.arch == "transformer" else 0, dtype=np.int64),
        "layer_norm_eps": np.array(LAYER_NORM_EPS),
        "logvar_bounds": np.array(LOGVAR_BOUNDS),
        "feature_names": np.array(MODEL_FEATURES),
        "horizons_bars": np.array(HORIZONS_BARS, dtype=np.int64),
        "window_bars": np.array(WINDOW_BARS, dtype=np.int64),
    })
    return weights


def net_from_weights(weights: Mapping[str, np.ndarray]):
    """A float64, eval-mode ForecastNet holding ``weights`` (as written by `export_weights`).

    Raises:
        ModelError: the weights are not a forecast network's.
    """
    import torch

    try:
        arch = str(weights["arch"])
        if arch == "lstm":
            layers = sum(1 for k in weights if k.startswith("lstm.weight_ih_l"))
            spec = NetSpec(arch=arch, hidden=int(weights["lstm.weight_hh_l0"].shape[1]), layers=layers)
        else:
            layers = len({k.split(".")[2] for k in weights if k.startswith("encoder.layers.")})
            spec = NetSpec(arch=arch, layers=layers, d_model=int(weights["embed.weight"].shape[0]),
                           n_heads=int(weights["n_heads"]), ff=int(weights["encoder.layers.0.linear1.weight"].shape[0]))
        net = _net_class()(spec).double()
        state = {k: torch.from_numpy(np.asarray(weights[k])) for k in net.state_dict()}
        net.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelError(f"not forecast weights: {exc}") from exc
    return net.eval()


def reference_forward(weights: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """The torch float64 forward pass of exported weights: the yardstick for the served one.

    Returns:
        ``MEAN``, ``STD``, ``P_UP``, each (batch, n_horizons).
    """
    return predict(net_from_weights(weights), x)


def predict(net, x: np.ndarray, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """``MEAN``, ``STD``, ``P_UP`` of a float64 ForecastNet for raw windows ``x``."""
    import torch

    x = check_windows(x, "features")
    outs = []
    with torch.no_grad():
        for s in range(0, max(len(x), 1), batch_size):
            outs.append([t.numpy() for t in net.predict(torch.from_numpy(x[s:s + batch_size]))])
    return {k: np.concatenate([o[i] for o in outs]) for i, k in enumerate(("MEAN", "STD", "P_UP"))}


# ---------------------------------------------------------------------------------------------
# Metrics, walk-forward evaluation


def _direction_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of right signs over moves (y != 0); a forecast of exactly 0 scores one half."""
    moved = y != 0
    if not moved.any():
        return math.nan
    p, t = np.sign(pred[moved]), np.sign(y[moved])
    return float(np.mean(np.where(p == 0, 0.5, (p == t).astype(np.float64))))


def _gauss_nll(y, mean, std) -> float:
    return float(np.mean(0.5 * np.log(2 * np.pi * std ** 2) + 0.5 * ((y - mean) / std) ** 2))


def constant_baselines(train_y: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The constant forecasts fitted on training targets, repeated for ``n`` test samples.

    Returns:
        ``mean`` and ``std`` (the Gaussian fitted to the training targets) and ``majority`` (the
        training set's more frequent sign, +1 or -1), each (n, n_horizons).
    """
    up, down = np.mean(train_y > 0, axis=0), np.mean(train_y < 0, axis=0)
    rows = {"mean": train_y.mean(axis=0), "std": train_y.std(axis=0), "majority": np.where(up >= down, 1.0, -1.0)}
    return {k: np.broadcast_to(v, (n, train_y.shape[1])) for k, v in rows.items()}


def forecast_metrics(y: np.ndarray, pred: Mapping[str, np.ndarray], *, last_return: np.ndarray,
                     recent_std_1bar: np.ndarray, const: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Out-of-sample quality of forecasts against naive baselines, per horizon.

    Args:
        y: realised log returns (n, n_horizons).
        pred: ``MEAN`` and ``STD`` (n, n_horizons).
        last_return: log return over the same horizon ending at the window's last bar (n, n_horizons).
        recent_std_1bar: root mean square of the window's 1-bar log returns (n,).
        const: `constant_baselines` of the training targets each sample's model was fitted on.

    Returns:
        ``{horizon: {metric: value}}``. Direction accuracy is over nonzero moves (``zero_share``
        says how many were flat); ``acc_always_up`` / ``acc_majority`` (the training set's more
        frequent sign) / ``acc_last_return`` are the baselines (zero return scores 0.5 by
        definition). ``mse_skill`` = 1 - mse / mse of the zero forecast. Coverage of the central
        50/80/95% intervals should equal 0.5/0.8/0.95 when STD is calibrated. NLL (nats, log-return
        units) is compared with the constant Gaussian fitted on the training targets and with one of
        zero mean and the window's recent volatility scaled by sqrt(h).
    """
    out = {}
    mean, std = pred["MEAN"], pred["STD"]
    for j, h in enumerate(HORIZONS_BARS):
        yj, mj, sj = y[:, j], mean[:, j], std[:, j]
        cm, cs = const["mean"][:, j], const["std"][:, j]
        # A flat window would give a zero std; floor it at a small share of the typical move.
        vol_std = np.maximum(recent_std_1bar * math.sqrt(h), 0.05 * cs)
        mse_zero = float(np.mean(yj ** 2))
        mse = float(np.mean((yj - mj) ** 2))
        z = np.abs(yj - mj) / sj
        z_const = np.abs(yj - cm) / cs
        out[str(h)] = {
            "n": int(len(yj)),
            "zero_share": float(np.mean(yj == 0)),
            "acc_model": _direction_accuracy(mj, yj),
            "acc_always_up": _direction_accuracy(np.ones_like(yj), yj),
            "acc_majority": _direction_accuracy(const["majority"][:, j], yj),
            "acc_last_return": _direction_accuracy(last_return[:, j], yj),
            "mse": mse,
            "mse_zero": mse_zero,
            "mse_last_return": float(np.mean((yj - last_return[:, j]) ** 2)),
            "mse_skill": 1.0 - mse / mse_zero if mse_zero > 0 else math.nan,
            **{f"cover{k}": float(np.mean(z <= q)) for k, q in _INTERVALS.items()},
            **{f"cover{k}_const": float(np.mean(z_const <= q)) for k, q in _INTERVALS.items()},
            "nll": _gauss_nll(yj, mj, sj),
            "nll_const_var": _gauss_nll(yj, cm, cs),
            "nll_recent_vol": _gauss_nll(yj, 0.0, vol_std),
            "mean_std": float(np.mean(sj)),
        }
    return out


def _purged_tail(n: int, val_fraction: float, gap: int) -> tuple[slice, slice]:
    """Train on the head, validate on the last ``val_fraction``, ``gap`` samples dropped between.

    Targets look ``gap`` bars ahead, so without the gap the last training targets would cover
    the validation period.
    """
    n_val = max(16, int(n * val_fraction))
    return slice(0, max(0, n - n_val - gap)), slice(n - n_val, n)


def _window_baselines(ds: Dataset, x: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logc = np.log(ds.close)
    last = np.stack([logc[end] - logc[end - h] for h in HORIZONS_BARS], axis=1)
    r = x[:, :, _LOGRET_1]
    return last, np.sqrt(np.mean(r * r, axis=1))


def evaluate(datasets: Sequence[Dataset], arch: str, seed: int, folds: int, *, epochs: int = 8,
             spec: NetSpec | None = None, min_train: float = 0.5, val_fraction: float = 0.15,
             progress: ProgressFn | None = None) -> dict:
    """Walk-forward evaluation: per dataset, train on the past folds, forecast the next one.

    Every dataset is evaluated on its own (``walk_forward`` over its time-ordered windows). For
    each test fold a fresh network is fitted on all earlier windows (minus the last
    ``max(HORIZONS_BARS)``, whose targets reach into the fold) with early stopping on the tail of
    that training span; the out-of-sample forecasts of all folds are then scored together by
    `forecast_metrics`.

    Returns:
        ``{"arch", "seed", "folds", "epochs", "datasets": {name: {"n_windows", "n_test",
        "horizons": {h: metrics}}}}``.
    """
    spec = spec or NetSpec(arch=arch)
    if spec.arch != arch:
        spec = msgspec.structs.replace(spec, arch=arch)
    gap = max(HORIZONS_BARS)
    result: dict = {"arch": spec.describe(), "seed": seed, "folds": folds, "epochs": epochs, "datasets": {}}
    for ds in datasets:
        x, y, end = ds.supervised()
        last, recent = _window_baselines(ds, x, end)
        splits = list(walk_forward(len(x), folds, min_train))
        if not splits:
            raise ModelError(f"{ds.name}: {len(x)} windows, too few for {folds} walk-forward folds")
        preds, consts, idx = [], [], []
        for k, (tr, te) in enumerate(splits):
            stop = max(0, tr.stop - gap)
            head, tail = _purged_tail(stop, val_fraction, gap)
            note = None if progress is None else (
                lambda e, t, n, k=k: progress(e, t, f"{ds.name} fold {k + 1}/{len(splits)}: {n}"))
            res = fit(x[head], y[head], x[tail], y[tail], spec=spec, seed=seed, epochs=epochs, progress=note)
            preds.append(predict(res.net, x[te]))
            # The constant baselines of a fold know only that fold's training targets.
            consts.append(constant_baselines(y[:stop], te.stop - te.start))
            idx.append(np.arange(te.start, te.stop))
        test = np.concatenate(idx)
        pred = {k: np.concatenate([p[k] for p in preds]) for k in ("MEAN", "STD", "P_UP")}
        const = {k: np.concatenate([c[k] for c in consts]) for k in ("mean", "std", "majority")}
        pooled = forecast_metrics(y[test], pred, last_return=last[test], recent_std_1bar=recent[test], const=const)
        result["datasets"][ds.name] = {"n_windows": int(len(x)), "n_test": int(len(test)), "horizons": pooled}
    return result


# ---------------------------------------------------------------------------------------------
# CLI: `tickmesh models train forecast ...` and `python -m core.models.forecast --evaluate ...`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The forecast's options of ``tickmesh models train forecast``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="FILE", help="bar files to train on")
    src.add_argument("--synthetic", type=int, metavar="N_BARS",
                     help="train on synthetic_bars(N_BARS, seed): data the project may ship")
    parser.add_argument("--arch", choices=ARCHS, default="lstm", help="network (default: lstm)")
    parser.add_argument("--epochs", type=int, default=15, help="most training epochs (default: 15)")
    parser.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs (default: 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch size (default: 256)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    parser.add_argument("--hidden", type=int, default=32, help="LSTM hidden units (default: 32)")
    parser.add_argument("--layers", type=int, default=1, help="LSTM or encoder layers (default: 1)")
    parser.add_argument("--d-model", type=int, default=32, help="Transformer width (default: 32)")
    parser.add_argument("--heads", type=int, default=2, help="Transformer attention heads (default: 2)")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="time-ordered tail of each series used for early stopping (default: 0.15)")


def _spec_from_args(args: argparse.Namespace) -> NetSpec:
    layers = args.layers
    if min(layers, args.hidden, args.d_model, args.heads, args.epochs, args.batch_size) < 1:
        raise ModelError("--layers, --hidden, --d-model, --heads, --epochs and --batch-size must be >= 1")
    return NetSpec(arch=args.arch, hidden=args.hidden, layers=layers, d_model=args.d_model, n_heads=args.heads,
                   ff=2 * args.d_model)


def _load(args: argparse.Namespace, progress: ProgressFn) -> tuple[list[Dataset], list[str]]:
    if args.synthetic is not None:
        if args.synthetic < 2_000:
            raise ModelError(f"--synthetic {args.synthetic}: use at least 2000 bars")
        source = f"synthetic_bars(n_bars={args.synthetic}, seed={args.seed})"
        return [synthetic_dataset(args.synthetic, args.seed)], [source]
    try:
        return load_datasets(args.data, progress=progress), list(args.data)
    except DataFileError as exc:
        raise ModelError(str(exc)) from exc


def train(args: argparse.Namespace, progress: ProgressFn) -> dict:
    """``tickmesh models train forecast``: fits, writes ``<repo>/forecast/<version>/``, returns metrics."""
    spec = _spec_from_args(args)
    out_dir = version_dir(args.repo, NAME, args.version)
    datasets, sources = _load(args, progress)
    gap = max(HORIZONS_BARS)
    parts = {"xt": [], "yt": [], "xv": [], "yv": [], "val": []}
    for ds in datasets:
        x, y, end = ds.supervised()
        if len(x) < 200:
            raise ModelError(f"{ds.name}: only {len(x)} complete windows; need at least 200 to train")
        head, tail = _purged_tail(len(x), args.val_fraction, gap)
        parts["xt"].append(x[head])
        parts["yt"].append(y[head])
        parts["xv"].append(x[tail])
        parts["yv"].append(y[tail])
        last, recent = _window_baselines(ds, x[tail], end[tail])
        parts["val"].append((last, recent))
    xt, yt = np.concatenate(parts["xt"]), np.concatenate(parts["yt"])
    xv, yv = np.concatenate(parts["xv"]), np.concatenate(parts["yv"])
    res = fit(xt, yt, xv, yv, spec=spec, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr, patience=args.patience, progress=progress)
    val = forecast_metrics(yv, predict(res.net, xv), last_return=np.concatenate([p[0] for p in parts["val"]]),
                           recent_std_1bar=np.concatenate([p[1] for p in parts["val"]]),
                           const=constant_baselines(yt, len(yv)))
    keep = ("acc_model", "acc_last_return", "mse_skill", "cover50", "cover80", "cover95", "nll", "nll_const_var",
            "nll_recent_vol")
    metrics = {
        "architecture": spec.describe(),
        "n_train": int(len(xt)),
        "n_val": int(len(xv)),
        "epochs_run": len(res.history),
        "best_epoch": res.best_epoch,
        "train_nll_scaled": res.history[res.best_epoch - 1][0],
        "val_nll_scaled": res.history[res.best_epoch - 1][1],
        "val": {h: {k: m[k] for k in keep} for h, m in val.items()},
    }
    save_version(out_dir, export_weights(res.net), seed=args.seed, data=sources, metrics=metrics, extra={
        "architecture": spec.describe(),
        "inputs": {"FEATURES": {"dtype": "FP64", "dims": [WINDOW_BARS, len(MODEL_FEATURES)]}},
        "outputs": {"MEAN": "expected log return from the window's last close, per horizon",
                    "STD": "predictive std of that log return (Gaussian NLL-trained)",
                    "P_UP": "P(log return > 0) under N(MEAN, STD^2)"},
        "horizons_bars": list(HORIZONS_BARS),
        "feature_names": list(MODEL_FEATURES),
        "training": {"epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
                     "lr": args.lr, "val_fraction": args.val_fraction, "loss": "gaussian nll",
                     "history": [[round(a, 6), round(b, 6)] for a, b in res.history]},
    })
    return metrics


def _table(result: dict) -> str:
    cols = [("acc_model", "acc"), ("acc_always_up", "up"), ("acc_majority", "major"), ("acc_last_return", "last"),
            ("mse_skill", "mse_skill"), ("cover50", "cov50"), ("cover80", "cov80"), ("cover95", "cov95"),
            ("nll", "nll"), ("nll_const_var", "nll_const"), ("nll_recent_vol", "nll_vol")]
    lines = [f"{result['arch']}  seed {result['seed']}  folds {result['folds']}  epochs {result['epochs']}",
             f"{'dataset':<36} {'h':>3} {'n':>6} " + " ".join(f"{c[1]:>9}" for c in cols)]
    for name, d in result["datasets"].items():
        for h, m in d["horizons"].items():
            lines.append(f"{name[:36]:<36} {h:>3} {m['n']:>6} " + " ".join(f"{m[c[0]]:>9.4f}" for c in cols))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.models.forecast --evaluate FILE...``: walk-forward table on real bars."""
    from core._progress import Progress

    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--arch", choices=(*ARCHS, "both"), default="both")
        p.add_argument("--epochs", type=int, default=8)
        p.add_argument("--last-bars", type=int, default=0, help="use only the last N bars of each file (0: all)")
        p.add_argument("--json", metavar="OUT", help="also write the metrics as JSON")

    def run(args: argparse.Namespace) -> None:
        datasets = load_datasets(args.evaluate, progress=Progress("features", "bars"))
        if args.last_bars > 0:
            datasets = [d.slice(max(0, len(d) - args.last_bars), len(d)) for d in datasets]
        results = []
        for arch in (ARCHS if args.arch == "both" else (args.arch,)):
            res = evaluate(datasets, arch, args.seed, args.folds, epochs=args.epochs,
                           progress=Progress(f"walk-forward {arch}", "epochs"))
            results.append(res)
            print(_table(res), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)

    return evaluation_main(NAME, argv, run, description=main.__doc__, options=options)


if __name__ == "__main__":
    sys.exit(main())
