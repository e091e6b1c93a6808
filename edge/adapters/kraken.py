"""Kraken WebSocket API v1 (``wss://ws.kraken.com``): trade and ticker channels."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Union

import msgspec

from core.errors import ParseError, UnknownChannelError, UnknownSymbolError
from edge.adapters.base import Adapter, decimal_to_ns, derive_id
from edge.events import Event, Quote, Trade

__all__ = ["KrakenAdapter", "kraken_asset", "canonical_asset_to_kraken"]
_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call

# Kraken's own asset codes that differ from the common ones.
_ASSETS = {"XBT": "BTC", "XDG": "DOGE"}
_ASSETS_BACK = {v: k for k, v in _ASSETS.items()}
_TAKER_SIDE = {"b": 1, "s": -1}
_CONTROL_EVENTS = frozenset({"heartbeat", "systemStatus", "pong"})


def kraken_asset(code: str) -> str:
    """Common code of a Kraken asset code (``XBT`` -> ``BTC``, ``XDG`` -> ``DOGE``)."""
    return _ASSETS.get(code, code)


def canonical_asset_to_kraken(code: str) -> str:
    """Kraken's code of a common asset code (``BTC`` -> ``XBT``)."""
    return _ASSETS_BACK.get(code, code)


class _Event(msgspec.Struct):
    event: str
    status: str = ""
    errorMessage: str = ""
    pair: str = ""
    channelName: str = ""


class _Ticker(msgspec.Struct):
    # [price, whole lot volume, lot volume]
    a: tuple[float, Any, float]
    b: tuple[float, Any, float]


class KrakenAdapter(Adapter):
    """Kraken WS v1.

    Channel frames are arrays ``[channelID, payload, channelName, pair]``. Trade payloads become
    Trades; Kraken v1 sends no trade id, so one is derived from the pair, the trade's fields and
    its index in the frame (deterministic, so a replay deduplicates). ``b``/``s`` is the taker's
    side. Ticker payloads become Quotes timed by the receive time (a ticker has no exchange
    time); sizes are the lot volumes. ``heartbeat``, ``systemStatus``, ``pong`` and successful
    ``subscriptionStatus`` events are control frames; a failed subscription raises ParseError
    with Kraken's message; book channels raise UnknownChannelError. Pairs ``XBT/USD`` become
    ``BTC-USD``.
    """

    id: ClassVar[str] = "kraken"
    url: ClassVar[str] = "wss://ws.kraken.com"
    channels: ClassVar[dict[str, str]] = {"trade": "trade", "ticker": "quote"}

    def __init__(self, symbols=None) -> None:
        super().__init__(symbols)
        self._frame = msgspec.json.Decoder(Union[_Event, list[msgspec.Raw]])
        self._str = msgspec.json.Decoder(str)
        # Trade rows: [price, volume, time, side, ordertype, misc] (+ trade_id in newer feeds).
        self._trades = msgspec.json.Decoder(list[list[Union[str, int]]])
        self._ticker = msgspec.json.Decoder(_Ticker, strict=False)

    def normalize_symbol(self, venue_symbol: str) -> str:
        base, slash, quote = venue_symbol.partition("/")
        if not (slash and base and quote) or "/" in quote:
            raise UnknownSymbolError(f"kraken: pair {venue_symbol!r} is not BASE/QUOTE")
        return f"{kraken_asset(base)}-{kraken_asset(quote)}"

    def venue_symbol(self, canonical: str) -> str:
        for venue_sym, canon in self._symbols.items():
            if canon == canonical:
                return venue_sym
        base, _, quote = canonical.partition("-")
        return f"{canonical_asset_to_kraken(base)}/{canonical_asset_to_kraken(quote)}"

    def subscribe(self, symbols: list[str]) -> list[str]:
        """One subscribe request per channel (Kraken v1 takes one channel name per request)."""
        pairs = [self.venue_symbol(s) for s in symbols]
        return [json.dumps({"event": "subscribe", "pair": pairs, "subscription": {"name": ch}}) for ch in self.channels]

    def parse(self, raw: str | bytes, recv_ns: int) -> list[Event]:
        """Normalizes one frame.

        Example frame (kraken_trade.ws.txt)::

            [993,[["354.04000000","0.28245396","1618678150.826417","s","m",""],
                  ["353.81000000","1.71754604","1618678150.827816","s","m",""]],"trade","XMR/USD"]

        gives two Trades for ``XMR-USD``, the first ``(1618678150826417000, 354.04, 0.28245396,
        -1, <derived id>)``.
        """
        try:
            frame = self._frame.decode(raw)
        except msgspec.DecodeError as exc:
            raise ParseError(f"kraken: undecodable frame: {exc}") from None
        if type(frame) is _Event:
            return self._event(frame)
        if len(frame) < 4:
            raise ParseError(f"kraken: channel frame has {len(frame)} elements, expected 4")
        try:
            channel = self._str.decode(frame[-2])
            pair = self._str.decode(frame[-1])
        except msgspec.DecodeError as exc:
            raise ParseError(f"kraken: channel frame without channel name/pair: {exc}") from None
        sym = self._symbols.get(pair) or self.canonical(pair)
        try:
            if channel == "trade":
                return self._parse_trades(self._trades.decode(frame[1]), pair, sym)
            if channel == "ticker":
                t = self._ticker.decode(frame[1])
                return [_tuple_new(Quote, (sym, recv_ns, t.b[0], t.b[2], t.a[0], t.a[2]))]
        except (msgspec.DecodeError, ValueError, IndexError, TypeError, AttributeError) as exc:
            raise ParseError(f"kraken {channel} {pair}: {exc}") from None
        raise UnknownChannelError(f"kraken: channel {channel!r} is not handled")

    def _parse_trades(self, rows: list[list[str | int]], pair: str, sym: str) -> list[Event]:
        out: list[Event] = []
        for i, row in enumerate(rows):
            px, qty, ts, side, otype = row[0], row[1], row[2], row[3], row[4]
            taker = _TAKER_SIDE.get(side)
            if taker is None:
                raise ValueError(f"trade {i}: side {side!r} is not 'b' or 's'")
            if len(row) > 6 and type(row[6]) is int:
                tid = row[6]
            else:
                # The index keeps two identical fills in one frame apart.
                tid = derive_id(f"kraken\x1f{pair}\x1f{i}\x1f{px}\x1f{qty}\x1f{ts}\x1f{side}\x1f{otype}")
            out.append(_tuple_new(Trade, (sym, decimal_to_ns(ts), float(px), float(qty), taker, tid)))
        return out

    def _event(self, ev: _Event) -> list[Event]:
        if ev.event in _CONTROL_EVENTS:
            return self._control()
        if ev.event == "subscriptionStatus":
            if ev.status == "error":
                raise ParseError(f"kraken: subscription to {ev.channelName or '?'} {ev.pair} failed: {ev.errorMessage}")
            return self._control()
        if ev.event == "error":
            raise ParseError(f"kraken error: {ev.errorMessage}")
        raise UnknownChannelError(f"kraken: event {ev.event!r} is not handled")
