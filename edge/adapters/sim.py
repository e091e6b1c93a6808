"""``sim``: a simulated venue so the mesh runs end to end without any network.

Not market data: a seeded random walk per symbol, clearly named ``sim`` in every subject. Frames
are JSON objects of this module's own shape::

    {"type":"trade","symbol":"BTC-USD","ts_ns":1700000000000000000,"px":60012.5,"qty":0.0132,
     "side":"buy","id":17}
    {"type":"quote","symbol":"BTC-USD","ts_ns":1700000000000000000,"bid_px":60011.9,
     "bid_qty":1.2,"ask_px":60012.5,"ask_qty":0.8}

``side`` is the aggressor; ``id`` counts up per symbol from 1; ``ts_ns`` is wall-clock time when
the frame is made.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import AsyncIterator, ClassVar, Literal, Mapping, Sequence, Union

import msgspec

from core.errors import ParseError, UnknownChannelError
from edge.adapters.base import Adapter
from edge.events import Event, Quote, Trade

__all__ = ["SimVenue", "SimTradeFrame", "SimQuoteFrame", "DEFAULT_SYMBOLS"]
_tuple_new = tuple.__new__  # builds the event NamedTuples without a Python-level __new__ call

DEFAULT_SYMBOLS: tuple[str, ...] = ("BTC-USD", "ETH-USD", "SOL-USD")
# Rough starting levels so the dashboard looks plausible; unknown bases start at 100.
_START_PX = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0, "DOGE": 0.15, "XRP": 0.6}
_VOL_PER_EVENT = 1e-5  # log-return std per event: about 1 % an hour at the default rates
_SPREAD = 1e-4  # relative bid-ask spread
_SIDES = {"buy": 1, "sell": -1}
# When the generator falls behind schedule it yields to the event loop every this many frames.
_YIELD_EVERY = 256


class SimTradeFrame(msgspec.Struct, tag_field="type", tag="trade"):
    symbol: str
    ts_ns: int
    px: float
    qty: float
    side: Literal["buy", "sell"]
    id: int


class SimQuoteFrame(msgspec.Struct, tag_field="type", tag="quote"):
    symbol: str
    ts_ns: int
    bid_px: float
    bid_qty: float
    ask_px: float
    ask_qty: float


class _TypeOnly(msgspec.Struct):
    type: str = ""


def _tick(px: float) -> float:
    """Price increment: a few significant digits, like real venues."""
    return 10.0 ** (math.floor(math.log10(px)) - 4)


class SimVenue(Adapter):
    """The simulated venue: makes frames with :meth:`frames` and parses them with :meth:`parse`.

    Rates are per symbol: with 3 symbols and ``trades_per_s=200`` the venue emits about 600
    trades/s. Arrivals are Poisson at those rates, drawn from the seeded generator, so the
    sequence of symbols, prices, sizes and sides is reproducible for a seed; only the
    timestamps come from the wall clock.
    """

    id: ClassVar[str] = "sim"
    url: ClassVar[str] = "sim://local"
    channels: ClassVar[dict[str, str]] = {"trade": "trade", "quote": "quote"}

    def __init__(
        self,
        symbols: Mapping[str, str] | Sequence[str] | None = None,
        *,
        trades_per_s: float = 200.0,
        quotes_per_s: float = 50.0,
        seed: int = 7,
    ) -> None:
        """Args:
            symbols: the symbols to simulate (canonical already), or a venue -> canonical map
                whose keys are simulated; None: DEFAULT_SYMBOLS.
            trades_per_s: mean trades per second per symbol.
            quotes_per_s: mean quotes per second per symbol.
            seed: random seed of the walk and the arrivals.

        Raises:
            ValueError: a rate is not positive or there are no symbols.
        """
        if symbols is None:
            symbols = DEFAULT_SYMBOLS
        mapping = dict(symbols) if isinstance(symbols, Mapping) else {s: s for s in symbols}
        super().__init__(mapping)
        if not mapping:
            raise ValueError("sim: no symbols to simulate")
        if not (trades_per_s > 0 and quotes_per_s > 0):
            raise ValueError(f"sim: rates must be positive, got trades_per_s={trades_per_s}, quotes_per_s={quotes_per_s}")
        self.trades_per_s = float(trades_per_s)
        self.quotes_per_s = float(quotes_per_s)
        self.seed = seed
        self._rng = random.Random(seed)
        self._sim_symbols = list(mapping)
        self._mid = {s: _START_PX.get(s.split("-")[0], 100.0) * (1 + self._rng.uniform(-0.01, 0.01))
                     for s in self._sim_symbols}
        self._next_id = dict.fromkeys(self._sim_symbols, 1)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Union[SimTradeFrame, SimQuoteFrame])

    @classmethod
    def from_config(cls, sim_cfg) -> "SimVenue":
        """Builds the venue from a ``core.config.SimConfig`` (symbols, rates, seed)."""
        return cls(list(sim_cfg.symbols), trades_per_s=sim_cfg.trades_per_s,
                   quotes_per_s=sim_cfg.quotes_per_s, seed=sim_cfg.seed)

    def normalize_symbol(self, venue_symbol: str) -> str:  # pragma: no cover - the map is always fixed
        return venue_symbol

    def subscribe(self, symbols: list[str]) -> list[str]:
        """Nothing to send: the simulator produces every configured symbol."""
        return []

    def _step(self, symbol: str) -> tuple[float, float]:
        """Moves the walk one event and returns (bid_px, ask_px) on the price grid."""
        mid = self._mid[symbol] * math.exp(self._rng.gauss(0.0, _VOL_PER_EVENT))
        self._mid[symbol] = mid
        tick = _tick(mid)
        half = max(mid * _SPREAD / 2, tick)
        bid = math.floor((mid - half) / tick) * tick
        ask = math.ceil((mid + half) / tick) * tick
        digits = max(0, 4 - math.floor(math.log10(mid)))
        return round(bid, digits), round(ask, digits)

    def trade_frame(self, ts_ns: int) -> bytes:
        """The next simulated trade frame (random symbol), stamped ``ts_ns``."""
        symbol = self._rng.choice(self._sim_symbols)
        bid, ask = self._step(symbol)
        buy = self._rng.random() < 0.5
        qty = round(max(self._rng.expovariate(1.0) * 1000.0 / self._mid[symbol], 1e-6), 6)
        tid = self._next_id[symbol]
        self._next_id[symbol] = tid + 1
        frame = SimTradeFrame(symbol, ts_ns, ask if buy else bid, qty, "buy" if buy else "sell", tid)
        return self._encoder.encode(frame)

    def quote_frame(self, ts_ns: int) -> bytes:
        """The next simulated top-of-book frame (random symbol), stamped ``ts_ns``."""
        symbol = self._rng.choice(self._sim_symbols)
        bid, ask = self._step(symbol)
        scale = 5000.0 / self._mid[symbol]
        bid_qty = round(self._rng.uniform(0.1, 2.0) * scale, 6)
        ask_qty = round(self._rng.uniform(0.1, 2.0) * scale, 6)
        return self._encoder.encode(SimQuoteFrame(symbol, ts_ns, bid, bid_qty, ask, ask_qty))

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """Yields ``(recv_ns, raw)`` forever, paced at the configured rates.

        The schedule is kept against a monotonic start time, so sleeping late does not slow the
        average rate; if the consumer falls behind, frames come back to back.
        """
        n_sym = len(self._sim_symbols)
        trade_rate = self.trades_per_s * n_sym
        quote_rate = self.quotes_per_s * n_sym
        # A separate generator for arrival times keeps the walk's sequence independent of timing.
        arrivals = random.Random(self.seed + 1)
        start = time.monotonic()
        t_trade = start + arrivals.expovariate(trade_rate)
        t_quote = start + arrivals.expovariate(quote_rate)
        n = 0
        while True:
            due = min(t_trade, t_quote)
            delay = due - time.monotonic()
            n += 1
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            now_ns = time.time_ns()
            if t_trade <= t_quote:
                raw = self.trade_frame(now_ns)
                t_trade += arrivals.expovariate(trade_rate)
            else:
                raw = self.quote_frame(now_ns)
                t_quote += arrivals.expovariate(quote_rate)
            yield now_ns, raw

    def parse(self, raw: str | bytes, recv_ns: int) -> list[Event]:
        """Normalizes one sim frame.

        Example frame::

            {"type":"trade","symbol":"ETH-USD","ts_ns":1700000000000000000,"px":3001.2,
             "qty":0.33,"side":"sell","id":5}

        gives ``Trade("ETH-USD", 1700000000000000000, 3001.2, 0.33, -1, 5)``.
        """
        try:
            f = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            kind = self._frame_type(raw)
            if kind not in ("trade", "quote", None):
                raise UnknownChannelError(f"sim: frame type {kind!r} is not handled") from None
            raise ParseError(f"sim: bad frame: {exc}") from None
        sym = self._symbols.get(f.symbol) or self.canonical(f.symbol)
        if type(f) is SimTradeFrame:
            return [_tuple_new(Trade, (sym, f.ts_ns, f.px, f.qty, _SIDES[f.side], f.id))]
        return [_tuple_new(Quote, (sym, f.ts_ns, f.bid_px, f.bid_qty, f.ask_px, f.ask_qty))]

    @staticmethod
    def _frame_type(raw: str | bytes) -> str | None:
        try:
            return msgspec.json.decode(raw, type=_TypeOnly).type
        except msgspec.DecodeError:
            return None
