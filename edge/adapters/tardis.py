"""Tardis.dev normalized ``trades`` CSV: one data line is one frame holding one trade."""

from __future__ import annotations

from typing import ClassVar, Sequence

from core.errors import ParseError, UnknownSymbolError
from edge.adapters.base import Adapter, derive_id
from edge.events import Event, Trade

__all__ = ["TardisAdapter", "TRADES_COLUMNS", "TARDIS_SYMBOLS"]
_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call

TRADES_COLUMNS: tuple[str, ...] = ("exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount")

# Tardis exchange id -> venue symbol -> canonical symbol. Small on purpose: a symbol not listed
# needs an explicit map (``symbols=``), because a perpetual's canonical name cannot be guessed.
TARDIS_SYMBOLS: dict[str, dict[str, str]] = {
    "bitmex": {"XBTUSD": "BTC-USD-PERP", "ETHUSD": "ETH-USD-PERP", "XBTUSDT": "BTC-USDT-PERP"},
    "binance-futures": {"BTCUSDT": "BTC-USDT-PERP", "ETHUSDT": "ETH-USDT-PERP"},
    "deribit": {"BTC-PERPETUAL": "BTC-USD-PERP", "ETH-PERPETUAL": "ETH-USD-PERP"},
}
_SIDES = {"buy": 1, "sell": -1, "unknown": 0}
_INT63_DIGITS = 18  # any 18-digit decimal fits in int64


class TardisAdapter(Adapter):
    """A line of Tardis's ``trades`` CSV schema.

    Timestamps are microseconds since the epoch (``timestamp`` exchange time,
    ``local_timestamp`` Tardis's receive time). ``side`` is the aggressor (``unknown`` -> 0).
    A numeric ``id`` is the trade id; other ids (BitMEX sends UUIDs) are hashed to a
    deterministic int64. ``amount`` is kept as is: for BitMEX XBTUSD it counts USD contracts.
    The adapter's ``venue`` is the Tardis exchange it reads; a line from another exchange
    raises ParseError. The header line itself is a control frame.
    """

    id: ClassVar[str] = "tardis"
    url: ClassVar[str] = "https://datasets.tardis.dev/v1"
    channels: ClassVar[dict[str, str]] = {"trades": "trade"}

    def __init__(self, symbols=None, *, exchange: str = "bitmex", columns: Sequence[str] = TRADES_COLUMNS) -> None:
        """Args:
            symbols: venue symbol -> canonical; None uses TARDIS_SYMBOLS[exchange].
            exchange: the Tardis exchange id of the lines, used as the venue.
            columns: the CSV header's column names, in file order.

        Raises:
            ParseError: a trades column is missing from ``columns``.
        """
        super().__init__(symbols)
        self.venue = exchange
        self._header = ",".join(columns)
        missing = [c for c in TRADES_COLUMNS if c not in columns]
        if missing:
            raise ParseError(f"tardis: columns {missing} missing from header {list(columns)}")
        self._n_columns = len(columns)
        idx = {c: i for i, c in enumerate(columns)}
        self._i = tuple(idx[c] for c in TRADES_COLUMNS)

    def normalize_symbol(self, venue_symbol: str) -> str:
        sym = TARDIS_SYMBOLS.get(self.venue, {}).get(venue_symbol)
        if sym is None:
            raise UnknownSymbolError(f"tardis: no canonical symbol known for {self.venue} {venue_symbol!r}; pass a symbol map")
        return sym

    def subscribe(self, symbols: list[str]) -> list[str]:
        """A file source has nothing to subscribe to: always ``[]``."""
        return []

    def parse(self, raw: str | bytes, recv_ns: int) -> list[Event]:
        """Normalizes one CSV data line.

        Example line (tardis_bitmex_trades_XBTUSD.csv)::

            bitmex,XBTUSD,1583020803145000,1583020803307160,ccc3c1fa-212c-e8b0-1706-9b9c4f3d5ecf,sell,8531.5,2152

        gives ``Trade("BTC-USD-PERP", 1583020803145000000, 8531.5, 2152.0, -1, <id from the UUID>)``.
        """
        line = raw.decode() if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if line == self._header:
            return self._control()
        fields = line.split(",")
        if len(fields) != self._n_columns:
            raise ParseError(f"tardis: line has {len(fields)} fields, header has {self._n_columns}")
        i_ex, i_sym, i_ts, i_local, i_id, i_side, i_px, i_qty = self._i
        exchange, venue_sym, id_text = fields[i_ex], fields[i_sym], fields[i_id]
        if exchange != self.venue:
            raise ParseError(f"tardis: line is from exchange {exchange!r}, this adapter reads {self.venue!r}")
        side = _SIDES.get(fields[i_side])
        if side is None:
            raise ParseError(f"tardis: side {fields[i_side]!r} is not buy/sell/unknown")
        sym = self._symbols.get(venue_sym) or self.canonical(venue_sym)
        try:
            ts_ns = int(fields[i_ts]) * 1000
            int(fields[i_local])  # the reader's receive time: a bad one must not pass silently
            px = float(fields[i_px])
            qty = float(fields[i_qty])
        except ValueError as exc:
            raise ParseError(f"tardis: {exc}") from None
        if id_text.isdigit() and len(id_text) <= _INT63_DIGITS:
            tid = int(id_text)
        else:
            tid = derive_id(f"{exchange}\x1f{venue_sym}\x1f{id_text}")
        return [_tuple_new(Trade, (sym, ts_ns, px, qty, side, tid))]
