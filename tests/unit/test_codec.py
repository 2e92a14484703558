"""The codec against the Avro spec, the independent Apache implementation, and hostile input."""

from __future__ import annotations

import contextlib
import io
import json
import random
import uuid
from typing import Any

import avro.io
import avro.schema
import pytest
from avro_samples import sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.events import common_fields, deterministic_event_id
from schemas.codec import (
    HEADER_SIZE,
    MARKER,
    DecodeError,
    EncodeError,
    SchemaLoadError,
    SchemaRegistry,
    UnknownSchemaError,
    get_registry,
)

REGISTRY = get_registry()
NAMES = REGISTRY.names
BAR = "tidemark.marketdata.BarClosed"


def _normalise(value: Any) -> Any:
    """Apache avro returns UUID objects for the uuid logical type; the codec returns strings."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def _without_logical_types(schema: Any) -> Any:
    """The spec's canonical form strips logicalType ([STRIP], as Java does); the Python ``avro`` package keeps
    it (the bug AVRO-4004 fixed for Rust), so its fingerprint is checked on the schema without them."""
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    if isinstance(schema, dict):
        return {key: _without_logical_types(value) for key, value in schema.items() if key != "logicalType"}
    return schema


def _apache_canonical_form(name: str) -> str:
    parsed = avro.schema.parse(json.dumps(_without_logical_types(REGISTRY.schema(name))))
    return str(parsed.canonical_form)


def _samples(name: str, count: int = 25) -> list[dict[str, Any]]:
    rnd = random.Random(name)
    return [sample(REGISTRY.schema(name), rnd) for _ in range(count)]


def _valid_messages() -> list[bytes]:
    return [REGISTRY.encode(name, record) for name in NAMES for record in _samples(name, 3)]


VALID = _valid_messages()


def test_every_event_schema_is_loaded() -> None:
    assert BAR in NAMES
    assert len(NAMES) == 32
    assert "tidemark.strategies.StrategyState" not in NAMES  # shared types are not events


@pytest.mark.parametrize("name", NAMES)
def test_every_schema_round_trips(name: str) -> None:
    for record in _samples(name):
        data = REGISTRY.encode(name, record)
        assert data[:HEADER_SIZE] == MARKER + REGISTRY.fingerprint(name)
        assert REGISTRY.decode(data) == (name, record)
        assert REGISTRY.decode_as(name, data) == record


@pytest.mark.parametrize("name", NAMES)
def test_apache_avro_reads_what_we_write_and_agrees_on_the_fingerprint(name: str) -> None:
    parsed = avro.schema.parse(json.dumps(REGISTRY.schema(name)))
    plain = avro.schema.parse(_apache_canonical_form(name))
    assert plain.fingerprint("CRC-64-AVRO") == REGISTRY.fingerprint(name)
    reader = avro.io.DatumReader(parsed)
    for record in _samples(name):
        data = REGISTRY.encode(name, record)
        decoder = avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:]))
        assert _normalise(reader.read(decoder)) == record


@pytest.mark.parametrize("name", NAMES)
def test_we_read_what_apache_avro_writes(name: str) -> None:
    parsed = avro.schema.parse(json.dumps(REGISTRY.schema(name)))
    writer = avro.io.DatumWriter(parsed)
    for record in _samples(name):
        body = io.BytesIO()
        writer.write(record, avro.io.BinaryEncoder(body))
        assert REGISTRY.decode_as(name, MARKER + REGISTRY.fingerprint(name) + body.getvalue()) == record


def test_fingerprint_matches_an_independent_crc64_avro() -> None:
    """CRC-64-AVRO as the spec defines it, over Apache avro's canonical form."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    for name in NAMES:
        fp = empty
        for byte in _apache_canonical_form(name).encode():
            fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
        assert fp.to_bytes(8, "little") == REGISTRY.fingerprint(name)


def test_shared_types_are_defined_once_per_standalone_schema() -> None:
    text = json.dumps(REGISTRY.schema("tidemark.strategies.TransitionRejected"))
    assert text.count('"name": "tidemark.strategies.StrategyState"') == 1
    assert text.count('"tidemark.strategies.StrategyState"') == 2  # definition, then a reference


def test_fingerprints_are_unique() -> None:
    assert len({REGISTRY.fingerprint(name) for name in NAMES}) == len(NAMES)


