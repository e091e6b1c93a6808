"""The venue adapter contract, and the small exact-time helpers every adapter shares.

An adapter turns one raw venue frame into normalized :mod:`edge.events`. It is the only place in
tickmesh where Python loops per event, so the helpers here avoid per-call ``datetime`` work and
float rounding: venue times are parsed from their decimal text straight into integer nanoseconds.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar, Mapping

import numpy as np

from core.errors import ParseError, UnknownSymbolError
from edge.events import Event

__all__ = [
    "Adapter",
    "decimal_to_ns",
    "decimals_to_ns",
    "derive_id",
    "IsoTimeParser",
    "INT63_MASK",
]

INT63_MASK = (1 << 63) - 1
_NS_PAD = "000000000"
_POW10 = tuple(10**k for k in range(10))


def decimal_to_ns(text: str, exponent: int = 0) -> int:
    """Converts decimal text of a time in units of ``10**exponent`` seconds to int nanoseconds.

    Exact: the digits are shifted, never multiplied as floats, so ``"1618678142.557535"`` gives
    ``1618678142557535000`` (a float would land a few hundred ns off at today's epoch).
    Fraction digits beyond nanoseconds are truncated.

    Args:
        text: e.g. ``"1618678142.557535"`` (seconds) or ``"1583020803145000"`` (with exponent -6).
        exponent: 0 for seconds, -3 for milliseconds, -6 for microseconds (down to -9).

    Raises:
        ParseError: the text is not a plain non-negative decimal number.
    """
    whole, _, frac = text.partition(".")
    digits = 9 + exponent
    n = len(frac)
    if whole.isdigit() and (frac.isdigit() or not n):
        if n <= digits:
            return int(whole + frac) * _POW10[digits - n]
        return int(whole + frac[:digits])
    raise ParseError(f"not a decimal time: {text!r}")


# decimals_to_ns reads a window of bytes around each decimal point: 10 digits before it (epoch
# seconds), the point, 9 after it (nanoseconds); each position's weight in ns.
_WINDOW = np.arange(-10, 10)
_WINDOW_NS = np.array([10 ** (8 - int(k)) if k < 0 else (10 ** (9 - int(k)) if k > 0 else 0) for k in _WINDOW],
                      dtype=np.int64)
_DIGIT_0, _DOT, _SPACE = 48, 46, 32


def decimals_to_ns(texts: Sequence[bytes]) -> np.ndarray | None:
    """Vectorized :func:`decimal_to_ns` of many decimal texts of seconds, e.g. ``b"1762795433.9717445"``.

    Exact, with integer NumPy arithmetic: the texts are joined into one buffer and the digits
    around each decimal point are weighted by their power of ten; fraction digits beyond
    nanoseconds are truncated, as in :func:`decimal_to_ns`.

    Args:
        texts: bytes-like objects (``bytes``, ``msgspec.Raw``), one number each.

    Returns:
        int64 ns per text, or None unless every text is plain ``<1-10 digits>.<digits>`` below
        ``9e9`` seconds (a sign, an exponent, no point, a quote...): the caller then takes an
        exact per-text path with its own error messages.
    """
    n = len(texts)
    if not n:
        return np.empty(0, np.int64)
    flat = np.frombuffer(b" ".join(texts), np.uint8)
    dots = np.flatnonzero(flat == _DOT)
    seps = np.flatnonzero(flat == _SPACE)
    if len(dots) != n or len(seps) != n - 1:
        return None
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = seps + 1
    ends = np.empty(n, np.int64)
    ends[:-1] = seps
    ends[-1] = len(flat)
    first = starts - dots  # window offset of the first digit: -(digits before the point)
    stop = ends - dots  # 1 + digits after the point
    # One point per text (both arrays are sorted, so dots[i] must fall inside text i), 1 to 10
    # digits before it, and only digits besides points and separators.
    if not ((first <= -1).all() and (first >= -10).all() and (stop >= 1).all()):
        return None
    if not ((flat - np.uint8(_DIGIT_0) <= 9) | (flat == _DOT) | (flat == _SPACE)).all():
        return None
    ten_digits = first == -10
    if ten_digits.any() and (flat[starts[ten_digits]] > _DIGIT_0 + 8).any():
        return None  # 9e9 s and more would overflow int64 ns
    padded = np.zeros(len(flat) + 20, np.uint8)
    padded[10:-10] = flat
    window = padded[dots[:, None] + (_WINDOW + 10)]
    inside = (_WINDOW >= first[:, None]) & (_WINDOW < stop[:, None]) & (_WINDOW != 0)
    digits = np.where(inside, window - np.uint8(_DIGIT_0), np.uint8(0)).astype(np.int64)
    return digits @ _WINDOW_NS


def derive_id(key: str) -> int:
    """A deterministic non-negative int64 id from a text made of a trade's own fields.

    For venues that send no numeric trade id. The same fields always give the same id, so a
    trade collected twice (reconnect, second region) deduplicates downstream; 63 bits of
    BLAKE2b make a collision between different trades negligible.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & INT63_MASK


# Nanoseconds per unit of the last digit of a fraction with 1..9 digits.
_FRACTION_NS = (0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)


class IsoTimeParser:
    """Parses ISO-8601 UTC times like ``2021-04-17T16:43:37.089723Z`` into int nanoseconds.

    The ``YYYY-MM-DDTHH:MM:SS`` prefix is converted once and cached, so the usual per-event
    cost is a dict lookup and one ``int()`` of the fraction, not a ``datetime`` object. The
    cache is per instance and bounded: it is cleared when it exceeds ``max_entries`` seconds.
    Other offsets than ``Z`` take an exact slow path.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._second_ns: dict[str, int] = {}
        self._max_entries = max_entries

    def to_ns(self, text: str) -> int:
        """Returns the time in ns since the epoch (bind it once: ``iso_ns = parser.to_ns``).

        Raises:
            ParseError: the text is not an ISO-8601 time with a UTC offset.
        """
        base_ns = self._second_ns.get(text[:19])
        if base_ns is not None:
            n = len(text)
            if 21 < n <= 30 and text[19] == "." and text[-1] == "Z":
                frac = text[20:-1]
                if frac.isdigit():
                    return base_ns + int(frac) * _FRACTION_NS[n - 21]
            elif n == 20 and text[19] == "Z":
                return base_ns
        return self._slow(text)

    __call__ = to_ns

    def _slow(self, text: str) -> int:
        try:
            main, dot, rest = text.partition(".")
            frac = ""
            tz = rest
            if dot:
                i = 0
                while i < len(rest) and rest[i].isdigit():
                    i += 1
                frac, tz = rest[:i], rest[i:]
                if not frac:
                    raise ValueError("empty fraction")
            elif len(main) > 19:
                main, tz = main[:19], main[19:]
            if len(main) != 19 or main[10] != "T":
                raise ValueError("not YYYY-MM-DDTHH:MM:SS")
            dt = datetime.fromisoformat(main + ("+00:00" if tz == "Z" else tz))
            if dt.tzinfo is None:
                raise ValueError("no UTC offset")
        except (ValueError, IndexError) as exc:
            raise ParseError(f"not an ISO-8601 time with offset: {text!r} ({exc})") from None
        seconds = calendar.timegm(dt.utctimetuple())
        if tz == "Z":
            if len(self._second_ns) >= self._max_entries:
                self._second_ns.clear()
            self._second_ns[main] = seconds * 1_000_000_000
        return seconds * 1_000_000_000 + int((frac + _NS_PAD)[:9] or 0)


class Adapter:
    """Normalizes one venue's frames into :class:`~edge.events.Trade` / ``Quote`` events.

    Subclasses declare ``id`` (venue token used in subjects), ``url`` (where the live feed is),
    ``channels`` (venue channel -> ``"trade"``/``"quote"``) and implement :meth:`parse`,
    :meth:`subscribe` and the symbol rule :meth:`normalize_symbol`.

    Attributes:
        venue: the venue token written into batches and subjects. Equal to ``id`` except for
            adapters of a vendor or a second API of a venue (``tardis`` reads ``bitmex`` data,
            ``kraken_rest`` is venue ``kraken``).
        control_frames: how many recognized control frames (heartbeats, acks, info) ``parse``
            has returned ``[]`` for.
    """

    id: ClassVar[str]
    url: ClassVar[str]
    channels: ClassVar[dict[str, str]]
    # Further hosts whose feeds (e.g. older recordings) this adapter reads; see adapter_for_url.
    url_hosts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, symbols: Mapping[str, str] | None = None) -> None:
        """Args:
            symbols: venue symbol -> canonical symbol. With a map, a venue symbol outside it
                raises UnknownSymbolError; with None the adapter's own normalization rule applies.
        """
        self.venue: str = self.id
        self.control_frames = 0
        self._fixed_symbols = symbols is not None
        # Also the cache of the normalization rule: one dict lookup per event on the hot path.
        self._symbols: dict[str, str] = dict(symbols) if symbols is not None else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(venue={self.venue!r}, control_frames={self.control_frames})"

    def canonical(self, venue_symbol: str) -> str:
        """Canonical ``BASE-QUOTE`` symbol of a venue symbol.

        Raises:
            UnknownSymbolError: not in the configured map, or the rule cannot normalize it.
        """
        sym = self._symbols.get(venue_symbol)
        if sym is not None:
            return sym
        if self._fixed_symbols:
            raise UnknownSymbolError(f"{self.id}: symbol {venue_symbol!r} is not in the configured symbol map")
        sym = self._symbols[venue_symbol] = self.normalize_symbol(venue_symbol)
        return sym

    def normalize_symbol(self, venue_symbol: str) -> str:
        """The adapter's rule from a venue symbol to a canonical one.

        Raises:
            UnknownSymbolError: the symbol does not follow the venue's convention.
        """
        raise NotImplementedError

    def venue_symbol(self, canonical: str) -> str:
        """The venue's spelling of a canonical symbol (inverse of :meth:`canonical`)."""
        for venue_sym, canon in self._symbols.items():
            if canon == canonical:
                return venue_sym
        return canonical

    def subscribe(self, symbols: list[str]) -> list[str]:
        """JSON texts to send after connecting, subscribing to every ``channels`` kind.

        Args:
            symbols: canonical symbols (``BTC-USD``); the adapter spells them the venue's way.
        """
        raise NotImplementedError

    def parse(self, raw: str | bytes, recv_ns: int) -> Sequence[Event]:
        """Normalizes one frame.

        Returns:
            The frame's events, or ``[]`` for a recognized control frame (also counted in
            ``control_frames``). Usually a list; an adapter of bulk frames may return a
            :class:`~edge.events.FrameEvents` whose ``items`` hold columnar
            :class:`~edge.events.TradeColumns` blocks (still a sequence of events to its callers).

        Raises:
            UnknownChannelError: the frame belongs to a channel this adapter does not handle.
            UnknownSymbolError: the frame names a symbol the adapter cannot normalize.
            ParseError: anything else that prevents normalizing (bad JSON, missing field).
        """
        raise NotImplementedError

    def _control(self) -> list[Event]:
        self.control_frames += 1
        return []
