"""One base error for tickmesh, with subclasses by cause.

Layers translate foreign errors (NATS, ClickHouse, OS) into these where they meet, so a user sees
a clear message instead of a traceback.
"""

__all__ = [
    "TickmeshError",
    "ConfigError",
    "SchemaError",
    "SubjectError",
    "ParseError",
    "UnknownSymbolError",
    "UnknownChannelError",
    "ValidationError",
    "NatsServerError",
    "StoreError",
    "DataFileError",
]


class TickmeshError(Exception):
    """Base of every error tickmesh raises on purpose."""


class ConfigError(TickmeshError):
    """A configuration file or environment override is invalid."""


class SchemaError(TickmeshError):
    """A wire message does not match the schema (bad msgpack, wrong type, ragged columns)."""


class SubjectError(TickmeshError):
    """A subject or subject token is malformed."""


class ParseError(TickmeshError):
    """A venue frame could not be parsed into events."""


class UnknownSymbolError(ParseError):
    """A frame names a symbol the adapter does not know."""


class UnknownChannelError(ParseError):
    """A frame belongs to a channel the adapter does not handle."""


class ValidationError(TickmeshError):
    """An event parsed but failed a sanity check (price, size, time)."""


class NatsServerError(TickmeshError):
    """The embedded nats-server could not be started or did not become ready."""


class StoreError(TickmeshError):
    """ClickHouse could not be reached or refused a statement."""


class DataFileError(TickmeshError):
    """An input data file is missing or not in the expected layout."""


class ModelError(TickmeshError):
    """A model cannot be trained, saved or loaded (bad data, missing weights, unknown name)."""


class TritonServerError(TickmeshError):
    """The embedded tritonserver could not be prepared, started or did not become ready."""


class InferenceError(TickmeshError):
    """An inference request failed: server unreachable, deadline passed, or the model refused the input."""
