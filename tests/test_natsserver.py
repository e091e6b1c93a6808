import nats
import pytest

from core.config import StreamsConfig
from core.errors import NatsServerError
from core.natsserver import NatsServer, free_port
from core.streams import BARS_STREAM, MD_STREAM, ensure


async def test_embedded_server_keeps_history_across_restart(tmp_path):
    server = NatsServer(tmp_path / "js").start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    first = await ensure(js, StreamsConfig())
    assert "stream MD: created" in first
    await js.publish("md.sim.trade.BTC-USD", b"x", headers={"Nats-Msg-Id": "a"})
    dup = await js.publish("md.sim.trade.BTC-USD", b"x", headers={"Nats-Msg-Id": "a"})
    assert dup.duplicate
    await nc.close()
    server.stop()

    server = NatsServer(tmp_path / "js").start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    again = await ensure(js, StreamsConfig())
    assert "stream MD: updated" in again and "consumer MD/bars-worker: exists" in again
    assert (await js.stream_info(MD_STREAM)).state.messages == 1
    assert (await js.stream_info(BARS_STREAM)).config.duplicate_window == 120
    await nc.close()
    server.stop()


def test_port_in_use_is_a_clear_error(tmp_path, nats_server):
    with pytest.raises(NatsServerError, match="port"):
        NatsServer(tmp_path / "other", port=nats_server.port).start(ready_timeout_s=3)


def test_free_port_never_hands_a_port_out_twice_in_a_row():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
