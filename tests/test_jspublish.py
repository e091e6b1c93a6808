"""The worker's lean acknowledged publisher against a real nats-server."""

import pytest

from core._jspublish import AckedPublisher, StreamPublishError
from core.config import StreamsConfig
from core.streams import BARS_STREAM, ensure


async def test_bounded_inflight_publishes_are_all_stored(nc):
    js = nc.jetstream()
    await ensure(js, StreamsConfig(), consumers=False)
    out = await AckedPublisher(nc, max_inflight=50).start()
    for i in range(3000):
        await out.publish("bar.1s.sim.BTC-USD", b"x", {"Nats-Msg-Id": f"m{i}"})
        assert out._outstanding <= 50
    await out.wait()
    assert (await js.stream_info(BARS_STREAM)).state.messages == 3000
    # Republishing the same ids is acknowledged as duplicates, not refused.
    for i in range(10):
        await out.publish("bar.1s.sim.BTC-USD", b"x", {"Nats-Msg-Id": f"m{i}"})
    await out.wait()
    assert (await js.stream_info(BARS_STREAM)).state.messages == 3000
    await out.close()


async def test_refusals_and_unstored_subjects_are_errors(nc):
    js = nc.jetstream()
    await ensure(js, StreamsConfig(), consumers=False)
    out = await AckedPublisher(nc).start()
    await out.publish("nowhere.at.all", b"x", {})
    with pytest.raises(StreamPublishError, match="503"):
        await out.wait()
    # Expected-stream mismatch: JetStream answers with an error PubAck.
    await out.publish("bar.1s.sim.BTC-USD", b"x", {"Nats-Expected-Stream": "MD"})
    with pytest.raises(StreamPublishError, match="refused 1 messages"):
        await out.wait()
    await out.close()


async def test_publish_many_frames_messages_as_nats_py_would(nc):
    js = nc.jetstream()
    await ensure(js, StreamsConfig(), consumers=False)
    out = await AckedPublisher(nc, max_inflight=7).start()
    msgs = [("bar.1s.sim.BTC-USD", f"p{i}".encode(), {"Nats-Msg-Id": f"many{i}", "Tm-Note": " a\r\nb "})
            for i in range(40)]
    await out.publish_many(msgs)  # more than max_inflight: sent in slices as acks make room
    await out.wait()
    assert (await js.stream_info(BARS_STREAM)).state.messages == 40
    stored = await js.get_msg(BARS_STREAM, 40)
    assert stored.data == b"p39"
    # Values stripped, CR/LF turned into spaces (nats-py's own publish does the same).
    assert stored.headers["Tm-Note"] == "a  b" and stored.headers["Nats-Msg-Id"] == "many39"
    with pytest.raises(StreamPublishError, match="subject"):
        await out.publish("bar.1s.sim.BTC USD", b"x", {})
    with pytest.raises(StreamPublishError, match="header key"):
        await out.publish("bar.1s.sim.BTC-USD", b"x", {"bad key": "v"})
    await out.close()
