"""fastbars against the generic codec: same bytes out, same verdicts in (``validate=False``: the semantic rules of
``schemas.barchecks`` are tested in test_barchecks.py)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.bars import ASSET_CLASSES, BAR_KINDS, BAR_SCHEMA, EVENT_ID_DTYPE, BarBatch
from schemas.codec import RELEASED_ROOT, DecodeError, EncodeError, SchemaRegistry, get_registry
from schemas.fastbars import decode_bars, encode_bars, to_records
from tests.factories import minute_bars

REGISTRY = get_registry()
SYMBOLS = np.array(["AAPL", "BRK.B", "EURUSD", "MESZ5", "ÄÖÜ", "中国平安", "𝄞X", ""], dtype=object)


def random_batch(seed: int, n: int, interval: str = "1m") -> BarBatch:
    rng = np.random.default_rng(seed)

    def prices() -> np.ndarray:
        return rng.choice([rng.normal(100, 50), 0.0, -0.0, np.inf, 1e-300], size=n) * rng.random(n)

    return BarBatch(
        symbol=SYMBOLS[rng.integers(0, len(SYMBOLS), n)],
        asset_class=rng.integers(0, len(ASSET_CLASSES), n).astype(np.int8),
        interval=interval,
        start_ns=rng.choice([0, -1, 2**63 - 1, -(2**63), 1_755_700_200_000_000_000], n)
        + rng.integers(-(2**20), 2**20, n) * (rng.random(n) < 0.5),
        end_ns=rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64),
        open=prices(),
        high=prices(),
        low=prices(),
        close=prices(),
        volume=rng.random(n) * 10 ** rng.integers(0, 9, n),
        vwap=np.where(rng.random(n) < 0.3, np.nan, rng.normal(100, 10, n)),
        trade_count=np.where(rng.random(n) < 0.3, -1, rng.integers(-(2**40), 2**40, n)),
        regular_session=rng.random(n) < 0.5,
        kind=rng.integers(0, len(BAR_KINDS), n).astype(np.int8),
    )


def event_ids(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = [str(uuid.UUID(int=int(a) << 64 | int(b))) for a, b in rng.integers(0, 2**63, (n, 2))]
    return [i.upper() if k % 7 == 0 else i for k, i in enumerate(ids)]


def reference(batch: BarBatch, ids: list[str], ts_ingest: int, source: str = "polygon") -> list[bytes]:
    return [
        REGISTRY.encode(BAR_SCHEMA, record)
        for record in to_records(batch, source=source, ts_ingest=ts_ingest, event_ids=ids)
    ]


def canonical(ids: list[str]) -> list[bytes]:
    """What ``decode_bars`` returns for ids written as ``ids``: canonical lower-case UUID text."""
    return [str(uuid.UUID(i)).encode() for i in ids]


def assert_ids(batch: BarBatch, ids: list[str]) -> None:
    assert batch.event_id.dtype == EVENT_ID_DTYPE
    assert batch.event_id.tolist() == canonical(ids)


def assert_same_bars(a: BarBatch, b: BarBatch) -> None:
    assert a.interval == b.interval
    assert list(a.symbol) == list(b.symbol)
    for column in ("asset_class", "start_ns", "end_ns", "trade_count", "regular_session", "kind"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column), err_msg=column)
    for column in ("open", "high", "low", "close", "volume", "vwap"):
        assert getattr(a, column).tobytes() == getattr(b, column).tobytes(), column


@pytest.mark.parametrize("seed", range(40))
def test_bytes_equal_the_generic_codec(seed: int) -> None:
    n = [1, 2, 17, 300][seed % 4]
    batch, ids = random_batch(seed, n), event_ids(seed, n)
    ts_ingest = [0, -5, 2**63 - 1, 1_755_700_260_123_456_789][seed % 4]
    assert encode_bars(batch, source="polygon", ts_ingest=ts_ingest, event_ids=ids) == reference(batch, ids, ts_ingest)


@pytest.mark.parametrize("seed", range(10))
def test_round_trip(seed: int) -> None:
    batch, ids = random_batch(seed, 500, interval=["1s", "1m", "1d"][seed % 3]), event_ids(seed, 500)
    payloads = encode_bars(batch, source="replay", ts_ingest=1, event_ids=ids)
    decoded, rows, bad = decode_bars(payloads, validate=False)
    assert bad == []
    assert rows == list(range(500))
    assert_same_bars(decoded, batch)
    assert_ids(decoded, ids)
    for payload in payloads[:20]:
        REGISTRY.decode_as(BAR_SCHEMA, payload)


def test_nan_vwap_and_missing_trade_count_become_null() -> None:
    batch = random_batch(1, 4)
    batch.vwap[:] = np.nan
    batch.trade_count[:] = -1
    ids = event_ids(1, 4)
    for payload in encode_bars(batch, source="s", ts_ingest=0, event_ids=ids):
        record = REGISTRY.decode_as(BAR_SCHEMA, payload)
        assert record["vwap"] is None and record["trade_count"] is None


def test_non_canonical_uuid_spellings_match_the_codec() -> None:
    batch = random_batch(2, 3)
    ids = ["{12345678-1234-5678-1234-567812345678}", "12345678123456781234567812345678", str(uuid.uuid4())]
    assert encode_bars(batch, source="ß", ts_ingest=0, event_ids=ids) == reference(batch, ids, 0, "ß")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, ids: ids.__setitem__(0, "not-a-uuid"), "not a UUID"),
        (lambda b, ids: ids.pop(), "event ids for"),
        (lambda b, ids: b.asset_class.__setitem__(0, 4), "asset_class"),
        (lambda b, ids: b.kind.__setitem__(0, 2), "kind"),
        (lambda b, ids: b.symbol.__setitem__(0, "\ud800"), "UTF-8"),
        (lambda b, ids: b.symbol.__setitem__(0, None), "symbol"),
    ],
)
def test_invalid_batches_raise_encode_error(change, message: str) -> None:  # type: ignore[no-untyped-def]
    batch, ids = random_batch(3, 5), event_ids(3, 5)
    change(batch, ids)
    with pytest.raises(EncodeError, match=message):
        encode_bars(batch, source="s", ts_ingest=0, event_ids=ids)


def test_bad_payloads_are_reported_by_index() -> None:
    batch, ids = random_batch(4, 6), event_ids(4, 6)
    good = encode_bars(batch, source="s", ts_ingest=0, event_ids=ids)
    other = REGISTRY.encode(
        "tidemark.risk.AlertRaised",
        {
            "event_id": str(uuid.uuid4()),
            "ts_event": 1,
            "ts_ingest": 2,
            "source": "risk",
            "kind": "k",
            "severity": "INFO",
            "subject": "s",
            "message": "m",
        },
    )
    minute = encode_bars(random_batch(5, 1, interval="1s"), source="s", ts_ingest=0, event_ids=event_ids(5, 1))
    payloads = [
        good[0],
        b"",
        good[1][:-2],
        other,
        good[2] + b"\x00",
        good[3],
        b"\xc3\x01" + bytes(8),
        minute[0],
    ]
    payloads += [good[4][:-2] + b"\x07" + good[4][-1:], good[5], good[0][:-1] + b"\x04"]
    decoded, rows, bad = decode_bars(payloads, validate=False)
    assert rows == [0, 5, 9]
    assert_same_bars(decoded, batch.take(np.array([0, 3, 5])))
    assert_ids(decoded, [ids[0], ids[3], ids[5]])
    reasons = dict(bad)
    assert sorted(reasons) == [1, 2, 3, 4, 6, 7, 8, 10]
    assert reasons[1] == "empty value"
    assert "truncated" in reasons[2]
    assert reasons[3] == "not a BarClosed: tidemark.risk.AlertRaised"
    assert "after the end" in reasons[4]
    assert "unknown schema fingerprint" in reasons[6]
    assert reasons[7] == "interval '1s' differs from '1m'"
    assert "boolean" in reasons[8]
    assert reasons[10] == "kind enum index out of range"


def test_messages_of_the_released_v1_schema_decode_as_ohlcv_bars() -> None:
    """A log written before ``kind`` existed stays readable, by the fast decoder and the codec alike."""
    batch, ids = random_batch(6, 40), event_ids(6, 40)
    v1 = SchemaRegistry(RELEASED_ROOT / "v1")
    records = to_records(batch, source="polygon", ts_ingest=3, event_ids=ids)
    old = [v1.encode(BAR_SCHEMA, {k: v for k, v in record.items() if k != "kind"}) for record in records]
    assert old[0][:10] == REGISTRY.header(BAR_SCHEMA, "v1") != REGISTRY.header(BAR_SCHEMA)
    decoded, rows, bad = decode_bars(
        [*old, *encode_bars(batch, source="s", ts_ingest=0, event_ids=ids)], validate=False
    )
    assert bad == [] and rows == list(range(80))
    assert_same_bars(decoded.take(slice(0, 40)), replace(batch, kind=np.zeros(40, np.int8)))
    assert_same_bars(decoded.take(slice(40, 80)), batch)
    assert_ids(decoded, ids + ids)
    for payload, record in zip(old, records, strict=True):
        assert REGISTRY.decode_as(BAR_SCHEMA, payload) == record | {"kind": "OHLCV"}


def test_empty_input() -> None:
    batch, rows, bad = decode_bars([])
    assert len(batch) == 0 and rows == [] and bad == []
    assert encode_bars(random_batch(0, 0), source="s", ts_ingest=0, event_ids=[]) == []


VALID = encode_bars(random_batch(9, 50), source="polygon", ts_ingest=7, event_ids=event_ids(9, 50))


def _codec_accepts(payload: bytes) -> bool:
    try:
        REGISTRY.decode_as(BAR_SCHEMA, payload)
    except DecodeError:
        return False
    return True


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_accepts_exactly_what_the_codec_accepts(valid: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(valid) - 1))
    mode = data.draw(st.sampled_from(["replace", "truncate", "insert"]))
    value = bytes([data.draw(st.integers(0, 255))])
    payload = {
        "replace": valid[:at] + value + valid[at + 1 :],
        "truncate": valid[:at],
        "insert": valid[:at] + value + valid[at:],
    }[mode]
    decoded, rows, bad = decode_bars([payload], validate=False)
    assert (rows == [0]) is _codec_accepts(payload), bad
    if rows:
        record = REGISTRY.decode_as(BAR_SCHEMA, payload)
        assert_ids(decoded, [record["event_id"]])
        if record["causation_id"] == "":  # BarBatch cannot carry a causation id
            again = encode_bars(
                decoded,
                source=record["source"],
                ts_ingest=record["ts_ingest"],
                event_ids=[record["event_id"]],
            )
            assert again == [payload] or record["ts_event"] != record["end_ns"] or np.isnan(decoded.vwap[0])


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_random_payloads_never_raise(payloads: list[bytes]) -> None:
    for validate in (False, True):
        decoded, rows, bad = decode_bars(payloads, validate=validate)
        assert len(rows) + len(bad) == len(payloads)
        assert sorted(rows + [i for i, _ in bad]) == list(range(len(payloads)))
        assert len(decoded) == len(rows)


def test_ids_of_every_spelling_and_of_rows_the_codec_rechecks() -> None:
    """Non-canonical spellings and rows with non-ASCII strings take the codec's path; their ids come back all the
    same, canonical, in the row they belong to."""
    batch = random_batch(12, 8)
    ids = [
        "{12345678-1234-5678-1234-567812345678}",
        "12345678123456781234567812345678",
        "urn:uuid:12345678-1234-5678-1234-56781234567A",
        "ABCDEF01-2345-6789-ABCD-EF0123456789",
        *event_ids(12, 4),
    ]
    plain = encode_bars(batch, source="polygon", ts_ingest=0, event_ids=ids)
    accented = encode_bars(batch, source="ß", ts_ingest=0, event_ids=ids)
    decoded, rows, bad = decode_bars([*plain, b"junk", *accented], validate=False)
    assert bad == [(8, "not an Avro single-object message (marker C3 01 and 8-byte fingerprint)")]
    assert rows == [*range(8), *range(9, 17)]
    assert_ids(decoded, ids + ids)


def test_ids_stay_with_their_rows_when_validation_drops_bars() -> None:
    bars = minute_bars(["AAPL", "MSFT", "SPY", "QQQ", "IWM"], [1_755_700_200_000_000_000] * 5)
    bars.close[1] = np.nan  # not a usable bar: dropped by schemas.barchecks
    ids = event_ids(13, 5)
    payloads = encode_bars(bars, source="polygon", ts_ingest=1_755_700_260_000_000_000, event_ids=ids)
    decoded, rows, bad = decode_bars([payloads[0], b"", *payloads[1:]])
    assert rows == [0, 3, 4, 5] and [i for i, _ in bad] == [1, 2]
    assert list(decoded.symbol) == ["AAPL", "SPY", "QQQ", "IWM"]
    assert_ids(decoded, [ids[0], *ids[2:]])


def test_a_decoded_batch_re_encodes_with_its_own_ids() -> None:
    batch = random_batch(14, 60)
    ids = [str(uuid.UUID(i)) for i in event_ids(14, 60)]  # lower case: what the decoder gives back
    payloads = encode_bars(batch, source="polygon", ts_ingest=5, event_ids=ids)
    decoded, _, _ = decode_bars(payloads, validate=False)
    assert encode_bars(decoded, source="polygon", ts_ingest=5) == payloads
    assert encode_bars(batch, source="polygon", ts_ingest=5, event_ids=decoded.event_id) == payloads
    assert [r["event_id"] for r in to_records(decoded, source="polygon", ts_ingest=5)] == ids
    with pytest.raises(EncodeError, match="bar 0 has no event id"):
        encode_bars(batch, source="polygon", ts_ingest=5)
    with pytest.raises(EncodeError, match="no event id"):
        to_records(batch, source="polygon", ts_ingest=5)


def test_batches_keep_their_ids_through_take_and_concat() -> None:
    batch = random_batch(15, 10)
    assert batch.event_id.tolist() == [b""] * 10  # built without ids: unknown
    ids = event_ids(15, 10)
    with_ids = replace(batch, event_id=ids)  # type: ignore[arg-type]  # str (any spelling) is normalised
    assert_ids(with_ids, ids)
    assert_ids(with_ids.take(np.array([7, 2])), [ids[7], ids[2]])
    assert_ids(with_ids.take(np.arange(10) % 3 == 0), ids[::3])
    assert_ids(with_ids.take(slice(4, 6)), ids[4:6])
    assert_ids(BarBatch.concat([with_ids.take(slice(5, 10)), with_ids.take(slice(0, 5))]), ids[5:] + ids[:5])
    assert BarBatch.concat([batch, with_ids]).event_id.tolist() == [b""] * 10 + canonical(ids)
    rows = np.frombuffer(b"".join(canonical(ids)), np.uint8).reshape(10, 36)
    assert_ids(replace(batch, event_id=rows), ids)  # type: ignore[arg-type]  # n x 36 ASCII, as the publisher's
    with pytest.raises(ValueError, match="3 event ids for 10 bars"):
        replace(batch, event_id=canonical(ids)[:3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a UUID"):
        replace(batch, event_id=np.array([b"x" * 37] * 10))
