"""OpenAI file_search attribute filters -> Qdrant filters, as Qdrant's JSON filter objects.

Plain dicts (`{"must": [{"key": ..., "match": {"value": ...}}]}`) rather than qdrant-client
models: validating a request must not import the index engine.

ComparisonFilter: {"type": eq|ne|gt|gte|lt|lte|in|nin, "key": str, "value": ...}
CompoundFilter:   {"type": and|or, "filters": [ComparisonFilter | CompoundFilter, ...]}
Attributes live in the payload under `attributes.<key>`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

ATTRIBUTES_FIELD = "attributes"
MAX_FILTER_DEPTH = 16

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

AttributeValue = str | int | float | bool
QdrantFilter = dict[str, Any]


def attribute_path(key: Any) -> str:
    """Payload path for an attribute; keys with dots etc. are quoted for Qdrant."""
    if not isinstance(key, str) or not key:
        raise ValueError("Invalid filter: 'key' must be a non-empty string.")
    if _PLAIN_KEY_RE.fullmatch(key):
        return f"{ATTRIBUTES_FIELD}.{key}"
    if '"' in key:
        raise ValueError(f"Invalid filter key {key!r}: double quotes are not supported.")
    return f'{ATTRIBUTES_FIELD}."{key}"'


def build_filter(spec: Mapping[str, Any]) -> QdrantFilter:
    """Translate an OpenAI filter object; raises ValueError on malformed input."""
    return _build(spec, depth=0)


def _build(spec: Any, depth: int) -> QdrantFilter:
    if depth > MAX_FILTER_DEPTH:
        raise ValueError(f"Invalid filter: nesting deeper than {MAX_FILTER_DEPTH} levels.")
    if not isinstance(spec, Mapping):
        raise ValueError("Invalid filter: expected an object.")
    kind = spec.get("type")
    if kind in ("and", "or"):
        children = spec.get("filters")
        if not isinstance(children, Sequence) or isinstance(children, str) or not children:
            raise ValueError(f"Invalid '{kind}' filter: 'filters' must be a non-empty array.")
        built = [_build(child, depth + 1) for child in children]
        return {"must": built} if kind == "and" else {"should": built}
    if kind not in ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"):
        raise ValueError(
            f"Invalid filter type {kind!r}: expected one of eq, ne, gt, gte, lt, lte, in, nin, "
            "and, or."
        )
    if "value" not in spec:
        raise ValueError(f"Invalid '{kind}' filter: missing 'value'.")
    path = attribute_path(spec.get("key"))
    value = spec["value"]
    if kind == "eq":
        return {"must": [_equals(path, value, kind)]}
    if kind == "ne":
        return {"must_not": [_equals(path, value, kind)]}
    if kind in ("in", "nin"):
        any_of = _one_of(path, value, kind)
        return {"must": [any_of]} if kind == "in" else {"must_not": [any_of]}
    return {"must": [_range(path, kind, value)]}


def _check_scalar(value: Any, kind: str) -> AttributeValue:
    if not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"Invalid '{kind}' filter: 'value' must be a string, number or boolean.")
    return value


def _equals(path: str, value: Any, kind: str) -> QdrantFilter:
    value = _check_scalar(value, kind)
    if isinstance(value, bool | str):
        return {"key": path, "match": {"value": value}}
    # A range matches 3 and 3.0 alike; MatchValue would only match integer payloads.
    return {"key": path, "range": {"gte": value, "lte": value}}


def _one_of(path: str, values: Any, kind: str) -> QdrantFilter:
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"Invalid '{kind}' filter: 'value' must be a non-empty array.")
    if all(isinstance(v, str) for v in values):
        return {"key": path, "match": {"any": list(values)}}
    return {"should": [_equals(path, v, kind) for v in values]}


def _range(path: str, kind: str, value: Any) -> QdrantFilter:
    bound = {kind: value}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"key": path, "range": bound}
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:  # ISO-8601 strings compare as datetimes (Qdrant has no lexicographic range)
            return {"key": path, "range": bound}
    raise ValueError(
        f"Invalid '{kind}' filter: 'value' must be a number or an ISO-8601 datetime string."
    )
