"""``WS /ws/bars`` and ``WS /ws/signals``: every new bar or signal as a JSON text message, filtered
by the query parameters."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from litestar import Controller, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.di import NamedDependency
from litestar.params import Parameter

from api.errors import BadParameterError
from api.fanout import CLOSED, BarFanout, BarFilter, Fanout, SignalFanout
from api.params import check_timeframe
from api.telemetry import Telemetry
from core.schema import TIMEFRAME_NS

__all__ = ["LiveBarsController", "LiveSignalsController", "CLOSE_BAD_PARAMETER", "CLOSE_GOING_AWAY",
           "CLOSE_TOO_SLOW"]

CLOSE_GOING_AWAY = 1001  # the server shuts down
CLOSE_BAD_PARAMETER = 1008  # policy violation: the close reason names the parameter
CLOSE_TOO_SLOW = 1013  # try again later: the client fell a full queue behind

_Filter = Annotated[str | None, Parameter(description="only bars with this value; any when absent")]


class LiveBarsController(Controller):
    path = "/ws/bars"
    tags = ["live"]

    @websocket("/")
    async def stream(self, socket: WebSocket, fanout: NamedDependency[BarFanout],
                     telemetry: NamedDependency[Telemetry], venue: _Filter = None,
                     symbol: _Filter = None,
                     timeframe: Annotated[str | None, Parameter(
                         description=f"only this timeframe ({', '.join(TIMEFRAME_NS)}); any when absent")] = None,
                     ) -> None:
        """Pushes each bar published on ``bar.>`` from now on as a JSON object (fields of ``BarOut``).

        A bad ``timeframe`` closes the socket with code 1008 and a reason naming the parameter; a
        client that falls too far behind is closed with 1013 and should reload history and reconnect.
        """
        await socket.accept()
        try:
            tf = check_timeframe("timeframe", timeframe, required=False)
        except BadParameterError as exc:
            await _close(socket, CLOSE_BAD_PARAMETER, str(exc))
            return
        await _serve(socket, fanout, BarFilter(venue=venue or None, symbol=symbol or None, tf=tf), telemetry)


class LiveSignalsController(Controller):
    path = "/ws/signals"
    tags = ["live"]

    @websocket("/")
    async def stream(self, socket: WebSocket, signal_fanout: NamedDependency[SignalFanout],
                     telemetry: NamedDependency[Telemetry], symbol: _Filter = None, venue: _Filter = None,
                     timeframe: Annotated[str | None, Parameter(
                         description=f"only this timeframe ({', '.join(TIMEFRAME_NS)}); any when absent")] = None,
                     min_confidence: Annotated[float, Parameter(description="least confidence, 0..100")] = 0.0,
                     action: Annotated[str | None, Parameter(description="only BUY, SELL or HOLD")] = None,
                     max_risk: Annotated[float | None, Parameter(
                         description="largest loss at the stop-loss, percent of the price")] = None,
                     ) -> None:
        """Pushes each new signal from now on as a JSON object (fields of ``SignalOut``, as
        ``GET /api/signals`` returns them), with the same filters as query parameters.

        A bad parameter closes the socket with code 1008 and a reason naming it; a client that
        falls too far behind is closed with 1013 and should reload history and reconnect.
        """
        await socket.accept()
        try:
            tf = check_timeframe("timeframe", timeframe, required=False)
            if not 0.0 <= min_confidence <= 100.0:
                raise BadParameterError("min_confidence", f"must be within 0..100, got {min_confidence}")
            if action not in (None, "", "BUY", "SELL", "HOLD"):
                raise BadParameterError("action", f"one of BUY, SELL, HOLD, got {action!r}")
            if max_risk is not None and not 0.0 <= max_risk <= 100.0:
                raise BadParameterError("max_risk", f"must be within 0..100, got {max_risk}")
        except BadParameterError as exc:
            await _close(socket, CLOSE_BAD_PARAMETER, str(exc))
            return
        flt = BarFilter(venue=venue or None, symbol=symbol or None, tf=tf, min_confidence=min_confidence,
                        action=action or None, max_risk_pct=max_risk)
        await _serve(socket, signal_fanout, flt, telemetry)


async def _serve(socket: WebSocket, fanout: Fanout, flt: BarFilter, telemetry: Telemetry) -> None:
    """Sends what the fan-out queues for this client until it leaves, is too slow, or we stop."""
    with fanout.subscribe(flt) as client:
        telemetry.ws_clients += 1
        gone = asyncio.create_task(_until_disconnect(socket))
        try:
            while True:
                getter = asyncio.ensure_future(client.queue.get())
                await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():  # the client left; whatever was queued for it goes nowhere
                    getter.cancel()
                    return
                text = getter.result()
                if text is CLOSED:
                    await _close(socket, CLOSE_GOING_AWAY, "server shutting down")
                    return
                if client.overflowed:
                    await _close(socket, CLOSE_TOO_SLOW, "too slow: reload history and reconnect")
                    return
                try:
                    await socket.send_text(text)
                except (WebSocketDisconnect, OSError):  # left between the check and the send
                    return
        finally:
            telemetry.ws_clients -= 1
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone


async def _until_disconnect(socket: WebSocket) -> None:
    # Clients have nothing to say; reading is how a closed connection is noticed.
    try:
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, OSError):  # the transport went away without a disconnect event
        return


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    # A close reason may hold at most 123 bytes of UTF-8.
    reason = reason.encode()[:123].decode(errors="ignore")
    with contextlib.suppress(WebSocketDisconnect, OSError):  # the client may have left already
        await socket.close(code=code, reason=reason)
