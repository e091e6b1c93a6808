"""Coinbase (Pro / Exchange) ws-feed: matches and ticker."""

from __future__ import annotations

import json
from typing import ClassVar

import msgspec

from core.errors import ParseError, UnknownChannelError, UnknownSymbolError
from edge.adapters.base import Adapter, IsoTimeParser
from edge.events import Event, Quote, Trade

__all__ = ["CoinbaseAdapter"]
_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call

# Coinbase's ``side`` is the maker's side; the aggressor took the other one.
_AGGRESSOR = {"sell": 1, "buy": -1}
_CONTROL_TYPES = frozenset({"subscriptions", "heartbeat"})


class _Message(msgspec.Struct):
    type: str
    product_id: str = ""
    trade_id: int = 0
    side: str = ""
    size: float | None = None
    price: float | None = None
    time: str = ""
    best_bid: float | None = None
    best_ask: float | None = None
    # Not in the 2021 frames; newer feeds send them.
    best_bid_size: float = 0.0
    best_ask_size: float = 0.0
    message: str = ""
    reason: str = ""


class CoinbaseAdapter(Adapter):
    """Coinbase ws-feed.

    ``match`` and ``last_match`` become Trades; ``ticker`` becomes a Quote from
    ``best_bid``/``best_ask`` (sizes from ``best_bid_size``/``best_ask_size`` where the feed
    sends them, else 0.0; the 2021 recordings carry none), timed by the ticker's ``time`` (the
    last trade's time) or the receive time if absent. ``subscriptions`` and ``heartbeat`` are
    control frames; level2 frames raise UnknownChannelError; ``error`` frames raise ParseError
    with Coinbase's message. Product ids are already ``BASE-QUOTE``.
    """

    id: ClassVar[str] = "coinbase"
    url: ClassVar[str] = "wss://ws-feed.exchange.coinbase.com"
    url_hosts: ClassVar[tuple[str, ...]] = ("ws-feed.pro.coinbase.com",)
    channels: ClassVar[dict[str, str]] = {"matches": "trade", "ticker": "quote"}

    def __init__(self, symbols=None) -> None:
        super().__init__(symbols)
        # strict=False: prices and sizes arrive as decimal strings.
        self._decoder = msgspec.json.Decoder(_Message, strict=False)
        self._iso_ns = IsoTimeParser().to_ns

    def normalize_symbol(self, venue_symbol: str) -> str:
        base, dash, quote = venue_symbol.partition("-")
        if not (dash and base and quote) or "-" in quote:
            raise UnknownSymbolError(f"coinbase: product id {venue_symbol!r} is not BASE-QUOTE")
        return venue_symbol.upper()

    def subscribe(self, symbols: list[str]) -> list[str]:
        """One subscribe request for the matches and ticker channels of every product."""
        products = [self.venue_symbol(s) for s in symbols]
        return [json.dumps({"type": "subscribe", "product_ids": products, "channels": list(self.channels)})]

    def parse(self, raw: str | bytes, recv_ns: int) -> list[Event]:
        """Normalizes one ws-feed frame.

        Example frame (coinbase.ws.txt)::

            {"type":"match","trade_id":280232,"maker_order_id":"2a0da34e-...",
             "taker_order_id":"3c82abaa-...","side":"sell","size":"985","price":"0.00001305",
             "product_id":"SKL-BTC","sequence":177100030,"time":"2021-04-17T16:43:37.089723Z"}

        gives ``Trade("SKL-BTC", 1618677817089723000, 1.305e-05, 985.0, 1, 280232)``: the
        maker sold, so the aggressor bought.
        """
        try:
            m = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise ParseError(f"coinbase: undecodable frame: {exc}") from None
        kind = m.type
        if kind == "match" or kind == "last_match":
            side = _AGGRESSOR.get(m.side)
            if side is None or m.price is None or m.size is None or not m.time:
                raise ParseError(f"coinbase {kind}: missing or bad side/price/size/time in trade {m.trade_id}")
            sym = self._symbols.get(m.product_id) or self.canonical(m.product_id)
            return [_tuple_new(Trade, (sym, self._iso_ns(m.time), m.price, m.size, side, m.trade_id))]
        if kind == "ticker":
            if m.best_bid is None or m.best_ask is None:
                raise ParseError(f"coinbase ticker for {m.product_id!r} has no best_bid/best_ask")
            sym = self._symbols.get(m.product_id) or self.canonical(m.product_id)
            ts_ns = self._iso_ns(m.time) if m.time else recv_ns
            return [_tuple_new(Quote, (sym, ts_ns, m.best_bid, m.best_bid_size, m.best_ask, m.best_ask_size))]
        if kind in _CONTROL_TYPES:
            return self._control()
        if kind == "error":
            raise ParseError(f"coinbase error: {m.message} {m.reason}".rstrip())
        raise UnknownChannelError(f"coinbase: message type {kind!r} is not handled")
