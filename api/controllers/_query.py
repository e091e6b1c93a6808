"""Query parameter declarations shared by the REST controllers (they also document the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated

from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from api.models import ErrorOut
from api.params import TIME_RULE
from core.schema import TIMEFRAME_NS

__all__ = ["Venue", "Symbol", "Timeframe", "Start", "End", "Limit", "MAX_LIMIT", "DEFAULT_LIMIT", "ERROR_RESPONSES"]

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000

Venue = Annotated[str, Parameter(description="venue id, e.g. `kraken`", min_length=1)]
Symbol = Annotated[str, Parameter(description="canonical symbol, e.g. `BTC-USD`", min_length=1)]
Timeframe = Annotated[str, Parameter(description=f"bar timeframe, one of: {', '.join(TIMEFRAME_NS)}",
                                     schema_extra={"enum": list(TIMEFRAME_NS)})]
Start = Annotated[str | None, Parameter(description=f"inclusive lower bound on time: {TIME_RULE}")]
End = Annotated[str | None, Parameter(description=f"exclusive upper bound on time: {TIME_RULE}")]
Limit = Annotated[int, Parameter(
    ge=1, le=MAX_LIMIT,
    description=f"most rows returned (1..{MAX_LIMIT}); when the range holds more, the latest ones")]

ERROR_RESPONSES = {
    400: ResponseSpec(data_container=ErrorOut, description="a query parameter is missing or invalid; `param` names it"),
    503: ResponseSpec(data_container=ErrorOut, description="the store is unavailable"),
}
