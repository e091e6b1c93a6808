"""Alerts: which signals reach people, how often, and through which channels.

- **Priority** (`priority`), from the signal's strength, risk and the anomaly model:
  ``high`` for an anomaly veto (the market is behaving unlike anything the model knows) or a sized
  BUY/SELL with confidence >= ``high_confidence``; ``medium`` for a sized BUY/SELL with confidence
  >= ``medium_confidence``; ``low`` for any other sized BUY/SELL; no alert for HOLD or for a view
  the risk rules kept at size 0.
- **De-duplication and aggregation** (`Alerter`): one alert per (venue, symbol, timeframe) per
  ``window_s`` of signal time. Signals inside the window are folded into it (``count``, the
  latest action, the highest priority): a flapping BUY/SELL/BUY alerts once.
- **Routing** by priority to channels given as Apprise URLs (``routes``: priority -> URLs; e.g.
  ``mailto://``, ``slack://``, ``tgram://``, ``json://host/path`` for a webhook): an alert goes to
  the channels listed for its priority.
- **Delivery** (`Deliverer`) runs beside the signal path on its own queue: each channel is tried
  up to ``retries`` times with exponential backoff; every attempt is recorded (`Delivery`); a
  failing channel never blocks signals or other channels.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Callable, Literal

import msgspec

from core.schema import Alert, Signal

__all__ = ["PRIORITIES", "AlertSettings", "Alert", "Delivery", "priority", "Alerter", "Deliverer"]

PRIORITIES: tuple[str, ...] = ("low", "medium", "high")
Priority = Literal["low", "medium", "high"]


class AlertSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Alert rules (``[alerts]`` in config).

    Attributes:
        routes: priority -> Apprise URLs that alerts of that priority go to.
        min_priority: alerts below this are not made.
        window_s: de-duplication window per (venue, symbol, timeframe), in signal time.
        high_confidence, medium_confidence: confidence thresholds of the priorities.
        retries: delivery attempts per channel.
        backoff_s: wait before the second attempt; doubles each time.
        link_base: the dashboard the alert links to.
    """

    routes: dict[str, list[str]] = {}
    min_priority: Priority = "medium"
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    high_confidence: Annotated[float, msgspec.Meta(ge=0, le=100)] = 80.0
    medium_confidence: Annotated[float, msgspec.Meta(ge=0, le=100)] = 65.0
    retries: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    backoff_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    link_base: str = "http://127.0.0.1:8000/"


class Delivery(msgspec.Struct, frozen=True):
    """One delivery attempt of an alert to one channel (the URL without its secrets)."""

    alert_id: str
    channel: str
    attempt: int
    ok: bool
    error: str
    ts_ns: int


def priority(sig: Signal, s: AlertSettings) -> str | None:
    """The alert priority of a signal, or None (see the module docstring)."""
    if sig.veto == "anomaly":
        return "high"
    if sig.action == "HOLD" or not sig.qty:
        return None
    if sig.confidence >= s.high_confidence:
        return "high"
    return "medium" if sig.confidence >= s.medium_confidence else "low"


def _context(sig: Signal) -> dict[str, float | str]:
    ctx: dict[str, float | str] = {"price": sig.price, "confidence": round(sig.confidence, 1),
                                   "stop_loss": sig.stop_loss, "take_profit": sig.take_profit,
                                   "position_size": sig.position_size, "signal": sig.id}
    ctx.update({k: v for k, v in sig.top_features.items()})
    return ctx


class Alerter:
    """Turns signals into alerts, one per series per window (see the module docstring).

    ``on_signal`` returns the new alert, or None when the signal made none or was folded into the
    open one; `open_alerts` holds the folded state (count, action, priority).
    """

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.open_alerts: dict[tuple[str, str, str], Alert] = {}

    def on_signal(self, sig: Signal) -> Alert | None:
        p = priority(sig, self.settings)
        if p is None or PRIORITIES.index(p) < PRIORITIES.index(self.settings.min_priority):
            return None
        key = (sig.venue, sig.symbol, sig.tf)
        cur = self.open_alerts.get(key)
        if cur is not None and sig.start_ns - cur.start_ns < self.settings.window_s * 1e9:
            top = max(cur.priority, p, key=PRIORITIES.index)
            self.open_alerts[key] = msgspec.structs.replace(cur, count=cur.count + 1, action=sig.action, priority=top,
                                                            signal_ids=[*cur.signal_ids, sig.id])
            return None
        what = "anomaly: no new position" if sig.veto == "anomaly" else f"{sig.action} {sig.qty:g}"
        alert = Alert(
            id=f"alert.{sig.venue}.{sig.symbol}.{sig.tf}.{sig.start_ns}", priority=p, venue=sig.venue,
            symbol=sig.symbol, tf=sig.tf, start_ns=sig.start_ns, action=sig.action,
            title=f"[{p}] {sig.symbol} {sig.tf}: {what}",
            body=(f"{sig.action} {sig.symbol} on {sig.venue} ({sig.tf}) at {sig.price:g}, confidence "
                  f"{sig.confidence:.0f}, stop {sig.stop_loss:g}, take profit {sig.take_profit:g}"
                  + (", vetoed by the anomaly model" if sig.veto == "anomaly" else "")),
            context=_context(sig),
            link=f"{self.settings.link_base}?venue={sig.venue}&symbol={sig.symbol}&tf={sig.tf}",
            signal_ids=[sig.id])
        self.open_alerts[key] = alert
        return alert


def _redact(url: str) -> str:
    """The channel without credentials: scheme and host only."""
    scheme, _, rest = url.partition("://")
    host = rest.split("@")[-1].split("/")[0].split("?")[0]
    return f"{scheme}://{host}"


class Deliverer:
    """Delivers alerts to their channels on a queue of its own, with retries and backoff.

    Args:
        settings: routes, retries, backoff.
        record: called with every `Delivery` (ok or not).
        send: ``async send(url, title, body) -> bool``; default Apprise's ``async_notify``.
    """

    def __init__(self, settings: AlertSettings, record: Callable[[Delivery], None],
                 send: Callable | None = None) -> None:
        self.settings = settings
        self.record = record
        self.send = send or _apprise_send
        self.queue: asyncio.Queue[Alert] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def submit(self, alert: Alert) -> None:
        """Queues an alert; returns at once (the signal path never waits for a channel)."""
        self.queue.put_nowait(alert)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def drain(self) -> None:
        """Waits until everything queued has been delivered or given up on."""
        await self.queue.join()

    async def _run(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                urls = self.settings.routes.get(alert.priority, [])
                await asyncio.gather(*(self._deliver(alert, url) for url in urls))
            finally:
                self.queue.task_done()

    async def _deliver(self, alert: Alert, url: str) -> None:
        wait = self.settings.backoff_s
        for attempt in range(1, self.settings.retries + 1):
            error = ""
            try:
                ok = bool(await self.send(url, alert.title, f"{alert.body}\n{alert.link}"))
                if not ok:
                    error = "the channel refused the notification"
            except Exception as exc:  # noqa: BLE001 - any channel failure is recorded, never raised
                ok, error = False, f"{type(exc).__name__}: {exc}"
            self.record(Delivery(alert.id, _redact(url), attempt, ok, error, time.time_ns()))
            if ok:
                return
            if attempt < self.settings.retries:
                await asyncio.sleep(wait)
                wait *= 2


async def _apprise_send(url: str, title: str, body: str) -> bool:
    import apprise

    a = apprise.Apprise()
    if not a.add(url):
        raise ValueError(f"not an Apprise URL: {_redact(url)}")
    return await a.async_notify(body=body, title=title)
