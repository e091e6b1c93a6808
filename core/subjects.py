"""Subject builders and parsers for every NATS subject tickmesh uses.

Symbols may hold characters NATS forbids in a token (``.``, ``*``, ``>``, whitespace) or that
are awkward in one (``/``). Tokens are escaped reversibly: characters outside ``[A-Za-z0-9_-]`` become
``%XX`` per UTF-8 byte, so ``XBT/USD`` travels as ``XBT%2FUSD`` and comes back unchanged.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote

from core.errors import SubjectError
from core.schema import TIMEFRAME_NS

__all__ = [
    "MD_KINDS",
    "escape_token",
    "unescape_token",
    "md",
    "news",
    "bar",
    "feat",
    "pred",
    "sig",
    "alert",
    "dlq",
    "Subject",
    "parse",
]

MD_KINDS = ("trade", "quote", "book")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME = re.compile(r"^[a-z0-9_]+$")  # venues, stages, sources, models, priorities


def escape_token(text: str) -> str:
    """Escapes any text into one valid NATS subject token.

    Raises:
        SubjectError: the text is empty.
    """
    if not text:
        raise SubjectError("empty subject token")
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def unescape_token(token: str) -> str:
    """Inverse of `escape_token`."""
    return unquote(token, errors="strict")


def _name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise SubjectError(f"invalid {kind} {value!r}: use lowercase letters, digits and '_'")
    return value


def _tf(tf: str) -> str:
    if tf not in TIMEFRAME_NS:
        raise SubjectError(f"unknown timeframe {tf!r}; known: {', '.join(TIMEFRAME_NS)}")
    return tf


def md(venue: str, kind: str, symbol: str) -> str:
    """``md.<venue>.<trade|quote|book>.<symbol>``."""
    if kind not in MD_KINDS:
        raise SubjectError(f"unknown market-data kind {kind!r}; known: {', '.join(MD_KINDS)}")
    return f"md.{_name('venue', venue)}.{kind}.{escape_token(symbol)}"


def news(source: str) -> str:
    """``news.<source>``."""
    return f"news.{_name('source', source)}"


def bar(tf: str, venue: str, symbol: str) -> str:
    """``bar.<tf>.<venue>.<symbol>``."""
    return f"bar.{_tf(tf)}.{_name('venue', venue)}.{escape_token(symbol)}"


def feat(tf: str, venue: str, symbol: str) -> str:
    """``feat.<tf>.<venue>.<symbol>``."""
    return f"feat.{_tf(tf)}.{_name('venue', venue)}.{escape_token(symbol)}"


def pred(model: str, venue: str, symbol: str) -> str:
    """``pred.<model>.<venue>.<symbol>``."""
    return f"pred.{_name('model', model)}.{_name('venue', venue)}.{escape_token(symbol)}"


def sig(venue: str, symbol: str) -> str:
    """``sig.<venue>.<symbol>``."""
    return f"sig.{_name('venue', venue)}.{escape_token(symbol)}"


def alert(priority: str, venue: str, symbol: str) -> str:
    """``alert.<priority>.<venue>.<symbol>``."""
    return f"alert.{_name('priority', priority)}.{_name('venue', venue)}.{escape_token(symbol)}"


def dlq(stage: str, venue: str) -> str:
    """``dlq.<stage>.<venue>``."""
    return f"dlq.{_name('stage', stage)}.{_name('venue', venue)}"


class Subject(NamedTuple):
    """A parsed subject. Fields a family does not have are empty strings."""

    family: str
    venue: str = ""
    symbol: str = ""
    kind: str = ""  # md kind, timeframe, model, priority, stage or news source


# family -> (number of tokens after the family, index of kind, venue, symbol within them)
_LAYOUT = {
    "md": (3, 1, 0, 2),
    "bar": (3, 0, 1, 2),
    "feat": (3, 0, 1, 2),
    "pred": (3, 0, 1, 2),
    "alert": (3, 0, 1, 2),
    "sig": (2, None, 0, 1),
    "dlq": (2, 0, 1, None),
    "news": (1, 0, None, None),
}


def parse(subject: str) -> Subject:
    """Parses any tickmesh subject back into its parts, unescaping the symbol.

    Raises:
        SubjectError: the subject is not one of tickmesh's families or has the wrong shape.
    """
    family, _, rest = subject.partition(".")
    layout = _LAYOUT.get(family)
    tokens = rest.split(".") if rest else []
    if layout is None or len(tokens) != layout[0] or not all(tokens):
        raise SubjectError(f"not a tickmesh subject: {subject!r}")
    _, k, v, s = layout
    return Subject(
        family=family,
        venue=tokens[v] if v is not None else "",
        symbol=unescape_token(tokens[s]) if s is not None else "",
        kind=tokens[k] if k is not None else "",
    )
