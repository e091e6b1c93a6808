"""Kraken REST ``GET /0/public/Trades`` responses: one response is one frame of many trades.

A response holds up to 1,000 trades, so it is normalized column by column: msgspec decodes the
whole response in one pass (each time kept as its raw JSON text), NumPy converts whole columns
(times exactly, from their decimal text), and the result is one
:class:`~edge.events.TradeColumns` block per pair. A response the columnar path does not accept
as it is (an error, an unexpected side, a time in exponent notation, an id beyond int64, a
malformed row) goes through the original per-row path instead, which raises the precise error
or keeps the odd value, so both paths give the same result.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import ClassVar

import msgspec
import numpy as np

from core.errors import ParseError, UnknownSymbolError
from edge.adapters.base import Adapter, decimals_to_ns
from edge.adapters.kraken import canonical_asset_to_kraken, kraken_asset
from edge.events import Event, FrameEvents, Trade, TradeColumns

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
# The same row for the columnar path: the time stays its raw JSON text, converted all at once.
_RawRow = tuple[float, float, msgspec.Raw, str, str, str, int]
_B, _S = ord("b"), ord("s")


class _FastResponse(msgspec.Struct):
    error: list[str] = []
    # Pair -> rows, and the "last" cursor (a string; an int tolerated).
    result: dict[str, list[_RawRow] | str | int] | None = None


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
        self._fast = msgspec.json.Decoder(_FastResponse, strict=False)

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

    def parse(self, raw: str | bytes, recv_ns: int) -> FrameEvents | list[Event]:
        """Normalizes one whole response into one TradeColumns block per pair.

        Example (kraken_xbtusdt_trades_rest.json, abridged)::

            {"error": [], "result": {"XBTUSDT": [["105433.60000", "0.00027625",
             1762795433.9717445, "b", "l", "", 10218208], ...], "last": "1762820035982277754"}}

        gives a FrameEvents whose first event is
        ``Trade("BTC-USDT", 1762795433971744500, 105433.6, 0.00027625, 1, 10218208)``.
        """
        try:
            resp = self._fast.decode(raw)  # one pass over the text, rows included
        except msgspec.DecodeError:
            return self._parse_per_row(raw)
        if resp.error or resp.result is None:
            return self._parse_per_row(raw)  # raises the error Kraken sent
        out: list[Event | TradeColumns] = []
        for pair, rows in resp.result.items():
            if pair == "last":
                continue
            sym = self.canonical(pair)
            block = self._columns(sym, rows) if type(rows) is list else None
            if block is None:
                return self._parse_per_row(raw)
            if len(block):
                out.append(block)
        if not out:
            # A page with no trades (e.g. polled past the newest): benign, counted like a control frame.
            return self._control()
        return FrameEvents(out)

    def _columns(self, sym: str, rows: list[tuple]) -> TradeColumns | None:
        """The decoded rows as one block, or None where a row needs the per-row path."""
        if not rows:
            return TradeColumns.from_events(sym, ())
        px, qty, time_s, side, _otype, _misc, tid = zip(*rows)
        ts_ns = decimals_to_ns(time_s)
        if ts_ns is None:
            return None
        sides = "".join(side)
        if len(sides) != len(rows) or not sides.isascii():
            return None
        codes = np.frombuffer(sides.encode("ascii"), np.uint8)
        buy = codes == _B
        if not (buy | (codes == _S)).all():
            return None
        try:
            trade_id = np.array(tid, dtype=np.int64)
        except OverflowError:
            return None
        return TradeColumns(sym, ts_ns, np.array(px, dtype=np.float64), np.array(qty, dtype=np.float64),
                            np.where(buy, np.int8(1), np.int8(-1)), trade_id)

    def _parse_per_row(self, raw: str | bytes) -> list[Event]:
        """The exact per-row path: one Trade per row, times through Decimal, precise errors."""
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
            return self._control()
        return out
