"""Validate JSON bodies against the vendored OpenAI spec (`openai-openapi.yaml` next to this file).

The spec says `openapi: 3.1.0` but still speaks OpenAPI 3.0 in places, so it is not valid JSON
Schema as-is. At load time every schema location (components, request and response bodies) is
converted to JSON Schema 2020-12:

* `nullable: true` means "null too", also next to `$ref`/`enum`/`oneOf`; the idiom
  `allOf: [{$ref: X}, {nullable: true}]` makes the whole property nullable, and a bare
  `{nullable: true}` branch of `anyOf`/`oneOf` becomes `{type: null}`.
* `$recursiveRef: "#"` (draft 2019-09, only in CompoundFilter) points at the component that
  declares `$recursiveAnchor`.
* boolean `exclusiveMinimum`/`exclusiveMaximum` (3.0) become the numeric 2020-12 keywords.
* `x-*` extensions are dropped; `format` is not enforced (the spec uses custom ones such as
  `unixtime`); other OpenAPI keywords (`discriminator`, `example`, ...) are ignored.

The converted document is registered once in a `referencing.Registry`, so each target (a
response, a request body, a component, a stream event) is just `{"$ref": "<doc>#<pointer>"}` and
the spec's own `#/components/...` refs resolve inside it. Validators are compiled lazily and
cached per pointer. Every `validate_*` raises `SpecViolation` (an AssertionError, so pytest shows
it well) listing each violation with its JSON path; unknown operations, schemas, statuses or
event names raise KeyError, so a typo in a test cannot pass silently.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).with_name("openai-openapi.yaml")
_DOC_URI = "urn:opengrove:openai-openapi"
_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# Keywords whose values are subschemas; everything else is data (enum, default, example...) and
# must not be rewritten even if it happens to contain a "nullable" key.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = (
    "additionalProperties", "items", "not", "if", "then", "else", "contains",
    "propertyNames", "unevaluatedProperties", "unevaluatedItems",
)  # fmt: skip
_ANNOTATIONS = {"description", "title", "example", "examples", "default", "deprecated"}


class SpecViolation(AssertionError):
    """A body does not conform to the spec; `messages` holds one line per violation."""

    def __init__(self, what: str, messages: list[str]) -> None:
        self.messages = messages
        shown = "\n  ".join(messages[:25])
        more = f"\n  ... and {len(messages) - 25} more" if len(messages) > 25 else ""
        super().__init__(f"{what}: {len(messages)} violation(s)\n  {shown}{more}")


def _only_nullable(schema: Any) -> bool:
    """True for `{nullable: true}` with nothing but annotations beside it."""
    if not isinstance(schema, dict) or schema.get("nullable") is not True:
        return False
    return all(k == "nullable" or k in _ANNOTATIONS or k.startswith("x-") for k in schema)


def to_json_schema(schema: Any, anchor: str | None = None) -> Any:
    """Convert one OpenAPI schema to JSON Schema 2020-12 (see the module docstring).

    `anchor` is the component that `$recursiveRef` resolves to: the nearest enclosing component
    with `$recursiveAnchor: true`.
    """
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if not k.startswith("x-") and k != "format"}
    nullable = out.pop("nullable", None) is True
    out.pop("$recursiveAnchor", None)
    if out.pop("$recursiveRef", None) is not None:
        if anchor is None:
            raise ValueError("$recursiveRef outside a component with $recursiveAnchor")
        out["$ref"] = f"#/components/schemas/{anchor}"
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive) and bound in out:
            out[exclusive] = out.pop(bound)
    if isinstance(out.get("allOf"), list):
        members = [m for m in out["allOf"] if not _only_nullable(m)]
        nullable = nullable or len(members) < len(out["allOf"])
        if members:
            out["allOf"] = members
        else:
            del out["allOf"]
    for key in ("anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [{"type": "null"} if _only_nullable(m) else m for m in out[key]]

    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: to_json_schema(sub, anchor) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [to_json_schema(sub, anchor) for sub in out[key]]
    for key in _SCHEMA_ONE:
        if key in out:
            out[key] = to_json_schema(out[key], anchor)
    return {"anyOf": [{"type": "null"}, out]} if nullable else out


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _convert_bodies(container: dict[str, Any], pointer: str) -> dict[str, str]:
    """Convert `content.<media>.schema` in place; return media type -> pointer to its schema."""
    found = {}
    for media, entry in (container.get("content") or {}).items():
        if isinstance(entry, dict) and "schema" in entry:
            entry["schema"] = to_json_schema(entry["schema"])
            found[media] = f"{pointer}/content/{_escape(media)}/schema"
    return found


def _format(errors: list[ValidationError]) -> list[str]:
    """One line per error; for oneOf/anyOf also say why each branch failed, since the bare
    "is not valid under any of the given schemas" hides the actual mismatch."""
    lines = []
    for error in sorted(errors, key=lambda e: (e.json_path, e.message)):
        line = f"{error.json_path}: {' '.join(error.message.split())[:300]}"
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context or []:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        reasons = []
        for index, subs in branches.items():
            best = best_match(subs)
            reasons.append(f"#{index} {best.json_path}: {' '.join(best.message.split())[:160]}")
        if reasons:
            line += f"  [branches: {'; '.join(reasons)}]"
        lines.append(line)
    return lines


class OpenAPISpec:
    """The spec loaded and converted once, plus lookups and a validator cache."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.info: dict[str, Any] = raw["info"]
        components = raw.get("components", {})
        schemas = {
            name: to_json_schema(schema, name if schema.get("$recursiveAnchor") else None)
            for name, schema in components.get("schemas", {}).items()
        }
        responses = components.get("responses", {})
        shared = {  # components.responses: name -> media type -> pointer
            name: _convert_bodies(response, f"/components/responses/{_escape(name)}")
            for name, response in responses.items()
        }
        doc: dict[str, Any] = {"components": {"schemas": schemas, "responses": responses}}

        # operationId -> (METHOD, path); plus pointers to request/response body schemas.
        self.operations: dict[str, tuple[str, str]] = {}
        self._requests: dict[str, dict[str, str]] = {}
        self._responses: dict[str, dict[str, dict[str, str]]] = {}
        doc["paths"] = raw.get("paths", {})
        for path_template, item in doc["paths"].items():
            for method, op in item.items():
                if method not in _HTTP_METHODS or not isinstance(op, dict):
                    continue
                op_id, base = op["operationId"], f"/paths/{_escape(path_template)}/{method}"
                self.operations[op_id] = (method.upper(), path_template)
                self._requests[op_id] = _convert_bodies(
                    op.get("requestBody") or {}, f"{base}/requestBody"
                )
                self._responses[op_id] = {
                    str(status).upper(): shared[response["$ref"].rsplit("/", 1)[-1]]
                    if "$ref" in response  # only ever "#/components/responses/<name>"
                    else _convert_bodies(response, f"{base}/responses/{_escape(str(status))}")
                    for status, response in (op.get("responses") or {}).items()
                }

        self.schemas: dict[str, Any] = schemas
        self.stream_events = self._collect_events(doc, "/components/schemas/AssistantStreamEvent")
        self._registry: Registry = Registry().with_resource(
            _DOC_URI, DRAFT202012.create_resource(doc)
        )
        self._validators: dict[str, Draft202012Validator] = {}

    @staticmethod
    def _collect_events(doc: dict[str, Any], pointer: str) -> dict[str, str]:
        """Event name -> pointer to its `{event, data}` schema, walking the oneOf family."""
        node: Any = doc
        for token in pointer.strip("/").split("/"):
            node = node[int(token) if isinstance(node, list) else token.replace("~1", "/")]
        if "$ref" in node:
            return OpenAPISpec._collect_events(doc, node["$ref"].removeprefix("#"))
        if "oneOf" in node:
            events: dict[str, str] = {}
            for index in range(len(node["oneOf"])):
                events |= OpenAPISpec._collect_events(doc, f"{pointer}/oneOf/{index}")
            return events
        names = node.get("properties", {}).get("event", {}).get("enum", [])
        return dict.fromkeys(names, pointer)

    def _check(self, what: str, pointer: str, instance: Any) -> None:
        validator = self._validators.get(pointer)
        if validator is None:
            schema = {"$ref": f"{_DOC_URI}#{pointer}"}
            validator = Draft202012Validator(schema, registry=self._registry)
            self._validators[pointer] = validator
        errors = list(validator.iter_errors(instance))
        if errors:
            raise SpecViolation(what, _format(errors))

    def validate_schema(self, name: str, obj: Any) -> None:
        """Check `obj` against `components.schemas[name]`."""
        if name not in self.schemas:
            raise KeyError(f"unknown schema {name!r}")
        self._check(name, f"/components/schemas/{_escape(name)}", obj)

    def validate_response(
        self, operation_id: str, status: int, body: Any, content_type: str = "application/json"
    ) -> None:
        """Check a response body. The spec documents little beyond 200 (and 429), so the status
        is looked up exact, then as `4XX`, then `default`, and any other status >= 400 falls back
        to the standard `ErrorResponse` body that every OpenAI error uses."""
        responses = self._responses[self._known(operation_id)]
        code = str(status)
        media = responses.get(code) or responses.get(f"{code[0]}XX") or responses.get("DEFAULT")
        if media is None:
            if status < 400:
                raise KeyError(
                    f"{operation_id}: status {status} not in the spec {sorted(responses)}"
                )
            pointer = "/components/schemas/ErrorResponse"
        else:
            pointer = media.get(content_type.split(";")[0].strip(), "")
            if not pointer:
                raise KeyError(f"{operation_id} {status}: no {content_type!r} body in the spec")
        self._check(f"{operation_id} -> {status}", pointer, body)

    def validate_request(
        self, operation_id: str, body: Any, content_type: str = "application/json"
    ) -> None:
        """Check a request body (catches tests or fixtures sending what the SDK never would)."""
        pointer = self._requests[self._known(operation_id)].get(content_type)
        if pointer is None:
            raise KeyError(f"{operation_id}: no {content_type!r} request body in the spec")
        self._check(f"{operation_id} request", pointer, body)

    def validate_stream_event(self, event: str, data: Any) -> None:
        """Check one Assistants SSE event: its name and its decoded `data:` together."""
        if event not in self.stream_events:
            raise KeyError(f"unknown Assistants stream event {event!r}")
        self._check(
            f"stream event {event}", self.stream_events[event], {"event": event, "data": data}
        )

    def _known(self, operation_id: str) -> str:
        if operation_id not in self.operations:
            raise KeyError(f"unknown operationId {operation_id!r}")
        return operation_id


