"""Binance spot, combined stream (``/stream?streams=...``): trades, aggregate trades, book ticker."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import msgspec

from core.errors import ParseError, UnknownChannelError, UnknownSymbolError
from edge.adapters.base import Adapter
from edge.events import Event, Quote, Trade

__all__ = ["BinanceAdapter", "QUOTE_ASSETS"]

# Quote assets Binance spot lists symbols against. Matched longest first, so TUSD wins over USD.
QUOTE_ASSETS: tuple[str, ...] = tuple(sorted((
    "USDT", "BUSD", "USDC", "TUSD", "FDUSD", "USDP", "PAX", "UST", "DAI", "VAI", "USD",
    "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "DOT",
    "EUR", "GBP", "TRY", "AUD", "BRL", "RUB", "UAH", "NGN", "BIDR", "IDRT", "ZAR", "PLN",
    "RON", "ARS", "JPY", "MXN", "COP", "CZK",
), key=len, reverse=True))


class _Envelope(msgspec.Struct):
    """Any frame, with the payload kept raw: used only to explain frames _Frame rejects."""

    stream: str = ""
    data: msgspec.Raw = msgspec.Raw()


class _Data(msgspec.Struct):
    """The fields of trade, aggTrade and bookTicker payloads in one type, so one decode suffices.

    ``a``/``b`` mean different things per payload (order ids in trade, the aggregate id in
    aggTrade, best prices as decimal strings in bookTicker): the int|float union with
    strict=False keeps JSON ints exact and turns price strings into floats.
    """

    s: str = ""
    e: str = ""  # event type; spot bookTicker has none
    t: int = 0
    a: int | float | None = None
    b: int | float | None = None
    p: float | None = None
    q: float | None = None
    T: int = 0
    m: bool = False
    B: float | None = None
    A: float | None = None


class _Frame(msgspec.Struct):
    stream: str = ""
    data: _Data | None = None
    # Present on replies to SUBSCRIBE/UNSUBSCRIBE requests: {"result": null, "id": 1}.
    id: Any = None
    # Present on error replies: {"error": {"code": 2, "msg": "..."}, "id": 1}.
    error: Any = None


_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call


class BinanceAdapter(Adapter):
    """Binance spot combined stream.

    ``trade`` and ``aggTrade`` become Trades (``m`` true means the buyer was the maker, so the
    aggressor sold), ``bookTicker`` becomes a Quote. Spot ``bookTicker`` carries no exchange
    time, so the Quote's ``ts_ns`` is the receive time. Depth and kline streams raise
    UnknownChannelError (book data is not normalized yet). Canonical symbols split the venue
    symbol at a known quote-asset suffix (``NKNUSDT`` -> ``NKN-USDT``).
    """

    id: ClassVar[str] = "binance"
    url: ClassVar[str] = "wss://stream.binance.com:9443/stream"
    url_hosts: ClassVar[tuple[str, ...]] = ("data-stream.binance.vision",)
    channels: ClassVar[dict[str, str]] = {"trade": "trade", "aggTrade": "trade", "bookTicker": "quote"}
    # Only raw trades are subscribed: aggTrade would deliver the same fills a second time.
    subscribe_channels: ClassVar[tuple[str, ...]] = ("trade", "bookTicker")

    def __init__(self, symbols=None) -> None:
        super().__init__(symbols)
        # strict=False: Binance sends prices and sizes as decimal strings.
        self._frame = msgspec.json.Decoder(_Frame, strict=False)
        self._envelope = msgspec.json.Decoder(_Envelope)

    def normalize_symbol(self, venue_symbol: str) -> str:
        sym = venue_symbol.upper()
        for quote in QUOTE_ASSETS:
            if sym.endswith(quote) and len(sym) > len(quote):
                return f"{sym[: -len(quote)]}-{quote}"
        raise UnknownSymbolError(f"binance: cannot split {venue_symbol!r} into base and a known quote asset")

    def venue_symbol(self, canonical: str) -> str:
        for venue_sym, canon in self._symbols.items():
            if canon == canonical:
                return venue_sym.lower()
        return canonical.replace("-", "").lower()

    def subscribe(self, symbols: list[str]) -> list[str]:
        """One SUBSCRIBE request for every symbol's trade and bookTicker streams."""
        params = [f"{self.venue_symbol(s)}@{ch}" for s in symbols for ch in self.subscribe_channels]
        return [json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1})]

    def parse(self, raw: str | bytes, recv_ns: int) -> list[Event]:
        """Normalizes one combined-stream frame.

        Example frame (binance_spot.ws.txt)::

            {"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","E":1633998523963,"s":"NKNUSDT",
             "a":15683430,"p":"0.35280000","q":"58.00000000","f":19862790,"l":19862790,
             "T":1633998523963,"m":false,"M":true}}

        gives ``Trade("NKN-USDT", 1633998523963000000, 0.3528, 58.0, 1, 15683430)``.
        """
        try:
            f = self._frame.decode(raw)
        except msgspec.DecodeError as exc:
            raise self._explain(raw, exc) from None
        d = f.data
        if d is None:
            if f.error is not None:
                raise ParseError(f"binance: error reply {f.error!r} to request id {f.id!r}")
            if f.id is not None:
                return self._control()
            raise ParseError("binance: frame is neither a combined-stream message nor a request reply")
        e = d.e
        if e == "trade" or e == "aggTrade":
            if d.p is None or d.q is None or not d.T:
                raise ParseError(f"binance {e}: price, quantity or trade time missing")
            sym = self._symbols.get(d.s) or self.canonical(d.s)
            tid = d.t if e == "trade" else d.a
            if type(tid) is not int:
                raise ParseError(f"binance {e}: trade id {tid!r} is not an integer")
            return [_tuple_new(Trade, (sym, d.T * 1_000_000, d.p, d.q, -1 if d.m else 1, tid))]
        if e == "" and f.stream.endswith("@bookTicker"):
            if d.b is None or d.a is None or d.B is None or d.A is None:
                raise ParseError("binance bookTicker: a best price or size is missing")
            sym = self._symbols.get(d.s) or self.canonical(d.s)
            return [_tuple_new(Quote, (sym, recv_ns, float(d.b), d.B, float(d.a), d.A))]
        channel = self._channel(f.stream)
        if channel in self.channels:
            raise ParseError(f"binance {channel}: payload event type {e!r} does not fit stream {f.stream!r}")
        raise UnknownChannelError(f"binance: channel {channel!r} (stream {f.stream!r}) is not handled")

    @staticmethod
    def _channel(stream: str) -> str:
        return stream[stream.find("@") + 1:]

    def _explain(self, raw: str | bytes, exc: msgspec.DecodeError) -> ParseError:
        """The error for a frame the fast decode rejected: often just a channel we do not handle."""
        try:
            env = self._envelope.decode(raw)
        except msgspec.DecodeError:
            return ParseError(f"binance: undecodable frame: {exc}")
        channel = self._channel(env.stream)
        if env.stream and channel not in self.channels:
            return UnknownChannelError(f"binance: channel {channel!r} (stream {env.stream!r}) is not handled")
        return ParseError(f"binance {channel or 'frame'}: {exc}")
