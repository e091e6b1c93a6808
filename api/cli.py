"""``tickmesh api``: serve the API and dashboard with uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys

import msgspec

from core.config import Config

__all__ = ["register", "serve"]

log = logging.getLogger("tickmesh.api")

# uvicorn speaks WebSocket only through one of these; without them it refuses every upgrade request.
_WS_LIBRARIES = ("websockets", "wsproto")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(cfg: Config, host: str, port: int, run_sink: bool = True) -> int:
    """Runs the API until SIGINT/SIGTERM, then shuts down cleanly (sink drained, NATS and store closed).

    Returns:
        0 after a clean run, 1 if the app failed to start (the reason is logged).
    """
    import uvicorn

    from api.app import create_app

    if not any(importlib.util.find_spec(name) for name in _WS_LIBRARIES):
        log.warning("no WebSocket library installed (pip install websockets): /ws/bars and the dashboard's "
                    "live updates will not work")
    config = uvicorn.Config(create_app(cfg, run_sink=run_sink), host=host, port=port, lifespan="on",
                            log_level="info", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on the first SIGINT/SIGTERM, restores the handlers it found and
    # then re-raises the signal to them. With these no-ops found, a requested stop ends as a normal
    # exit (status 0) instead of a KeyboardInterrupt or a death by SIGTERM after the clean shutdown.
    previous = {sig: signal.signal(sig, _stop_already_handled) for sig in _STOP_SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1


def _stop_already_handled(signum: int, frame: object) -> None:
    pass


def _run_api(args: argparse.Namespace, cfg: Config) -> int:
    if args.url:
        cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=args.url))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    host = args.host or cfg.api.host
    port = cfg.api.port if args.port is None else args.port
    return serve(cfg, host, port, run_sink=not args.no_sink)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``tickmesh api [--host H] [--port P] [--url NATS_URL] [--no-sink]``."""
    p = subparsers.add_parser("api", help="serve the REST/WebSocket API and the dashboard")
    p.add_argument("--host", help="address to listen on (default: api.host from config)")
    p.add_argument("--port", type=int, help="port to listen on (default: api.port from config; 0 picks one)")
    p.add_argument("--url", help="NATS url (default: from config)")
    p.add_argument("--no-sink", action="store_true",
                   help="do not run the ClickHouse sink here (another process runs `tickmesh sink`)")
    p.set_defaults(func=_run_api)
