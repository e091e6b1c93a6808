import json

import numpy as np
import pytest

from core import subjects
from core.errors import SchemaError, SubjectError
from core.schema import Bar, Codec, DeadLetter, QuoteBatch, TradeBatch, bar_msg_id, batch_msg_id, json_schema, traceparent

CODEC = Codec()  # one codec for this module, as every component builds its own


def _trades(**over):
    cols = dict(ts_ns=[1, 2, 3], recv_ns=[4, 5, 6], px=[10.0, 11.0, 12.5], qty=[1.0, 0.5, 2.0],
                side=[1, -1, 0], trade_id=[100, 101, 102])
    cols.update(over)
    return TradeBatch.from_columns("coinbase", "BTC-USD", **cols)


def test_trade_batch_roundtrip_decodes_to_numpy_columns():
    batch = CODEC.decode(CODEC.encode(_trades()))
    cols = batch.columns()
    assert isinstance(batch, TradeBatch) and len(batch) == 3
    assert cols["px"].dtype == np.float64 and cols["px"].tolist() == [10.0, 11.0, 12.5]
    assert cols["side"].tolist() == [1, -1, 0]
    assert cols["trade_id"].dtype == np.int64


def test_every_wire_type_roundtrips_through_one_decoder():
    msgs = [
        _trades(),
        QuoteBatch.from_columns("kraken", "XBT/USD", ts_ns=[1], recv_ns=[2], bid_px=[1.0], bid_qty=[2.0],
                                ask_px=[1.5], ask_qty=[3.0]),
        Bar("kraken", "BTC-USDT", "1m", 60, 1.0, 2.0, 0.5, 1.5, 10.0, 1.2, 4, 6.0, 4.0),
        DeadLetter("edge", "binance", "non-positive price", raw=b"{}", recv_ns=5),
    ]
    for msg in msgs:
        assert CODEC.decode(CODEC.encode(msg)) == msg


def test_batches_list_their_columns_in_field_order():
    # from_columns passes the columns positionally, in DTYPES order.
    for cls in (TradeBatch, QuoteBatch):
        assert cls.__struct_fields__ == ("venue", "symbol", *cls.DTYPES)
    batch = _trades()
    assert [getattr(batch, name) for name in TradeBatch.DTYPES] == [
        np.array(v, dtype=dt).tobytes() for v, dt in zip(
            ([1, 2, 3], [4, 5, 6], [10.0, 11.0, 12.5], [1.0, 0.5, 2.0], [1, -1, 0], [100, 101, 102]),
            TradeBatch.DTYPES.values())]


def test_ragged_or_garbage_input_is_a_schema_error():
    with pytest.raises(SchemaError, match="ragged"):
        _trades(px=[1.0])
    with pytest.raises(SchemaError, match=r"missing columns \['qty', 'side'\]"):
        TradeBatch.from_columns("coinbase", "BTC-USD", ts_ns=[1], recv_ns=[1], px=[1.0], trade_id=[1])
    with pytest.raises(SchemaError, match="undecodable"):
        CODEC.decode(b"\xc1garbage")
    bad = TradeBatch("x", "y", ts_ns=b"\x00" * 7)
    with pytest.raises(SchemaError, match="multiple of 8"):
        bad.columns()


def test_msg_ids_are_deterministic_and_ignore_receive_time():
    a = _trades()
    b = _trades(recv_ns=[7, 8, 9])
    c = _trades(px=[10.0, 11.0, 12.6])
    assert batch_msg_id("trade", a) == batch_msg_id("trade", b)
    assert batch_msg_id("trade", a) != batch_msg_id("trade", c)
    bar = Bar("kraken", "BTC-USDT", "1m", 60, 1.0, 2.0, 0.5, 1.5, 10.0, 1.2, 4, 6.0, 4.0)
    assert bar_msg_id(bar) == "bar.1m.kraken.BTC-USDT.60"


def test_json_schema_covers_every_wire_type():
    schema = json_schema()
    json.dumps(schema)
    assert set(schema["$defs"]) >= {"TradeBatch", "QuoteBatch", "Bar", "DeadLetter"}


@pytest.mark.parametrize("symbol", ["BTC-USD", "XBT/USD", "a.b*c>d e", "%41", "ü", "BTC-USD-PERP"])
def test_subject_token_escaping_is_reversible(symbol):
    for subject in (subjects.md("kraken", "trade", symbol), subjects.bar("1m", "kraken", symbol),
                    subjects.sig("kraken", symbol)):
        tokens = subject.split(".")
        assert all(t and not set(t) & set("*> \t") for t in tokens)
        assert subjects.parse(subject).symbol == symbol


def test_subject_parse_families():
    assert subjects.parse("md.kraken.quote.XBT%2FUSD") == subjects.Subject("md", "kraken", "XBT/USD", "quote")
    assert subjects.parse("bar.5m.coinbase.BTC-USD") == subjects.Subject("bar", "coinbase", "BTC-USD", "5m")
    assert subjects.parse("dlq.edge.binance") == subjects.Subject("dlq", "binance", "", "edge")
    for bad in ("md.kraken.trade", "foo.bar", "bar.2m.x.y", "md..trade.x"):
        with pytest.raises(SubjectError):
            subjects.parse(bad) if bad != "bar.2m.x.y" else subjects.bar("2m", "x", "y")
    with pytest.raises(SubjectError):
        subjects.md("Kraken", "trade", "x")


def test_traceparent_starts_or_continues_a_w3c_trace():
    first = traceparent()
    version, trace_id, span_id, flags = first.split("-")
    assert (version, flags) == ("00", "01") and len(trace_id) == 32 and len(span_id) == 16
    child = traceparent(first)
    assert child.split("-")[1] == trace_id and child.split("-")[2] != span_id
    assert traceparent("garbage").split("-")[1] != trace_id
