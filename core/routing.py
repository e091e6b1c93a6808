"""Model version routes kept in the ``tickmesh_state`` KV bucket, so that promote and rollback
reach running inference workers without a restart.

The key ``route.<model>`` holds a `core.inference.Route` as JSON; a worker watches ``route.*``
and applies each change to its `core.inference.Router` at once. Without a key the route comes
from config (``[inference.routes.<model>]``).
"""

from __future__ import annotations

from typing import Callable

import msgspec
from nats.js.errors import KeyNotFoundError

from core.config import Config
from core.errors import ConfigError
from core.inference import Route
from core.streams import STATE_BUCKET

__all__ = ["route_key", "config_route", "promote", "rollback", "decode_route", "encode_route", "current_route",
           "update_route"]


def route_key(model: str) -> str:
    return f"route.{model}"


def config_route(cfg: Config, model: str) -> Route:
    """The route ``cfg.inference.routes`` gives ``model`` (default: latest version, no canary)."""
    rc = cfg.inference.routes.get(model)
    return Route(**msgspec.structs.asdict(rc)) if rc else Route()


def encode_route(route: Route) -> bytes:
    return msgspec.json.encode(route)


def decode_route(data: bytes) -> Route:
    """Raises ConfigError when the stored route is not a valid one."""
    try:
        return msgspec.json.decode(data, type=Route)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid stored route: {exc}") from None


def promote(route: Route, version: int) -> Route:
    """``version`` becomes production; the old production is kept for rollback. A candidate that
    is promoted stops being a candidate."""
    if version < 1:
        raise ConfigError(f"versions start at 1, got {version}")
    candidate = 0 if route.candidate == version else route.candidate
    return msgspec.structs.replace(route, production=version, previous=route.production, candidate=candidate,
                                   canary_share=route.canary_share if candidate else 0.0)


def rollback(route: Route) -> Route:
    """Production goes back to the previous version (and the current one becomes 'previous', so a
    second rollback undoes the first)."""
    if not route.previous:
        raise ConfigError("nothing to roll back to: no previous production version recorded")
    return msgspec.structs.replace(route, production=route.previous, previous=route.production)


async def current_route(kv, cfg: Config, model: str) -> Route:
    """The stored route of ``model``, else the configured one."""
    try:
        entry = await kv.get(route_key(model))
    except KeyNotFoundError:
        return config_route(cfg, model)
    return decode_route(entry.value) if entry.value else config_route(cfg, model)


async def update_route(js, cfg: Config, model: str, change: Callable[[Route], Route]) -> tuple[Route, Route]:
    """Applies ``change`` to the current route of ``model`` and stores the result.

    Returns:
        ``(before, after)``.
    """
    kv = await js.key_value(STATE_BUCKET)
    before = await current_route(kv, cfg, model)
    after = change(before)
    await kv.put(route_key(model), encode_route(after))
    return before, after
