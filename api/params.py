"""Parsing and checking of query parameters shared by the REST and WebSocket handlers.

Times (``start``, ``end``) accept either form:

* ISO-8601: ``2024-05-01``, ``2024-05-01T12:30:00Z``, ``2024-05-01T12:30:00.123456789+02:00``.
  A time without an offset is UTC; up to nine fractional digits are kept (nanoseconds).
* Epoch integers (optionally with a fractional part), whose unit follows from their size:
  below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds, otherwise nanoseconds.
  (1e11 s is the year 5138, 1e14 ms and 1e17 µs are the same instant, so the ranges never collide
  for any date after 1973.)
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal

from api.errors import BadParameterError
from core.schema import TIMEFRAME_NS

__all__ = ["TIME_RULE", "parse_time_ns", "check_timeframe", "check_range"]

TIME_RULE = ("ISO-8601 (UTC when no offset) or an epoch number whose size picks the unit: "
             "< 1e11 seconds, < 1e14 milliseconds, < 1e17 microseconds, else nanoseconds")

_EPOCH_UNITS_NS = ((Decimal("1e11"), 1_000_000_000), (Decimal("1e14"), 1_000_000), (Decimal("1e17"), 1_000))
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_FRACTION = re.compile(r"\.(\d+)")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1


def parse_time_ns(param: str, text: str | None) -> int | None:
    """Parses a time query parameter into epoch nanoseconds (see the module docstring for the rule).

    Args:
        param: the parameter's name, used in the error message.
        text: the raw value; None or empty means "not given".

    Raises:
        BadParameterError: the value is neither form.
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    if _NUMBER.match(text):
        value = Decimal(text)
        unit_ns = next((unit for bound, unit in _EPOCH_UNITS_NS if value < bound), 1)
        ts_ns = int(value * unit_ns)
    else:
        ts_ns = _parse_iso_ns(param, text)
    if not _MIN_NS <= ts_ns <= _MAX_NS:
        raise BadParameterError(param, f"{text!r} is outside the int64 nanosecond range")
    return ts_ns


def _parse_iso_ns(param: str, text: str) -> int:
    # datetime keeps microseconds only: cut the fraction to six digits and add the rest back as ns.
    extra_ns = 0
    match = _FRACTION.search(text)
    if match and len(match.group(1)) > 6:
        digits = match.group(1)[:9].ljust(9, "0")
        extra_ns = int(digits[6:])
        text = text[:match.start()] + "." + digits[:6] + text[match.end():]
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise BadParameterError(param, f"{text!r} is not a time; expected {TIME_RULE}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000 + extra_ns


def check_timeframe(param: str, tf: str | None, required: bool = True) -> str | None:
    """Returns ``tf`` if it is one of `core.schema.TIMEFRAME_NS`.

    Raises:
        BadParameterError: unknown timeframe, or missing while required.
    """
    if tf is None or tf == "":
        if required:
            raise BadParameterError(param, f"required; one of {', '.join(TIMEFRAME_NS)}")
        return None
    if tf not in TIMEFRAME_NS:
        raise BadParameterError(param, f"unknown timeframe {tf!r}; one of {', '.join(TIMEFRAME_NS)}")
    return tf


def check_range(start_ns: int | None, end_ns: int | None) -> None:
    """Rejects an empty-by-construction range, naming ``end``.

    Raises:
        BadParameterError: end is not after start.
    """
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise BadParameterError("end", f"must be after start ({end_ns} <= {start_ns} ns)")