@cache
def spec() -> OpenAPISpec:
    """The vendored spec, parsed once per process (the YAML is ~0.5 MB)."""
    return OpenAPISpec()


def validate_response(operation_id: str, status: int, body: Any) -> None:
    spec().validate_response(operation_id, status, body)


def validate_schema(name: str, obj: Any) -> None:
    spec().validate_schema(name, obj)


def validate_request(operation_id: str, body: Any) -> None:
    spec().validate_request(operation_id, body)


def validate_stream_event(event: str, data: Any) -> None:
    spec().validate_stream_event(event, data)


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """Split a text/event-stream body into (event, data) pairs, data JSON-decoded when it is JSON
    (`[DONE]` stays a string). Comments are skipped; a nameless event is "message" per the SSE
    spec, which no Assistants event is, so it fails validation rather than vanishing."""
    events: list[tuple[str, Any]] = []
    for block in re.split(r"(?:\r\n|\r|\n){2,}", text):
        name, data = None, []
        for line in re.split(r"\r\n|\r|\n", block):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if name is None and not data:
            continue
        raw = "\n".join(data)
        try:
            events.append((name or "message", json.loads(raw)))
        except ValueError:
            events.append((name or "message", raw))
    return events


def validate_sse_stream(text: str, require_done: bool = False) -> list[tuple[str, Any]]:
    """Validate every event of an Assistants SSE body, reporting all problems at once, and
    return the parsed events. `require_done` demands the final `event: done` / `data: [DONE]`
    (the SDK's stream helpers rely on it)."""
    events = parse_sse(text)
    problems = []
    for index, (name, data) in enumerate(events):
        try:
            validate_stream_event(name, data)
        except SpecViolation as exc:
            problems += [f"event #{index} {name}: {line}" for line in exc.messages]
        except KeyError as exc:
            problems.append(f"event #{index}: {exc.args[0]}")
    if require_done and (not events or events[-1] != ("done", "[DONE]")):
        problems.append("stream does not end with `event: done` / `data: [DONE]`")
    if problems:
        raise SpecViolation("SSE stream", problems)
    return events