def test_defaults_fill_missing_optional_fields() -> None:
    record = {
        **common_fields("risk", 5),
        "kind": "risk.var_breach",
        "severity": "CRITICAL",
        "subject": "acct-1",
        "message": "VaR 99 above limit",
    }
    decoded = REGISTRY.decode_as("tidemark.risk.AlertRaised", REGISTRY.encode("tidemark.risk.AlertRaised", record))
    assert decoded["causation_id"] == ""
    assert decoded["details"] == {}
    assert decoded["to_value"] is None


def _bar(**changes: Any) -> dict[str, Any]:
    record = _samples(BAR, 1)[0]
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"event_id": "not-a-uuid"}, "not a UUID"),
        ({"event_id": 7}, "UUID string"),
        ({"extra_field": 1}, "more fields"),
        ({"asset_class": "CRYPTO"}, "asset_class"),
        ({"open": "1.5"}, "open"),
        ({"start_ns": 2**63}, "start_ns"),
        ({"trade_count": 1.5}, "trade_count"),
        ({"symbol": "\ud800"}, "surrogates"),
        ({"symbol": None}, "symbol"),
    ],
)
def test_invalid_records_raise_encode_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        REGISTRY.encode(BAR, _bar(**changes))


def test_missing_required_field_raises_encode_error() -> None:
    record = _bar()
    del record["symbol"]
    with pytest.raises(EncodeError):
        REGISTRY.encode(BAR, record)


def test_uuid_objects_are_accepted_and_come_back_as_strings() -> None:
    event_id = uuid.uuid4()
    assert REGISTRY.decode_as(BAR, REGISTRY.encode(BAR, _bar(event_id=event_id)))["event_id"] == str(event_id)


def _bar_header() -> bytes:
    return MARKER + REGISTRY.fingerprint(BAR)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "empty value"),
        (b"\xc3", "marker"),
        (b"\xc3\x01\x00", "marker"),
        (b"\xc3\x02" + bytes(8), "marker"),
        (b"\x00\x00" + bytes(8), "marker"),
        (b"\xc3\x01" + bytes(8), "unknown schema fingerprint"),
        (None, "malformed body"),  # header only
        ("huge", "malformed body"),
        ("negative", "malformed body"),
        ("overlong", "malformed body|canonical"),
        ("trailing", "after the end"),
        ("bad-utf8", "malformed body"),
        ("enum-minus-one", "canonical|malformed"),
        ("union-minus-one", "canonical|malformed"),
        ("boolean-two", "canonical"),
        ("kind-two", "malformed body"),
        ("not-a-uuid", "not a UUID"),
    ],
)
def test_malformed_messages_raise_decode_error(data: Any, error: str) -> None:
    good = REGISTRY.encode(BAR, _bar(symbol="AB", vwap=None, trade_count=None, regular_session=True))
    header = _bar_header()
    body = good[HEADER_SIZE:]
    sym = body.index(b"\x04AB")  # symbol length 2, zig-zag 4
    crafted = {
        None: header,
        "huge": header + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f",  # event_id length 2^62 - 1
        "negative": header + b"\x01",  # event_id length -1
        "overlong": header + b"\xc8\x00" + body[1:],  # length 36 in two bytes
        "trailing": good + b"\x00",
        "bad-utf8": header + body[:sym] + b"\x04\xff\xfe" + body[sym + 3 :],
        "enum-minus-one": header + body[: sym + 3] + b"\x01" + body[sym + 4 :],
        "union-minus-one": good[:-4] + b"\x01" + good[-3:],
        "boolean-two": good[:-2] + b"\x02" + good[-1:],
        "kind-two": good[:-1] + b"\x04",  # BarKind has two symbols
        "not-a-uuid": header + b"\x48" + b"x" * 36 + body[37:],
    }
    message = crafted.get(data, data) if not isinstance(data, bytes) else data
    with pytest.raises(DecodeError, match=error):
        REGISTRY.decode(message)


def test_unknown_fingerprint_is_an_error_never_a_guess() -> None:
    good = REGISTRY.encode(BAR, _bar())
    forged = good[:2] + bytes(a ^ 0xFF for a in good[2:10]) + good[10:]
    with pytest.raises(UnknownSchemaError):
        REGISTRY.decode(forged)


