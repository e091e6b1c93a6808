"""Kraken REST ``GET /0/public/Trades`` responses: one response is one frame of many trades."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import ClassVar

import msgspec

from core.errors import ParseError, UnknownSymbolError
from edge.adapters.base import Adapter
from edge.adapters.kraken import canonical_asset_to_kraken, kraken_asset
from edge.events import Event, Trade

__all__ = ["KrakenRestAdapter", "KRAKEN_QUOTES"]
_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call

# Quote assets of Kraken's REST pair names, matched longest first (USDT before USD).
KRAKEN_QUOTES: tuple[str, ...] = tuple(sorted((
    "USDT", "USDC", "USD", "EUR", "GBP", "CAD", "JPY", "CHF", "AUD", "XBT", "ETH", "DAI", "DOT", "PYUSD",
), key=len, reverse=True))
_TAKER_SIDE = {"b": 1, "s": -1}


class _Response(msgspec.Struct):
    error: list[str] = []
    result: dict[str, msgspec.Raw] | None = None


# [price, volume, time, side, ordertype, misc, trade_id]. The time is a JSON number whose text
# has more digits than a float64 keeps at today's epoch: Decimal keeps the text exactly.
_Row = tuple[float, float, Decimal, str, str, str, int]


class KrakenRestAdapter(Adapter):
    """Kraken's public Trades REST response (venue ``kraken``).

    Every row becomes a Trade: ``trade_id`` from the row, the time (epoch seconds, a JSON
    number) converted exactly to ns from its decimal text, ``b``/``s`` the taker's side. A
    non-empty ``error`` array raises ParseError with Kraken's message. Pair names ``XBTUSDT``
    and legacy ``XXBTZUSD`` become ``BTC-USDT`` / ``BTC-USD``.
    """

    id: ClassVar[str] = "kraken_rest"
    url: ClassVar[str] = "https://api.kraken.com/0/public/Trades"
    channels: ClassVar[dict[str, str]] = {"Trades": "trade"}

    def __init__(self, symbols=None) -> None:
        super().__init__(symbols)
        self.venue = "kraken"
        self._response = msgspec.json.Decoder(_Response)
        # strict=False: price and volume are decimal strings.
        self._rows = msgspec.json.Decoder(list[_Row], strict=False)

    def normalize_symbol(self, venue_symbol: str) -> str:
        sym = venue_symbol.upper()
        if len(sym) == 8 and sym[0] in "XZ" and sym[4] in "XZ":
            # Legacy names prefix each 3-letter asset with X (crypto) or Z (fiat): XXBTZUSD.
            return f"{kraken_asset(sym[1:4])}-{kraken_asset(sym[5:8])}"
        for quote in KRAKEN_QUOTES:
            if sym.endswith(quote) and len(sym) > len(quote):
                return f"{kraken_asset(sym[: -len(quote)])}-{kraken_asset(quote)}"
        raise UnknownSymbolError(f"kraken_rest: cannot split pair {venue_symbol!r} into base and a known quote asset")

    def venue_symbol(self, canonical: str) -> str:
        for venue_sym, canon in self._symbols.items():
            if canon == canonical:
                return venue_sym
        base, _, quote = canonical.partition("-")
        return canonical_asset_to_kraken(base) + canonical_asset_to_kraken(quote)

    def subscribe(self, symbols: list[str]) -> list[str]:
        """A REST source has nothing to subscribe to: always ``[]``."""
        return []

    def parse(self, raw: str | bytes, recv_ns: int) -> list[Event]:
        """Normalizes one whole response.

        Example (kraken_xbtusdt_trades_rest.json, abridged)::

            {"error": [], "result": {"XBTUSDT": [["105433.60000", "0.00027625",
             1762795433.9717445, "b", "l", "", 10218208], ...], "last": "1762820035982277754"}}

        gives ``Trade("BTC-USDT", 1762795433971744500, 105433.6, 0.00027625, 1, 10218208)``, ...
        """
        try:
            resp = self._response.decode(raw)
        except msgspec.DecodeError as exc:
            raise ParseError(f"kraken_rest: undecodable response: {exc}") from None
        if resp.error:
            raise ParseError(f"kraken_rest: Kraken returned error {'; '.join(resp.error)}")
        if resp.result is None:
            raise ParseError("kraken_rest: response has neither an error nor a result")
        out: list[Event] = []
        for pair, rows_raw in resp.result.items():
            if pair == "last":
                continue
            sym = self.canonical(pair)
            try:
                rows = self._rows.decode(rows_raw)
            except msgspec.DecodeError as exc:
                raise ParseError(f"kraken_rest {pair}: {exc}") from None
            for i, (px, qty, time_s, side, _otype, _misc, tid) in enumerate(rows):
                taker = _TAKER_SIDE.get(side)
                if taker is None:
                    raise ParseError(f"kraken_rest {pair} row {i}: side {side!r} is not 'b' or 's'")
                try:
                    ts_ns = int(time_s.scaleb(9))
                except (InvalidOperation, ValueError, OverflowError):
                    raise ParseError(f"kraken_rest {pair} row {i}: bad time {time_s!r}") from None
                out.append(_tuple_new(Trade, (sym, ts_ns, px, qty, taker, tid)))
        if not out:
            # A page with no trades (e.g. polled past the newest): benign, counted like a control frame.
            return self._control()
        return out
