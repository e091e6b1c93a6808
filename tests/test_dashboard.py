"""The dashboard page: served with its scripts, and, where Debian's chromium is installed, drawn for real.

The browser test drives headless chromium over the DevTools protocol: it loads the page against a live
API, waits until the page's own status line says it drew the stored bars, publishes one more bar and
waits until the page drew it from the WebSocket too.
"""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from api.controllers import dashboard
from core.natsserver import free_port
from tests.test_api import WAIT_S, ApiStack, api, eventually, kraken_ohlc_bars, kraken_trades, ws_clients  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,720"]


async def test_page_and_scripts_are_served(api: ApiStack):
    page = await api.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert dashboard.CHART_JS_URL in page.text and "/static/app.js" in page.text and 'id="status"' in page.text

    app_js = await api.http.get("/static/app.js")
    assert app_js.status_code == 200 and "/ws/bars" in app_js.text and "/api/bars" in app_js.text
    assert (await api.http.get("/static/style.css")).status_code == 200

    chart = await api.http.get(dashboard.CHART_JS_URL)
    assert chart.status_code == 200, (
        f"{chart.text[:300]} (the dashboard needs `cd api/web && npm install`, which `make setup` runs)")
    assert chart.headers["content-type"].startswith("text/javascript")
    assert "Lightweight Charts" in chart.text[:500] and "createChart" in chart.text

    # only the page's own files are served from api/web
    for name in ("package.json", "index.html", "..%2Fapp.py"):
        assert (await api.http.get(f"/static/{name}")).status_code == 404, name


async def test_missing_chart_library_is_a_clear_500(api: ApiStack, monkeypatch, tmp_path):
    monkeypatch.setattr(dashboard, "CHART_JS", tmp_path / "node_modules" / "missing.js")
    resp = await api.http.get(dashboard.CHART_JS_URL)
    assert resp.status_code == 500
    assert "npm install" in resp.text and "missing" in resp.text


class DevTools:
    """The least of the Chrome DevTools protocol: call a method, evaluate an expression."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, **params) -> dict:
        self.last_id += 1
        await self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def eval(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


async def page_target(port: int) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
    except (httpx.HTTPError, ValueError):
        return None
    pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
    return pages[0]["webSocketDebuggerUrl"] if pages else None


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
async def test_chromium_draws_history_then_a_live_bar(api: ApiStack, tmp_path):
    bars = kraken_ohlc_bars()
    history, live = bars[:-1], bars[-1]
    await api.publish_trades(kraken_trades())  # /api/symbols lists series that have trades
    await api.publish_bars(history)
    query = {"venue": "kraken", "symbol": "BTC-USDT", "timeframe": "1m", "limit": 10_000}

    async def stored():
        return True if len((await api.http.get("/api/bars", params=query)).json()) == len(history) else None

    await eventually(stored, f"{len(history)} bars stored")

    port = free_port()
    with open(tmp_path / "chromium.log", "wb") as log:
        browser = subprocess.Popen(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
             f"--remote-debugging-port={port}", f"{api.base_url}/?timeframe=1m"],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
    try:
        target = await eventually(lambda: page_target(port), "chromium's DevTools endpoint")
        async with ws_connect(target, max_size=None) as ws:
            tools = DevTools(ws)

            async def status(n: int):
                # null until the page has loaded (the target may still show about:blank)
                state = await tools.eval("(s => s && [s.dataset.bars, s.dataset.state, s.textContent])"
                                         "(document.getElementById('status'))")
                if state and state[1] == "error":
                    pytest.fail(f"the page reports an error: {state[2]}")
                return state if state and state[0] == str(n) else None

            bars_s, state, text = await eventually(lambda: status(len(history)),
                                                   f"the page to draw {len(history)} bars")
            assert state == "ok" and f"{len(history)} bars" in text
            assert await tools.eval("document.querySelectorAll('#chart canvas').length") > 0
            assert await tools.eval("document.getElementById('series').value") == "kraken\u0000BTC-USDT"

            await eventually(lambda: _positive(ws_clients(api)), "the page's WebSocket to subscribe")
            await api.publish_bars([live])
            _, state, text = await eventually(lambda: status(len(bars)), "the page to draw the live bar")
            assert state == "ok"
            assert _utc(live.start_ns // 10**9) in text  # the status line names the newest bar's time
            legend = await tools.eval("document.getElementById('legend').textContent")
            assert "BTC-USDT" in legend and f"{live.close:,.2f}" in legend

            shot = await tools.call("Page.captureScreenshot", format="png")
            (tmp_path / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        browser.terminate()
        try:
            browser.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()


async def _positive(value) -> int | None:
    n = await value
    return n if n > 0 else None


def _utc(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

