"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("opengrove.errors")

MALFORMED_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


class APIError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code


class BodyRefused(StarletteHTTPException):
    """An APIError found while the request body is read. FastAPI turns other exceptions
    raised there into a bare 400, but lets HTTPExceptions through to our handler."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.status_code, error.message)
        self.error = error


class InvalidRequest(APIError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(400, message, param=param, code=code)


class NotFound(APIError):
    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(404, f"No {kind} found with id '{object_id}'.")


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status_code,
        headers=headers,
    )


_MISSING = object()


def _param_path(loc: tuple[Any, ...], body: Any, *, keep_last: bool) -> str | None:
    """('body', 'tools', 0, 'function', 'function', 'name') -> 'tools[0].function.name'.

    Pydantic puts union labels and discriminator tags into `loc`; OpenAI's `param` names
    only real keys. Walking the request body tells the two apart: a step that is not a
    key (or index) of the body at that point is a label, except a missing key at the end.
    """
    steps = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    if loc and loc[0] != "body":
        return ".".join(str(s) for s in steps) or None
    path = ""
    node: Any = body
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            path += f"[{step}]"
            node = node[step]
        elif isinstance(step, str) and isinstance(node, dict) and step in node:
            path += f".{step}" if path else step
            node = node[step]
        elif last and keep_last:
            path += f".{step}" if path else str(step)
            node = _MISSING
    return path or None


_JSON_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "dict": "an object",
    "list": "an array",
    "NoneType": "null",
}


def _describe(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value).__name__, type(value).__name__)


def _most_relevant(errors: list[dict[str, Any]]) -> dict[str, Any]:
    # For a union, pydantic reports one error per member; a "wrong type" error is usually
    # the member the client did not mean, so prefer any other kind.
    for err in errors:
        if not str(err.get("type", "")).endswith("_type"):
            return err
    return errors[0]


def validation_error_to_api_error(errors: list[dict[str, Any]], body: Any = None) -> APIError:
    """Turn a pydantic error into the message OpenAI would write for it."""
    err = _most_relevant(errors)
    etype: str = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    param = _param_path(loc, body, keep_last=etype == "missing")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if etype == "json_invalid":
        return InvalidRequest(MALFORMED_JSON)
    if etype == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}",
            code="unknown_parameter",
            param=param,
        )
    if etype == "missing":
        if loc == ("body",):
            return InvalidRequest("You must provide a JSON body.")
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    expected = {
        "string_type": "a string",
        "int_type": "an integer",
        "int_parsing": "an integer",
        "float_type": "a number",
        "float_parsing": "a number",
        "bool_type": "a boolean",
        "bool_parsing": "a boolean",
        "dict_type": "an object",
        "model_type": "an object",
        "model_attributes_type": "an object",
        "list_type": "an array",
    }.get(etype)
    if expected:
        return InvalidRequest(
            f"Invalid type for '{param}': expected {expected}, but got {_describe(value)} instead.",
            param=param,
            code="invalid_type",
        )
    if etype == "string_too_long":
        return InvalidRequest(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{ctx.get('max_length')}, but got a string with length {len(value)} instead.",
            param=param,
            code="string_above_max_length",
        )
    if etype == "string_too_short":
        return InvalidRequest(
            f"Invalid '{param}': string too short. Expected a string with minimum length "
            f"{ctx.get('min_length')}, but got a string with length {len(value)} instead.",
            param=param,
            code="string_below_min_length",
        )
    if etype in ("too_long", "too_short"):
        bound = ctx.get("max_length") if etype == "too_long" else ctx.get("min_length")
        word = "long" if etype == "too_long" else "short"
        which = "maximum" if etype == "too_long" else "minimum"
        actual = ctx.get("actual_length", len(value) if hasattr(value, "__len__") else "?")
        return InvalidRequest(
            f"Invalid '{param}': array too {word}. Expected an array with {which} length {bound}, "
            f"but got an array with length {actual} instead.",
            param=param,
            code=f"array_{'above_max' if etype == 'too_long' else 'below_min'}_length",
        )
    if etype in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[etype]
        side = "below_min" if etype.startswith("greater") else "above_max"
        word = "below minimum" if etype.startswith("greater") else "above maximum"
        return InvalidRequest(
            f"Invalid '{param}': decimal {word} value. "
            f"Expected a value {op} {bound}, but got {value} instead.",
            param=param,
            code=f"decimal_{side}_value",
        )
    if etype in ("literal_error", "enum"):
        return InvalidRequest(
            f"Invalid value: '{value}'. Supported values are: {ctx.get('expected')}.",
            param=param,
            code="invalid_value",
        )
    if etype == "value_error":
        message = str(ctx.get("error") or err.get("msg", "Invalid value."))
        return InvalidRequest(message, param=param, code="invalid_value")
    if etype in ("union_tag_invalid", "union_tag_not_found"):
        return InvalidRequest(
            f"Invalid value for '{param or 'type'}': {err.get('msg')}.",
            param=param,
            code="invalid_value",
        )
    return InvalidRequest(
        f"Invalid '{param}': {err.get('msg')}.", param=param, code="invalid_value"
    )


def _body_not_parsed_as_json(errors: list[dict[str, Any]]) -> bool:
    """FastAPI hands a body that was not sent as JSON to validation as raw bytes."""
    return any(
        tuple(err.get("loc", ())) == ("body",) and isinstance(err.get("input"), bytes)
        for err in errors
    )


def not_json_error(content_type: str | None) -> APIError:
    sent = f"'Content-Type: {content_type}'" if content_type else "no Content-Type header"
    return InvalidRequest(
        "The request body must be JSON, sent with the header 'Content-Type: application/json' "
        f"(this request had {sent}). With curl: -H 'Content-Type: application/json'."
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if _body_not_parsed_as_json(errors):
            return error_response(not_json_error(request.headers.get("content-type")))
        return error_response(validation_error_to_api_error(errors, exc.body))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyRefused):
            return error_response(exc.error)
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
            return error_response(APIError(exc.status_code, message), headers=exc.headers)
        return error_response(APIError(exc.status_code, str(exc.detail)), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            APIError(
                500, "The server had an error while processing your request.", type="server_error"
            )
        )
