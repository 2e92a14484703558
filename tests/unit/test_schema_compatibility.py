"""Every schema stays backward and forward compatible with each of its released versions (DESIGN section 3):
transitively, since a topic kept for ever holds messages of every release, and each must still read."""

from __future__ import annotations

import io
import json
import random
import uuid
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro_samples import named_types, sample
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas.codec import SCHEMA_DIR, SchemaRegistry, get_registry

RELEASED_ROOT = SCHEMA_DIR.parent / "released"


def releases(root: Path = RELEASED_ROOT) -> list[Path]:
    """``released/vN`` in release order."""
    versions = [path for path in root.iterdir() if path.is_dir() and path.name[:1] == "v" and path.name[1:].isdigit()]
    return sorted(versions, key=lambda path: int(path.name[1:]))


CURRENT = get_registry()
RELEASES = {path.name: SchemaRegistry(path) for path in releases()}
RELEASED = RELEASES[releases()[-1].name]


def _enums(schema: Any) -> list[dict[str, Any]]:
    if isinstance(schema, list):
        return [enum for branch in schema for enum in _enums(branch)]
    if not isinstance(schema, dict):
        return []
    found = [schema] if schema.get("type") == "enum" else []
    for field in schema.get("fields", ()):
        found += _enums(field["type"])
    for key in ("items", "values", "type"):
        if isinstance(schema.get(key), dict | list):
            found += _enums(schema[key])
    return found


def incompatibilities(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    """What Apache avro's checker finds, except new enum symbols: every enum of ours has a default, which
    the reader uses for symbols it does not know (the Python checker ignores enum defaults)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    return [
        f"{kind.name} at {location}: {message}"
        for kind, location, message in zip(result.incompatibilities, result.locations, result.messages, strict=True)
        if kind.name != "missing_enum_symbols"
    ]


def _resolves(writer: dict[str, Any], reader: dict[str, Any], seed: str) -> None:
    """A record written with one version reads with the other through fastavro's schema resolution."""
    rnd = random.Random(seed)
    parsed_writer, parsed_reader = parse_schema(writer), parse_schema(reader)
    reader_fields = {field["name"] for field in reader["fields"]}
    for _ in range(10):
        record = sample(writer, rnd)
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed_writer, record)
        buffer.seek(0)
        read = {
            key: str(value) if isinstance(value, uuid.UUID) else value
            for key, value in schemaless_reader(buffer, parsed_writer, parsed_reader).items()
        }
        assert buffer.tell() == len(buffer.getvalue())
        shared = reader_fields & set(record)
        expected = _as_read(record, writer, named_types(writer), _enum_defaults(reader))
        assert {key: read[key] for key in shared} == {key: expected[key] for key in shared}


def _enum_defaults(schema: dict[str, Any]) -> dict[str, tuple[frozenset[str], str]]:
    return {enum["name"]: (frozenset(enum["symbols"]), enum["default"]) for enum in _enums(schema)}


def _as_read(
    value: Any, schema: Any, named: dict[str, Any], reader_enums: dict[str, tuple[frozenset[str], str]]
) -> Any:
    """``value`` as a reader with ``reader_enums`` sees it: a symbol its enum lacks reads as the enum's default."""
    if isinstance(schema, str):
        schema = named.get(schema, named.get(schema.rpartition(".")[2], schema))
    if isinstance(schema, list):  # a union: the branch the value was sampled from is the one it fits
        branches = [b for b in schema if _fits(value, b, named)]
        return _as_read(value, branches[0], named, reader_enums) if branches else value
    if not isinstance(schema, dict):
        return value
    kind = schema["type"]
    if isinstance(kind, dict | list | str) and kind not in _KINDS:
        return _as_read(value, kind, named, reader_enums)
    if kind == "enum" and schema["name"] in reader_enums:
        symbols, default = reader_enums[schema["name"]]
        return value if value in symbols else default
    if kind == "array":
        return [_as_read(item, schema["items"], named, reader_enums) for item in value]
    if kind == "map":
        return {k: _as_read(v, schema["values"], named, reader_enums) for k, v in value.items()}
    if kind == "record":
        return {f["name"]: _as_read(value[f["name"]], f["type"], named, reader_enums) for f in schema["fields"]}
    return value


_KINDS = {
    "null",
    "boolean",
    "int",
    "long",
    "float",
    "double",
    "bytes",
    "string",
    "enum",
    "array",
    "map",
    "record",
    "fixed",
}


def _fits(value: Any, schema: Any, named: dict[str, Any]) -> bool:
    if isinstance(schema, str):
        schema = named.get(schema, named.get(schema.rpartition(".")[2], {"type": schema}))
    kind = schema["type"] if isinstance(schema, dict) else schema
    return {
        "null": value is None,
        "record": isinstance(value, dict),
        "map": isinstance(value, dict),
        "array": isinstance(value, list),
    }.get(kind, value is not None and not isinstance(value, dict | list))


@pytest.mark.parametrize("name", CURRENT.names)
def test_backward_and_forward_compatible_with_every_released_version(name: str) -> None:
    versions = [release for release, registry in RELEASES.items() if name in registry.names]
    if not versions:
        pytest.skip(f"{name} is new: in no release under {RELEASED_ROOT}; it is checked once released")
    current = CURRENT.schema(name)
    for release in versions:
        released = RELEASES[release].schema(name)
        assert incompatibilities(reader=current, writer=released) == [], f"not backward compatible with {release}"
        assert incompatibilities(reader=released, writer=current) == [], f"not forward compatible with {release}"
        _resolves(writer=released, reader=current, seed=f"{release}/{name}")
        _resolves(writer=current, reader=released, seed=f"{release}/{name}")


@pytest.mark.parametrize("release", list(RELEASES))
def test_no_released_schema_was_removed(release: str) -> None:
    assert sorted(set(RELEASES[release].names) - set(CURRENT.names)) == []


@pytest.mark.parametrize("name", CURRENT.names)
def test_every_enum_has_a_default(name: str) -> None:
    for enum in _enums(CURRENT.schema(name)):
        assert enum.get("default") in enum["symbols"], enum["name"]


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "fields": [*schema["fields"], field]}


@pytest.mark.parametrize(
    ("change", "compatible"),
    [
        ({"name": "venue", "type": ["null", "string"], "default": None}, True),
        ({"name": "venue", "type": "string", "default": ""}, True),
        ({"name": "venue", "type": "string"}, False),  # old records have no value for it
    ],
)
def test_the_checker_catches_an_incompatible_change(change: dict[str, Any], compatible: bool) -> None:
    released = RELEASED.schema("tidemark.marketdata.BarClosed")
    changed = _with_field(released, change)
    found = incompatibilities(reader=changed, writer=released) + incompatibilities(reader=released, writer=changed)
    assert (found == []) is compatible


def test_a_new_enum_symbol_is_read_as_the_default_by_old_readers() -> None:
    released = RELEASED.schema("tidemark.marketdata.BarClosed")
    changed = json.loads(json.dumps(released))
    asset_class = next(field for field in changed["fields"] if field["name"] == "asset_class")
    asset_class["type"]["symbols"].append("CRYPTO")
    assert incompatibilities(reader=released, writer=changed) == []
    record = sample(changed, random.Random(0)) | {"asset_class": "CRYPTO"}
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(changed), record)
    buffer.seek(0)
    assert schemaless_reader(buffer, parse_schema(changed), parse_schema(released))["asset_class"] == "UNKNOWN"
