"""Avro single-object encoding (``C3 01`` + CRC-64-AVRO fingerprint + body) for every Tidemark event.

Schemas may reference named types defined in other ``.avsc`` files of the same directory by full name. Each
schema is expanded into a standalone schema (a referenced type is defined at its first use and referred to by
name afterwards, as the Avro spec requires), so its fingerprint is the one any other Avro implementation
computes from the same standalone schema.

A message written with an earlier released version of a schema (``schemas/released/vN``) is known too: it is
decoded with that version and resolved to the current one by Avro's rules (a field added since takes its default),
so a log written before a compatible change stays readable.

Decoding is strict: anything that is not exactly what a standard Avro writer produces for a known schema
raises :class:`DecodeError`. fastavro alone accepts some malformed input (negative enum and union indices,
booleans other than 0 and 1), so every decoded body is re-encoded and compared with the input.
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

MARKER = b"\xc3\x01"
HEADER_SIZE = 10
SCHEMA_DIR = Path(__file__).resolve().parent / "avro"
RELEASED_ROOT = SCHEMA_DIR.parent / "released"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


class DecodeError(ValueError):
    """The bytes are not a valid single-object message of a known schema."""


class UnknownSchemaError(DecodeError):
    """The message's fingerprint belongs to no loaded schema: an error, never a guess."""


class EncodeError(ValueError):
    """The record does not fit the schema."""


class SchemaLoadError(ValueError):
    """A schema directory is inconsistent: unknown type references, duplicate or invalid definitions."""


class Decoded(NamedTuple):
    schema: str
    record: dict[str, Any]


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str:
    return fullname.rpartition(".")[0]


def _collect_definitions(node: Any, namespace: str, into: dict[str, dict[str, Any]], origin: str) -> None:
    """Record every named type defined in ``node`` under its full name, with the name made absolute so the
    definition can be inlined anywhere."""
    if isinstance(node, list):
        for branch in node:
            _collect_definitions(branch, namespace, into, origin)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in _NAMED:
        full = _fullname(node["name"], node.get("namespace", namespace))
        if full in into:
            raise SchemaLoadError(f"{origin}: named type {full} is defined more than once")
        definition = {key: value for key, value in node.items() if key != "namespace"}
        definition["name"] = full
        into[full] = definition
        inner = _namespace_of(full)
        for field in node.get("fields", ()):
            _collect_definitions(field["type"], inner, into, origin)
    elif kind in ("array", "map"):
        _collect_definitions(node.get("items", node.get("values")), namespace, into, origin)
    elif isinstance(kind, dict | list):
        _collect_definitions(kind, namespace, into, origin)


