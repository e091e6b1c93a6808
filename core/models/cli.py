"""``tickmesh models``: train model versions into the Triton repository, list them, and route
live traffic between versions (promote, rollback, canary, shadow) without restarting the mesh.

Each trainable model is a module of `core.models` with ``add_arguments(parser)`` (its own
options) and ``train(args, progress) -> metrics`` (writes ``<repo>/<name>/<version>/`` with
`core.models._repo.save_version` and returns the metrics to print).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import msgspec

from core._progress import Progress
from core.config import Config, RouteConfig
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
    from core.triton import repository_models, served_versions

    repo = Path(args.repo)
    for model in repository_models(repo):
        served = served_versions(repo, model)
        for v in sorted((p for p in (repo / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            card = v / "card.json"
            info = json.loads(card.read_text()) if card.is_file() else {}
            state = "served" if int(v.name) in served else "untrained"
            print(f"{model:<10} v{v.name:<3} {state:<10} {info.get('architecture', '')} {info.get('created_utc', '')}")
    return 0


def _route_cmd(args: argparse.Namespace, cfg: Config) -> int:
    import nats

    from core import routing, streams
    from core._service import nats_url

    def change(r):
        if args.models_command == "promote":
            return routing.promote(r, args.version)
        if args.models_command == "rollback":
            return routing.rollback(r)
        given = {k: getattr(args, k) for k in ("production", "candidate", "canary_share", "shadow")
                 if getattr(args, k) is not None}
        fields = {**{k: getattr(r, k) for k in RouteConfig.__struct_fields__}, **given}
        checked = msgspec.convert(fields, RouteConfig)  # validated as the config file's routes are
        return routing.Route(**msgspec.structs.asdict(checked), previous=r.previous)

    async def run() -> tuple:
        nc = await nats.connect(nats_url(args.url, cfg), connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await streams.ensure(js, cfg.streams, consumers=False)
            return await routing.update_route(js, cfg, args.model, change)
        finally:
            await nc.close()

    try:
        before, after = asyncio.run(run())
    except (TickmeshError, OSError, nats.errors.Error, msgspec.ValidationError) as exc:
        print(f"tickmesh models {args.models_command}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model}: {_describe(before)}  ->  {_describe(after)}")
    return 0


def _describe(r) -> str:
    out = f"production v{r.production or 'latest'}"
    if r.candidate:
        out += f", candidate v{r.candidate} for {r.canary_share:.0%} of symbols"
    if r.shadow:
        out += f", shadow v{r.shadow}"
    return out


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
    live = "; running inference workers switch at once"
    pr = msub.add_parser("promote", help="make a version the production version" + live)
    rb = msub.add_parser("rollback", help="return to the production version before the last promotion" + live)
    rt = msub.add_parser("route", help="set production, canary candidate and share, shadow version" + live)
    rt.add_argument("--production", type=int, help="production version (0: the highest loaded)")
    rt.add_argument("--candidate", type=int, help="canary candidate version (0: none)")
    rt.add_argument("--canary-share", type=float, help="share of symbols (0..1, stable hash) sent to the candidate")
    rt.add_argument("--shadow", type=int, help="version asked too and only measured (0: none)")
    for p in (pr, rb, rt):
        p.add_argument("model", help="model name, e.g. forecast")
        p.add_argument("--url", help="NATS url (default: from config)")
        p.set_defaults(func=_route_cmd)
    pr.add_argument("version", type=int, help="the version to promote")
