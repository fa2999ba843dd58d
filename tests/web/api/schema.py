"""A small JSON Schema checker for the subset the API's OpenAPI document uses (type, with
"null" in a type list; properties, required, additionalProperties false; items; enum;
pattern; minimum; $ref into components/schemas). It fails on any keyword it does not
know, so the document cannot silently use more than is checked."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["check", "schema_errors"]

_TYPES = {
    "object": dict, "array": list, "string": str, "integer": int, "boolean": bool,
    "null": type(None),
}
_KNOWN = {"type", "properties", "required", "additionalProperties", "items", "enum",
          "pattern", "minimum", "$ref", "format", "description", "contentMediaType"}


def _is(value: Any, name: str) -> bool:
    if name == "integer" and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: dict[str, Any], components: dict[str, Any],
                  where: str = "$") -> list[str]:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise AssertionError(f"{where}: schema uses unchecked keywords {sorted(unknown)}")
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return schema_errors(value, components[name], components, where)
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is(value, n) for n in names):
            return [f"{where}: {value!r} is not of type {names}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and isinstance(value, int) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing {key!r}")
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], components, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], components, f"{where}[{i}]")
    return errors


def check(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Assert that ``body`` is what ``doc`` says ``method path`` answers with ``status``."""
    op = doc["paths"][path][method.lower()]
    assert str(status) in op["responses"], f"{method} {path}: status {status} not documented"
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    errors = schema_errors(body, schema, doc["components"]["schemas"])
    assert errors == [], f"{method} {path} {status}: " + "; ".join(errors)
