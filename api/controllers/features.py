"""``GET /api/features``: stored feature vectors of one series."""

from __future__ import annotations

import math
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from api.controllers._query import DEFAULT_LIMIT, ERROR_RESPONSES, End, Limit, Start, Symbol, Timeframe, Venue
from api.errors import BadParameterError
from api.models import FeatureRowOut, FeaturesOut
from api.params import check_range, check_timeframe, parse_time_ns
from core.store import Store

__all__ = ["FeaturesController"]

_MAX_NAMES = 500

Names = Annotated[str | None, Parameter(
    description="comma-separated feature names, e.g. `rsi_14,macd_12_26_9.macdhist` (default: every feature); "
                "`tickmesh features --list` prints them")]


class FeaturesController(Controller):
    path = "/api/features"
    tags = ["history"]

    @get("/", summary="Feature vectors of one series", responses=ERROR_RESPONSES)
    async def list_features(self, store: NamedDependency[Store], venue: Venue, symbol: Symbol,
                            timeframe: Timeframe = "1m", names: Names = None, start: Start = None, end: End = None,
                            limit: Limit = DEFAULT_LIMIT) -> FeaturesOut:
        """One row per closed bar with ``start <= start_ns < end``, ascending; the latest ``limit``.

        ``values`` follow ``names``; a feature still warming up (or undefined) is ``null``.
        """
        tf = check_timeframe("timeframe", timeframe)
        start_ns, end_ns = parse_time_ns("start", start), parse_time_ns("end", end)
        check_range(start_ns, end_ns)
        wanted = None
        if names is not None:
            wanted = [n.strip() for n in names.split(",") if n.strip()]
            if not wanted or len(wanted) > _MAX_NAMES:
                raise BadParameterError("names", f"give 1 to {_MAX_NAMES} comma-separated feature names")
        got = await store.run(store.features, venue, symbol, tf, wanted, start_ns, end_ns, limit)
        rows = [FeatureRowOut(start_ns, [None if math.isnan(v) else v for v in vals])
                for start_ns, vals in zip(got["start_ns"], got["values"])]
        return FeaturesOut(venue=venue, symbol=symbol, timeframe=tf, names=got["names"], rows=rows)
