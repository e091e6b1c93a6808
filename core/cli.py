"""tickmesh: a NATS JetStream edge-to-cloud mesh for real-time market data.

The ``tickmesh`` command. Core's own commands are defined here. Edge and API commands are registered through the
``tickmesh.commands`` entry-point group, so core never imports edge or api.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib.metadata import entry_points

from core.config import Config, load_config
from core.errors import TickmeshError

__all__ = ["main", "build_parser"]


def _streams_ensure(args: argparse.Namespace, cfg: Config) -> int:
    import nats

    from core import streams

    async def run() -> None:
        nc = await nats.connect(args.url or cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}")
        try:
            for line in await streams.ensure(nc.jetstream(), cfg.streams):
                print(line)
        finally:
            await nc.close()

    asyncio.run(run())
    return 0


def _schema(args: argparse.Namespace, cfg: Config) -> int:
    from core.schema import json_schema

    text = json.dumps(json_schema(), indent=2)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickmesh", description=__doc__.splitlines()[0],
        epilog="Start with `tickmesh up` (what `make up` runs); `tickmesh COMMAND --help` for each command.")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (defaults for every value)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("streams", help="manage JetStream streams and consumers")
    p.add_argument("action", choices=["ensure"])
    p.add_argument("--url", help="NATS url (default: from config)")
    p.set_defaults(func=_streams_ensure)

    p = sub.add_parser("schema", help="print the JSON Schema of every wire type")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=_schema)

    for ep in sorted(entry_points(group="tickmesh.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a broken install should not take every other command down
            print(f"tickmesh: warning: command group {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        return args.func(args, cfg) or 0
    except TickmeshError as exc:
        print(f"tickmesh: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
