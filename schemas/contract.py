"""The published JSON Schema files: loading them from package data and validating against them.

These validators are for tests, tools and producers' checks. The worker's hot path
uses `tagger.schemas.decode`, which checks the same rules, and a few that JSON Schema
cannot express, by hand.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any, Final, Literal

from jsonschema import Draft202012Validator

__all__ = ["SCHEMA_NAMES", "SchemaName", "load_schema", "schema_errors"]

SchemaName = Literal["event", "clock", "tag_change", "dead_letter", "erasure_request"]

SCHEMA_NAMES: Final[tuple[SchemaName, ...]] = (
    "event",
    "clock",
    "tag_change",
    "dead_letter",
    "erasure_request",
)


def load_schema(name: SchemaName) -> dict[str, Any]:
    """Return a copy of the JSON Schema `<name>.json` shipped in this package."""
    return copy.deepcopy(_cached_schema(name))


def schema_errors(name: SchemaName, instance: object) -> list[str]:
    """Validate `instance` against schema `name` and return one line per error, empty if valid.

    Each line starts with the JSON path of the failing value, such as "/attributes/level".
    """
    errors = _validator(name).iter_errors(instance)
    lines = []
    for error in errors:
        path = "".join(f"/{part}" for part in error.absolute_path) or "/"
        lines.append(f"{path}: {error.message}")
    return sorted(lines)


@functools.cache
def _cached_schema(name: SchemaName) -> dict[str, Any]:
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}: expected one of {', '.join(SCHEMA_NAMES)}")

    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator(name: SchemaName) -> Draft202012Validator:
    schema = _cached_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)
