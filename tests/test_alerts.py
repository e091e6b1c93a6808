"""Alerts: priorities by hand, a flapping signal alerts once, and delivery through Apprise to a
local webhook receiver started by the test, with retries and a dead channel that blocks nothing."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from core.alerts import AlertSettings, Alerter, Deliverer, priority
from core.natsserver import free_port
from core.schema import Signal, sig_id

MINUTE_NS = 60 * 10**9


def sig(i: int, action: str = "BUY", confidence: float = 70.0, qty: float = 1.0, veto: str = "") -> Signal:
    start = 1_700_000_000 * 10**9 + i * MINUTE_NS
    return Signal(id=sig_id("1m", "kraken", "BTC-USD", start), venue="kraken", symbol="BTC-USD", tf="1m",
                  start_ns=start, action=action, price=30_000.0, confidence=confidence, score=0.3,
                  expected_return=0.0, uncertainty=0.001, risk_reward=1.5, expected_value=0.2, kelly_fraction=0.2,
                  position_fraction=0.05 if qty else 0.0, position_size=qty * 30_000.0, qty=qty,
                  stop_loss=29_400.0, take_profit=30_900.0, contributions={"trend": 0.3},
                  top_features={"rsi_14": 64.0}, model_versions={}, veto=veto)


def test_priority_by_hand():
    s = AlertSettings()
    assert priority(sig(0, confidence=85), s) == "high"
    assert priority(sig(0, confidence=70), s) == "medium"
    assert priority(sig(0, confidence=60), s) == "low"
    assert priority(sig(0, action="HOLD", qty=0.0), s) is None
    assert priority(sig(0, qty=0.0, veto="position_limit"), s) is None  # a view kept at size 0
    assert priority(sig(0, action="HOLD", qty=0.0, veto="anomaly"), s) == "high"


def test_a_flapping_signal_alerts_once_per_window():
    alerter = Alerter(AlertSettings(window_s=300))
    made = [alerter.on_signal(sig(i, action=("BUY", "SELL")[i % 2])) for i in range(5)]
    assert [a is not None for a in made] == [True, False, False, False, False]
    folded = alerter.open_alerts[("kraken", "BTC-USD", "1m")]
    assert folded.count == 5 and folded.action == "BUY" and folded.priority == "medium"
    assert folded.signal_ids == [sig(i).id for i in range(5)]
    later = alerter.on_signal(sig(5))  # 300 s after the first: the window [start, start + 300 s) is over
    assert later is not None and later.count == 1 and "BTC-USD 1m: BUY 1" in later.title
    assert later.context["price"] == 30_000.0 and later.context["rsi_14"] == 64.0
    assert later.link.endswith("?venue=kraken&symbol=BTC-USD&tf=1m")
    assert Alerter(AlertSettings()).on_signal(sig(0, confidence=60)) is None  # below min_priority


class Receiver:
    """A local webhook: records JSON bodies; answers 500 to the first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[dict] = []
        self.fail = fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(500)
                else:
                    outer.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receivers():
    made = []
    yield lambda fail=0: made.append(Receiver(fail)) or made[-1]
    for r in made:
        r.close()


async def test_delivery_to_a_webhook_with_retries_and_a_dead_channel(receivers):
    flaky, steady = receivers(fail=2), receivers()
    dead = f"json://127.0.0.1:{free_port()}/nobody"
    settings = AlertSettings(routes={"medium": [flaky.url, dead, steady.url]}, retries=3, backoff_s=0.05)
    records = []
    deliverer = Deliverer(settings, records.append)
    alert = Alerter(settings).on_signal(sig(0))
    deliverer.submit(alert)
    await asyncio.wait_for(deliverer.drain(), 30)
    for r in (flaky, steady):
        assert len(r.bodies) == 1 and r.bodies[0]["title"] == alert.title and alert.link in r.bodies[0]["message"]
    by_channel: dict[str, list] = {}
    for d in records:
        by_channel.setdefault(d.channel, []).append((d.attempt, d.ok))
    channel = lambda url: url.rsplit("/", 1)[0]  # noqa: E731 - records name the channel without its path
    assert by_channel[channel(flaky.url)] == [(1, False), (2, False), (3, True)]
    assert by_channel[channel(steady.url)] == [(1, True)]
    assert by_channel[channel(dead)] == [(1, False), (2, False), (3, False)]  # given up, recorded, nothing blocked
    assert all(msgspec.json.encode(d) for d in records)