def _standalone(node: Any, namespace: str, defined: set[str], definitions: Mapping[str, dict[str, Any]]) -> Any:
    """``node`` with every reference to a type not yet defined replaced by its definition (first use only)."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _fullname(node, namespace)
        if full in defined:
            return node
        if full not in definitions:
            raise SchemaLoadError(f"unknown type {full}")
        return _standalone(definitions[full], namespace, defined, definitions)
    if isinstance(node, list):
        return [_standalone(branch, namespace, defined, definitions) for branch in node]
    if not isinstance(node, dict):
        raise SchemaLoadError(f"not a schema: {node!r}")
    out = dict(node)
    kind = node.get("type")
    if kind in _NAMED:
        full = _fullname(node["name"], node.get("namespace", namespace))
        defined.add(full)
        inner = _namespace_of(full)
        if "fields" in node:
            out["fields"] = [
                {**field, "type": _standalone(field["type"], inner, defined, definitions)} for field in node["fields"]
            ]
    elif kind == "array":
        out["items"] = _standalone(node["items"], namespace, defined, definitions)
    elif kind == "map":
        out["values"] = _standalone(node["values"], namespace, defined, definitions)
    elif kind not in _PRIMITIVES:
        out["type"] = _standalone(kind, namespace, defined, definitions)
    return out


def _uuid_fields(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """Top-level fields with the uuid logical type: checked by the codec, carried as ``str`` in records."""
    return tuple(
        field["name"]
        for field in schema["fields"]
        if isinstance(field["type"], dict) and field["type"].get("logicalType") == "uuid"
    )


def _without_uuid_logical_type(schema: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """fastavro turns uuid strings into ``UUID`` objects and does not check them on write; the codec checks
    them itself and keeps them as ``str``, which is what keys and causation ids are."""
    out = copy.deepcopy(schema)
    for field in out["fields"]:
        if field["name"] in names:
            field["type"] = "string"
    return out


def fingerprint_of(canonical_form: str) -> bytes:
    """CRC-64-AVRO of a Parsing Canonical Form, as the 8 little-endian bytes of the single-object header."""
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


class _Entry(NamedTuple):
    standalone: dict[str, Any]
    parsed: Any
    fingerprint: bytes
    header: bytes
    uuid_fields: tuple[str, ...]


class SchemaRegistry:
    """Every record schema of a directory of ``.avsc`` files, addressed by full name and by fingerprint.

    Files whose top-level type is not a record (shared enums) only provide named types to the others.
    ``releases`` are directories of earlier released versions: their messages decode too (see the module doc).
    """

    def __init__(self, directory: Path | str, releases: Sequence[Path] = ()) -> None:
        self.directory = Path(directory)
        raw: dict[str, Any] = {}
        for path in sorted(self.directory.glob("*.avsc")):
            try:
                raw[path.name] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SchemaLoadError(f"{path}: {exc}") from exc
        definitions: dict[str, dict[str, Any]] = {}
        for origin, node in raw.items():
            _collect_definitions(node, "", definitions, origin)
        self._entries: dict[str, _Entry] = {}
        self._by_fingerprint: dict[bytes, str] = {}
        for origin, node in raw.items():
            if not isinstance(node, dict) or node.get("type") not in ("record", "error"):
                continue
            name = _fullname(node["name"], node.get("namespace", ""))
            try:
                standalone = _standalone(node, "", set(), definitions)
                uuid_fields = _uuid_fields(standalone)
                parsed = parse_schema(_without_uuid_logical_type(standalone, uuid_fields))
                print_ = fingerprint_of(to_parsing_canonical_form(parse_schema(standalone)))
            except Exception as exc:
                raise SchemaLoadError(f"{origin}: {exc}") from exc
            if print_ in self._by_fingerprint:
                raise SchemaLoadError(f"{origin}: same fingerprint as {self._by_fingerprint[print_]}")
            self._by_fingerprint[print_] = name
            self._entries[name] = _Entry(standalone, parsed, print_, MARKER + print_, uuid_fields)
        self.names: tuple[str, ...] = tuple(sorted(self._entries))
        self._released: dict[tuple[str, str], _Entry] = {}
        self._writers: dict[bytes, _Entry] = {}  # fingerprint -> an earlier version that differs from the current
        for release in releases:
            earlier = SchemaRegistry(release)
            for name, entry in earlier._entries.items():
                self._released[release.name, name] = entry
                if name in self._entries and entry.fingerprint not in self._by_fingerprint:
                    self._by_fingerprint[entry.fingerprint] = name
                    self._writers[entry.fingerprint] = entry

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no schema {name!r} in {self.directory}") from None

    def schema(self, name: str) -> dict[str, Any]:
        """The standalone schema (every named type it uses defined inline), as JSON-ready data."""
        return copy.deepcopy(self._entry(name).standalone)

    def fingerprint(self, name: str) -> bytes:
        return self._entry(name).fingerprint

    def header(self, name: str, release: str | None = None) -> bytes:
        """The 10 bytes every message of this schema starts with (as written by ``release``, e.g. ``v1``)."""
        if release is None:
            return self._entry(name).header
        try:
            return self._released[release, name].header
        except KeyError:
            raise KeyError(f"no schema {name!r} in release {release!r}") from None

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        entry = self._entry(name)
        datum = dict(record)
        for field in entry.uuid_fields:
            datum[field] = _checked_uuid(datum.get(field), field, EncodeError)
        buffer = io.BytesIO()
        buffer.write(entry.header)
        try:
            validate(datum, entry.parsed, raise_errors=True)
            schemaless_writer(buffer, entry.parsed, datum, strict_allow_default=True)
        except Exception as exc:
            raise EncodeError(f"{name}: {exc}") from exc
        return buffer.getvalue()

    def decode(self, data: bytes | None) -> Decoded:
        if data is None:  # a tombstone: consumers hand over whatever the topic holds, and must not crash on it
            raise DecodeError("no value (a tombstone)")
        if not data:
            raise DecodeError("empty value")
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise DecodeError("not an Avro single-object message (marker C3 01 and 8-byte fingerprint)")
        name = self._by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if name is None:
            raise UnknownSchemaError(f"unknown schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()}")
        writer = self._writers.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            return Decoded(name, self._decode_body(name, data))
        self._decode_body(name, data, writer)  # strict against the version that wrote it
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        resolved = cast(dict[str, Any], schemaless_reader(stream, writer.parsed, self._entries[name].parsed))
        return Decoded(name, resolved)

    def decode_as(self, name: str, data: bytes | None) -> dict[str, Any]:
        """Decode a message that must be of schema ``name``."""
        decoded = self.decode(data)
        if decoded.schema != name:
            raise DecodeError(f"expected {name}, got {decoded.schema}")
        return decoded.record

    def _decode_body(self, name: str, data: bytes, writer: _Entry | None = None) -> dict[str, Any]:
        entry = writer or self._entries[name]
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            record = cast(dict[str, Any], schemaless_reader(stream, entry.parsed, None))
            end = stream.tell()
            # The reader does not range-check: a corrupted varint can decode to an int outside 32 bits.
            validate(record, entry.parsed, raise_errors=True)
            echo = io.BytesIO()
            schemaless_writer(echo, entry.parsed, record)
        except Exception as exc:
            raise DecodeError(f"{name}: malformed body: {type(exc).__name__}: {exc}") from exc
        if end != len(data):
            raise DecodeError(f"{name}: {len(data) - end} bytes after the end of the record")
        if echo.getvalue() != memoryview(data)[HEADER_SIZE:]:
            raise DecodeError(f"{name}: body is not the canonical Avro encoding of what it decodes to")
        for field in entry.uuid_fields:
            _checked_uuid(record[field], field, DecodeError)
        return record


def _checked_uuid(value: Any, field: str, error: type[ValueError]) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            uuid.UUID(value)
        except ValueError:
            raise error(f"{field} is not a UUID: {value!r}") from None
        return value
    raise error(f"{field} must be a UUID string, not {type(value).__name__}")


@cache
def get_registry() -> SchemaRegistry:
    """The registry of ``schemas/avro`` (and of every release under ``schemas/released``), loaded on first use."""
    releases = sorted(path for path in RELEASED_ROOT.iterdir() if path.is_dir() and path.name.startswith("v"))
    return SchemaRegistry(SCHEMA_DIR, releases)


def __getattr__(name: str) -> SchemaRegistry:
    """``schemas.codec.REGISTRY``, built lazily so importing the codec reads no files."""
    if name == "REGISTRY":
        return get_registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
