"""``tickmesh models``: train model versions into the Triton repository, list them.

Each trainable model is a module of `core.models` with ``add_arguments(parser)`` (its own
options) and ``train(args, progress) -> metrics`` (writes ``<repo>/<name>/<version>/`` with
`core.models._repo.save_version` and returns the metrics to print).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from core._progress import Progress
from core.config import Config
from core.errors import TickmeshError
from core.models._repo import DEFAULT_REPO

__all__ = ["TRAINERS", "register"]

# Model name -> module holding add_arguments(parser) and train(args, progress).
TRAINERS: dict[str, str] = {
    "anomaly": "core.models.anomaly",
    "forecast": "core.models.forecast",
    "regime": "core.models.regime",
    "sentiment": "core.models.sentiment",
}


def _train(args: argparse.Namespace, cfg: Config) -> int:
    module = importlib.import_module(TRAINERS[args.model])
    try:
        metrics = module.train(args, Progress(f"train {args.model}", args.progress_unit))
    except TickmeshError as exc:
        print(f"tickmesh models train {args.model}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _list(args: argparse.Namespace, cfg: Config) -> int:
    repo = Path(args.repo)
    for model in sorted(p.parent.name for p in repo.glob("*/config.pbtxt")):
        versions = sorted((p for p in (repo / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        for v in versions:
            card = v / "card.json"
            state = "trained" if (v / "weights.npz").is_file() or not (v / "model.py").is_file() else "no weights"
            info = json.loads(card.read_text()) if card.is_file() else {}
            print(f"{model:<10} v{v.name:<3} {state:<10} {info.get('architecture', '')} {info.get('created_utc', '')}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="train and list the models served by Triton")
    msub = p.add_subparsers(dest="models_command", required=True)
    train = msub.add_parser("train", help="train one model version into the repository")
    tsub = train.add_subparsers(dest="model", required=True)
    for name, module_name in TRAINERS.items():
        if importlib.util.find_spec(module_name) is None:  # a checkout without that model's trainer
            continue
        t = tsub.add_parser(name, help=f"train the {name} model")
        t.add_argument("--repo", default=str(DEFAULT_REPO), help="Triton model repository (default: triton_models/)")
        t.add_argument("--version", type=int, default=1, help="version directory to write (default: 1)")
        t.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        importlib.import_module(module_name).add_arguments(t)
        t.set_defaults(func=_train, progress_unit="steps")
    ls = msub.add_parser("list", help="list model versions and whether they are trained")
    ls.add_argument("--repo", default=str(DEFAULT_REPO))
    ls.set_defaults(func=_list)
