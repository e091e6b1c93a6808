"""Venue adapters, one module per venue, and the constant table of them by id."""

from __future__ import annotations

from urllib.parse import urlsplit

from core.errors import ConfigError
from edge.adapters.base import Adapter
from edge.adapters.binance import BinanceAdapter
from edge.adapters.coinbase import CoinbaseAdapter
from edge.adapters.kraken import KrakenAdapter
from edge.adapters.kraken_rest import KrakenRestAdapter
from edge.adapters.sim import SimVenue
from edge.adapters.tardis import TardisAdapter

__all__ = [
    "ADAPTERS",
    "adapter_for_url",
    "Adapter",
    "BinanceAdapter",
    "CoinbaseAdapter",
    "KrakenAdapter",
    "KrakenRestAdapter",
    "TardisAdapter",
    "SimVenue",
]

ADAPTERS: dict[str, type[Adapter]] = {
    cls.id: cls
    for cls in (BinanceAdapter, CoinbaseAdapter, KrakenAdapter, KrakenRestAdapter, TardisAdapter, SimVenue)
}


def adapter_for_url(url: str) -> type[Adapter]:
    """The adapter class whose feed lives at ``url``, matched by host (port and path ignored).

    Raises:
        ConfigError: no adapter serves that host.
    """
    host = urlsplit(url).hostname or ""
    for cls in ADAPTERS.values():
        if host and (host == urlsplit(cls.url).hostname or host in cls.url_hosts):
            return cls
    known = sorted(h for cls in ADAPTERS.values() for h in (urlsplit(cls.url).hostname, *cls.url_hosts) if h)
    raise ConfigError(f"no adapter for URL {url!r} (host {host!r}); known hosts: {', '.join(known)}")
