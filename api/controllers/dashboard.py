"""``GET /``: the dashboard page, its script and style, and the chart library from npm."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

__all__ = ["DashboardController", "WEB_DIR", "CHART_JS", "CHART_JS_URL"]

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
CHART_JS = WEB_DIR / "node_modules" / "lightweight-charts" / "dist" / "lightweight-charts.standalone.production.js"
CHART_JS_URL = "/static/lightweight-charts.standalone.production.js"
# Files of the page itself, by URL name: nothing else under web/ (package.json, node_modules) is served.
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


class DashboardController(Controller):
    path = "/"
    include_in_schema = False

    @get("/", media_type="text/html; charset=utf-8")
    async def index(self) -> Response[bytes]:
        return Response((WEB_DIR / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @get(CHART_JS_URL, media_type="text/javascript; charset=utf-8")
    async def chart_library(self) -> Response[bytes]:
        """The TradingView lightweight-charts standalone build, or a 500 saying how to install it."""
        if not CHART_JS.is_file():
            message = (f"dashboard chart library missing: {CHART_JS} not found. "
                       f"Run `cd {WEB_DIR} && npm install` (`make setup` does it).")
            # Plain text: browsers do not run a script answered with 500, and the page fetches this
            # URL again to show the message in its status line.
            return Response(message.encode(), status_code=500, media_type="text/plain; charset=utf-8")
        return Response(CHART_JS.read_bytes(), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=3600"})

    @get("/static/{name:str}")
    async def asset(self, name: FromPath[str]) -> Response[bytes]:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise NotFoundException(f"no dashboard asset {name!r}")
        return Response((WEB_DIR / name).read_bytes(), media_type=media_type, headers={"Cache-Control": "no-cache"})
