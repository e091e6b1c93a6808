"""The worker's lean acknowledged publisher against a real nats-server."""

import pytest

from core._jspublish import AckedPublisher, StreamPublishError, _parse_header_block, header_block
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
    # Header values beyond ASCII: the block's length is counted in bytes, and the server reads the
    # id whole (the same id again is a duplicate, another one is not).
    for i in (1, 1, 2):
        await out.publish("bar.1s.sim.BTC-USD", "\u00c4".encode(), {"Nats-Msg-Id": f"\u00e9t\u00e9-{i}", "Tm-Note": "\u00e9"})
    await out.wait()
    assert (await js.stream_info(BARS_STREAM)).state.messages == 42
    assert (await js.get_msg(BARS_STREAM, 42)).data == "\u00c4".encode()
    with pytest.raises(StreamPublishError, match="subject"):
        await out.publish("bar.1s.sim.BTC USD", b"x", {})
    with pytest.raises(StreamPublishError, match="header key"):
        await out.publish("bar.1s.sim.BTC-USD", b"x", {"bad key": "v"})
    with pytest.raises(StreamPublishError, match="header key"):  # after keys already found good
        await out.publish("bar.1s.sim.BTC-USD", b"x", {"Nats-Msg-Id": "m", "Tm-Note\r\n": "v"})
    await out.close()


async def test_header_blocks_are_sent_as_is_and_parsed_back_when_disconnected(nc):
    js = nc.jetstream()
    await ensure(js, StreamsConfig(), consumers=False)
    headers = {"Nats-Msg-Id": "block1", "Tm-Note": " a\r\nb: c ", "Tm-Empty": ""}
    block = header_block(headers)
    assert _parse_header_block(block) == {"Nats-Msg-Id": "block1", "Tm-Note": "a  b: c", "Tm-Empty": ""}
    out = await AckedPublisher(nc).start()
    await out.publish_many([("bar.1s.sim.BTC-USD", b"p1", block), ("bar.1s.sim.BTC-USD", b"p2", headers)])
    await out.wait()
    info = await js.stream_info(BARS_STREAM)
    assert info.state.messages == 1  # the same Nats-Msg-Id either way: the second is a duplicate
    stored = await js.get_msg(BARS_STREAM, info.state.last_seq)
    assert stored.data == b"p1" and stored.headers["Tm-Note"] == "a  b: c"
    await out.close()
