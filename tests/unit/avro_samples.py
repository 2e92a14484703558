"""Valid random records generated from a schema itself, so every new schema is covered without new code."""

from __future__ import annotations

import datetime
import random
import uuid
from typing import Any

_TEXT = "aZ9 -_.:/€ÄÖß中文𝄞"


def _text(rnd: random.Random) -> str:
    return "".join(rnd.choice(_TEXT) for _ in range(rnd.randint(0, 12)))


def _register(schema: Any, named: dict[str, Any]) -> None:
    """Every named type defined in ``schema``: a union may skip a definition that a later field uses."""
    if isinstance(schema, list):
        for branch in schema:
            _register(branch, named)
    elif isinstance(schema, dict):
        if schema["type"] in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
            named[schema["name"].rpartition(".")[2]] = schema
        for field in schema.get("fields", ()):
            _register(field["type"], named)
        for key in ("items", "values", "type"):
            if isinstance(schema.get(key), dict | list):
                _register(schema[key], named)


def named_types(schema: Any) -> dict[str, Any]:
    """Every named type ``schema`` defines, by full and by short name."""
    named: dict[str, Any] = {}
    _register(schema, named)
    return named


def sample(schema: Any, rnd: random.Random, named: dict[str, Any] | None = None) -> Any:
    """A random datum valid for ``schema`` (a standalone schema as JSON data), in decoded form."""
    if named is None:
        named = named_types(schema)
    if isinstance(schema, list):
        return sample(rnd.choice(schema), rnd, named)
    if isinstance(schema, str):
        # A reference by full name to a type defined without its (inherited) namespace is found by its short name.
        for name in (schema, schema.rpartition(".")[2]):
            if name in named:
                return sample(named[name], rnd, named)
        schema = {"type": schema}
    kind = schema["type"]
    logical = schema.get("logicalType")
    if isinstance(kind, dict | list):
        return sample(kind, rnd, named)
    if logical == "uuid":
        return str(uuid.UUID(int=rnd.getrandbits(128)))
    if logical == "date":
        return datetime.date(1900, 1, 1) + datetime.timedelta(days=rnd.randint(0, 73_000))
    match kind:
        case "null":
            return None
        case "boolean":
            return rnd.random() < 0.5
        case "int":
            return rnd.choice([0, -1, 1, 2**31 - 1, -(2**31), rnd.randint(-(2**31), 2**31 - 1)])
        case "long":
            return rnd.choice([0, -1, 2**63 - 1, -(2**63), rnd.randint(-(2**63), 2**63 - 1)])
        case "float" | "double":
            return rnd.choice([0.0, -0.0, float("inf"), rnd.uniform(-1e9, 1e9)])
        case "bytes":
            return rnd.randbytes(rnd.randint(0, 16))
        case "string":
            return _text(rnd)
        case "enum":
            return rnd.choice(schema["symbols"])
        case "array":
            return [sample(schema["items"], rnd, named) for _ in range(rnd.randint(0, 3))]
        case "map":
            return {_text(rnd): sample(schema["values"], rnd, named) for _ in range(rnd.randint(0, 3))}
        case "record":
            return {field["name"]: sample(field["type"], rnd, named) for field in schema["fields"]}
    raise AssertionError(f"no sample for {schema!r}")
