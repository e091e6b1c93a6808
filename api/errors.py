"""Errors the API raises on purpose; exception handlers in `api.app` turn them into HTTP answers."""

from __future__ import annotations

from core.errors import TickmeshError

__all__ = ["ApiError", "BadParameterError"]


class ApiError(TickmeshError):
    """Base of every error the API raises on purpose."""


class BadParameterError(ApiError):
    """A query parameter is missing or invalid; answered with 400 naming the parameter.

    Args:
        param: the query parameter's name, as the client spelled it.
        message: what is wrong with it and what would be accepted.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid query parameter {param!r}: {message}")
        self.param = param
