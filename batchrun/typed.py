"""Typed columns of a structured output: a JSON Schema's top-level properties → Arrow types,
derived before the run, so every row (error rows too, with nulls) has the same types.

string → string, integer → int64, number → float64, boolean → bool, enum (of strings) →
string, array → list of its items' type, object with properties → struct. Anything else (a
union of types, ``anyOf``, an object without properties, an array without ``items``) is
kept as JSON text in a string column. Local ``$ref``s (``#/$defs/…``) are followed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchrun import fastjson
from batchrun.errors import Mismatch

#: How deep nested schemas are typed; deeper (or recursive) ones are JSON text.
MAX_DEPTH = 16
#: Prefix of a property's column whose name an input or result column takes.
OUTPUT_PREFIX = "output_"
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Kind:
    """How one schema node is held: ``tag`` is string/int/float/bool/json/list/struct."""

    tag: str
    arrow: pa.DataType
    items: Kind | None = None
    fields: tuple[tuple[str, Kind], ...] = ()


_STRING = Kind("string", pa.string())
_JSON = Kind("json", pa.string())
_SCALARS = {
    "string": _STRING,
    "integer": Kind("int", pa.int64()),
    "number": Kind("float", pa.float64()),
    "boolean": Kind("bool", pa.bool_()),
}


@dataclass(frozen=True, slots=True)
class Column:
    """A top-level property and how its column holds it."""

    prop: str
    kind: Kind


def kind_of(node: Any, root: dict[str, Any], depth: int = 0) -> Kind:
    """The Kind of a schema node (``root`` resolves local ``$ref``s)."""
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return _JSON
    ref = node.get("$ref")
    if isinstance(ref, str):
        return kind_of(_resolve(ref, root), root, depth + 1)
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if isinstance(values, list) and any(v is not None for v in values):
        return _kind_of_values([v for v in values if v is not None])
    types = node.get("type")
    if isinstance(types, list):
        types = [t for t in types if t != "null"]
        types = types[0] if len(types) == 1 else sorted(types)
        if types == ["integer", "number"]:
            types = "number"
    if types is None:
        types = "object" if "properties" in node else "array" if "items" in node else None
    if isinstance(types, str) and types in _SCALARS:
        return _SCALARS[types]
    if types == "array" and isinstance(node.get("items"), dict):
        items = kind_of(node["items"], root, depth + 1)
        return Kind("list", pa.list_(items.arrow), items=items)
    props = node.get("properties")
    if types == "object" and isinstance(props, dict) and props:
        fields = tuple((str(k), kind_of(v, root, depth + 1)) for k, v in props.items())
        return Kind("struct", pa.struct([(k, f.arrow) for k, f in fields]), fields=fields)
    return _JSON


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _kind_of_values(values: list[Any]) -> Kind:
    if all(isinstance(v, str) for v in values):
        return _STRING
    if all(isinstance(v, bool) for v in values):
        return _SCALARS["boolean"]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return _SCALARS["integer"]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return _SCALARS["number"]
    return _JSON


def typed_columns(schema: dict[str, Any]) -> list[Column]:
    """One column per top-level property, in the schema's order."""
    props = schema.get("properties") or {}
    return [Column(str(name), kind_of(node, schema, 1)) for name, node in props.items()]


def coerce(value: Any, kind: Kind, path: list[str | int]) -> Any:
    """``value`` as its column holds it (None stays None); raises Mismatch naming the path."""
    if value is None:
        return None
    tag = kind.tag
    if tag == "json":
        return json.dumps(value, ensure_ascii=False)
    if tag == "string":
        if isinstance(value, str):
            return value
    elif tag == "bool":
        if isinstance(value, bool):
            return value
    elif tag == "int":
        # JSON Schema's integer includes 1.0.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if _INT64[0] <= value <= _INT64[1]:
                return value
            raise Mismatch(f"{_path(path)}: {value} does not fit a 64-bit integer")
    elif tag == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
            raise Mismatch(f"{_path(path)}: {value} does not fit a 64-bit float")
    elif tag == "list":
        assert kind.items is not None
        if isinstance(value, list):
            return [coerce(v, kind.items, [*path, i]) for i, v in enumerate(value)]
    elif tag == "struct" and isinstance(value, dict):
        return {k: coerce(value.get(k), f, [*path, k]) for k, f in kind.fields}
    raise Mismatch(f"{_path(path)}: {type(value).__name__} where the column holds {kind.arrow}")


def _path(path: list[str | int]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def column_names(columns: Sequence[Column], taken: set[str]) -> list[str]:
    """Output names of the typed columns: the property's name, prefixed with ``output_``
    (until free) where an input or result column, or another typed column, takes it."""
    used = set(taken)
    names = []
    for column in columns:
        name = column.prop
        while name in used:
            name = OUTPUT_PREFIX + name
        used.add(name)
        names.append(name)
    return names


def typed_arrays(columns: Sequence[Column], arguments: Sequence[str | None]) -> list[pa.Array]:
    """Arrays of the typed columns from each row's validated arguments (JSON text; None on
    error rows)."""
    values: list[list[Any]] = [[] for _ in columns]
    for raw in arguments:
        args = None if raw is None else fastjson.loads(raw.encode(), exact_ints=True)
        for out, column in zip(values, columns, strict=True):
            value = args.get(column.prop) if isinstance(args, dict) else None
            out.append(coerce(value, column.kind, [column.prop]))
    return [pa.array(v, type=c.kind.arrow) for v, c in zip(values, columns, strict=True)]