def test_decode_as_rejects_another_schema() -> None:
    data = VALID[0]
    other = next(name for name in NAMES if name != REGISTRY.decode(data).schema)
    with pytest.raises(DecodeError, match="expected"):
        REGISTRY.decode_as(other, data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        REGISTRY.decode(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.binary(max_size=200))
def test_known_header_with_random_body_raises_only_decode_error(valid: bytes, body: bytes) -> None:
    data = valid[:HEADER_SIZE] + body
    try:
        decoded = REGISTRY.decode(data)
    except DecodeError:
        return
    assert REGISTRY.encode(decoded.schema, decoded.record) == data  # accepted only if canonical


@settings(max_examples=300)
@given(st.sampled_from(VALID), st.data())
def test_every_truncation_raises_decode_error(valid: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(valid) - 1))
    with pytest.raises(DecodeError):
        REGISTRY.decode(valid[:cut])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_corrupted_messages_decode_to_something_canonical_or_raise_decode_error(
    valid: bytes, data: st.DataObject
) -> None:
    at = data.draw(st.integers(HEADER_SIZE, len(valid) - 1))
    value = data.draw(st.integers(0, 255))
    corrupted = valid[:at] + bytes([value]) + valid[at + 1 :]
    try:
        decoded = REGISTRY.decode(corrupted)
    except DecodeError:
        return
    assert REGISTRY.encode(decoded.schema, decoded.record) == corrupted


@settings(max_examples=200)
@given(st.binary(min_size=8, max_size=8), st.binary(max_size=64))
def test_unknown_fingerprints_raise_unknown_schema_error(fingerprint: bytes, body: bytes) -> None:
    known = {REGISTRY.fingerprint(name) for name in NAMES}
    if fingerprint in known:
        return
    with pytest.raises(UnknownSchemaError):
        REGISTRY.decode(MARKER + fingerprint + body)


def test_registry_resolves_named_types_across_files(tmp_path: Any) -> None:
    (tmp_path / "Side.avsc").write_text(
        json.dumps({"type": "enum", "name": "Side", "namespace": "t.x", "symbols": ["A", "B"], "default": "A"})
    )
    (tmp_path / "Order.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Order",
                "namespace": "t.y",
                "fields": [
                    {"name": "side", "type": "t.x.Side"},
                    {"name": "other", "type": ["null", "t.x.Side"], "default": None},
                ],
            }
        )
    )
    registry = SchemaRegistry(tmp_path)
    assert registry.names == ("t.y.Order",)
    record = {"side": "B", "other": "A"}
    assert registry.decode_as("t.y.Order", registry.encode("t.y.Order", record)) == record


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"A.avsc": {"type": "record", "name": "A", "fields": [{"name": "x", "type": "Missing"}]}},
            "unknown type",
        ),
        (
            {
                "A.avsc": {"type": "enum", "name": "E", "symbols": ["X"]},
                "B.avsc": {"type": "enum", "name": "E", "symbols": ["Y"]},
            },
            "more than once",
        ),
        ({"A.avsc": "{not json"}, "A.avsc"),
    ],
)
def test_inconsistent_schema_directories_are_rejected(tmp_path: Any, files: dict[str, Any], message: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SchemaLoadError, match=message):
        SchemaRegistry(tmp_path)


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="NoSuchEvent"):
        REGISTRY.encode("tidemark.NoSuchEvent", {})


@pytest.mark.parametrize(
    ("parts_a", "parts_b", "same"),
    [
        (("polygon", "AAPL", 1), ("polygon", "AAPL", 1), True),
        (("polygon", "AAPL", 1), ("polygon", "AAPL", 2), False),
        (("a,b",), ("a", "b"), False),
        ((1,), ("1",), False),
        (("ab", "c"), ("a", "bc"), False),
    ],
)
def test_deterministic_event_ids(parts_a: tuple[Any, ...], parts_b: tuple[Any, ...], same: bool) -> None:
    a, b = deterministic_event_id(*parts_a), deterministic_event_id(*parts_b)
    assert uuid.UUID(a).version == 5
    assert (a == b) is same


def test_common_fields() -> None:
    fields = common_fields("synthetic", 42, causation_id="c")
    assert fields["ts_event"] == 42 and fields["source"] == "synthetic" and fields["causation_id"] == "c"
    assert uuid.UUID(fields["event_id"]).version == 4
    assert fields["ts_ingest"] > 1_600_000_000_000_000_000
    assert common_fields("x", 1, event_id="fixed")["event_id"] == "fixed"
