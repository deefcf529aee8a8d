"""The LLM adapter: the only module that imports litellm.

One path for every run: `stream_chat` always streams, and yields normalised events
(text deltas, tool-call deltas, then one `Finish` with the finish_reason and usage read
from the chunks themselves). Failures before the first chunk are retried with backoff;
anything else surfaces as `LLMError` with an OpenAI `last_error` code.

litellm resolves every route. Routes its OpenAI-format providers serve (`openai`,
`hosted_vllm`) are streamed by `openai_wire` over a shared keep-alive connection, with the
same request body, retries and errors but without litellm's per-chunk overhead; everything
else (and everything, with OPENGROVE_LLM_FAST_PATH=false) goes through `litellm.acompletion`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import aiohttp
import httpx

from app.llm import openai_wire
from app.llm.routing import ModelRoute, unknown_model_message
from app.observability.metrics import ModelCall

logger = logging.getLogger("opengrove.llm")

# Importing litellm takes seconds and ~150 MB: it is loaded on the first model call (in a
# thread, so the event loop keeps serving), or at start with OPENGROVE_PRELOAD_LLM.
_litellm: ModuleType | None = None
_load_lock = threading.Lock()
_after_import: list[Callable[[], None]] = []  # run once, in the thread that imported it
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm")


def after_import(callback: Callable[[], None]) -> None:
    """Call `callback` once litellm has been imported here: now if it has been, else right
    after the import (in the thread that made it)."""
    with _load_lock:
        if _litellm is None:
            _after_import.append(callback)
            return
    callback()


def _import_litellm() -> ModuleType:
    global _litellm
    if _litellm is not None:
        return _litellm
    with _load_lock:
        if _litellm is None:
            # litellm would otherwise fetch its model price map from the internet at import.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.telemetry = False
            litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners
            # We register no litellm callbacks; per-chunk success logging only costs CPU.
            litellm.disable_streaming_logging = True
            litellm.drop_params = True  # providers lacking a parameter still work
            for name in _LITELLM_LOGGERS:
                # litellm gives its loggers coloured handlers of their own: lines would show
                # twice, with escape codes. Ours (the root handler) is enough.
                lib_logger = logging.getLogger(name)
                lib_logger.handlers.clear()
                lib_logger.propagate = True
                lib_logger.setLevel(logging.WARNING)
            _litellm = litellm
        callbacks, _after_import[:] = list(_after_import), []
    for callback in callbacks:
        callback()
    return _litellm


async def load() -> ModuleType:
    """litellm, imported in a worker thread the first time."""
    if _litellm is not None:
        return _litellm
    return await asyncio.to_thread(_import_litellm)


def is_loaded() -> bool:
    return _litellm is not None


@dataclass
class ChatRequest:
    route: ModelRoute
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: Any = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Finish:
    finish_reason: str
    usage: Usage | None


StreamEvent = TextDelta | ToolCallDelta | Finish


class LLMError(Exception):
    """A failed model call, with the `last_error.code` a run reports for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RetryPolicy:
    """How calls are made: retries, the per-chunk timeout, and whether OpenAI-format routes
    take the fast path (`openai_wire`, OPENGROVE_LLM_FAST_PATH) or always go through litellm."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    timeout: float = 60.0
    fast_path: bool = True


def _retryable(litellm: ModuleType) -> tuple[type[BaseException], ...]:
    return (
        TimeoutError,
        httpx.TimeoutException,
        httpx.NetworkError,
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """The exceptions `exc` was raised from, nearest first (a few levels)."""
    found: list[BaseException] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(found) < 8:
        found.append(cause)
        cause = cause.__cause__ or cause.__context__
    return found


def _classify(litellm: ModuleType, exc: Exception) -> LLMError:
    """The run's `last_error`: a stable message in our words. The provider's own text (which
    can quote request bodies, internal hosts or keys) goes to the log, with the run's id."""
    if isinstance(exc, LLMError):
        return exc
    logger.warning("model call failed: %s: %s", type(exc).__name__, exc)
    # litellm reports Ollama's HTTP errors as APIConnectionError (status 500); the provider's
    # own error, with the real status, is the chained exception.
    chained = exc.__cause__ or exc.__context__
    status = getattr(chained, "status_code", None) or getattr(exc, "status_code", None)
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        return LLMError(
            "rate_limit_exceeded", "The model provider is rate limiting requests (HTTP 429)."
        )
    if isinstance(exc, litellm.ContextWindowExceededError):
        return LLMError("invalid_prompt", "The prompt is longer than the model's context window.")
    if isinstance(exc, litellm.ContentPolicyViolationError):
        return LLMError("invalid_prompt", "The model provider refused the prompt (content policy).")
    if isinstance(exc, litellm.Timeout | TimeoutError | httpx.TimeoutException):
        return LLMError("server_error", "The model provider did not answer in time.")
    # litellm reports a refused connection as a 500 of its own; the causes tell the truth.
    unreachable = any(
        isinstance(cause, httpx.TransportError | OSError)
        or type(cause).__name__ == "APIConnectionError"  # the openai SDK's, under litellm
        for cause in _causes(exc)
    ) or (
        isinstance(exc, litellm.APIConnectionError)
        and not isinstance(getattr(chained, "status_code", None), int)
    )
    if unreachable:
        return LLMError("server_error", "Could not reach the model provider.")
    shown = f" (HTTP {status})" if isinstance(status, int) else ""
    return LLMError("server_error", f"The model provider returned an error{shown}.")


def _is_secret_variable(name: str) -> bool:
    return any(word in name for word in ("KEY", "TOKEN", "SECRET"))


def provider_of(litellm: ModuleType, route: ModelRoute) -> str | None:
    """The litellm provider for a route, or None when litellm cannot place the model."""
    try:
        return str(litellm.get_llm_provider(route.litellm_model, api_base=route.api_base)[1])
    except Exception:  # litellm raises BadRequestError for a model it cannot place
        return None


_route_problems: dict[ModelRoute, str | None] = {}


async def check_model(route: ModelRoute) -> str | None:
    """Why a route cannot be called (unknown model, missing credentials), or None if it can."""
    if route not in _route_problems:
        _route_problems[route] = _route_problem(await load(), route)
    return _route_problems[route]


def _route_problem(litellm: ModuleType, route: ModelRoute) -> str | None:
    provider = provider_of(litellm, route)
    if provider is None:
        return unknown_model_message(route.name)
    if route.api_key:
        return None
    try:
        missing = litellm.validate_environment(model=route.litellm_model)["missing_keys"]
    except Exception:
        return None  # litellm cannot tell for this provider: let the call decide
    secrets = [name for name in missing if _is_secret_variable(name)]
    if secrets:
        return (
            f"No API key for provider '{provider}': set {' and '.join(secrets)} or configure "
            "the model in OPENGROVE_MODEL_CONFIG."
        )
    return None


def _native_ollama_tools(litellm: ModuleType, model: str) -> None:
    """Make litellm send tools to Ollama natively. For a model missing from its model map,
    litellm asks OLLAMA_API_BASE's /api/show (not the route's api_base) whether the model
    takes tools; when that fails it silently swaps the tools for a JSON-mode prompt (and sets
    `litellm.add_function_to_prompt` process-wide). Ollama itself rejects tools clearly (400)
    for a model that cannot use them."""
    provider, _, name = model.partition("/")
    if provider in ("ollama", "ollama_chat") and name:
        info = litellm.model_cost.setdefault(
            f"ollama/{name}", {"litellm_provider": "ollama", "mode": "chat"}
        )
        info.setdefault("supports_function_calling", True)


_wire_routes: dict[ModelRoute, openai_wire.WireRoute | None] = {}


def wire_route(litellm: ModuleType, route: ModelRoute) -> openai_wire.WireRoute | None:
    """How the fast path calls a route (cached per route), or None if litellm must."""
    if route not in _wire_routes:
        _wire_routes[route] = openai_wire.resolve(litellm, route)
    return _wire_routes[route]


async def takes_fast_path(route: ModelRoute, policy: RetryPolicy | None = None) -> bool:
    """Whether calls to this route stream through `openai_wire` rather than litellm."""
    enabled = (policy or RetryPolicy()).fast_path
    return enabled and wire_route(await load(), route) is not None


async def aclose() -> None:
    """Close the shared HTTP connections made on this event loop (at shutdown): the fast
    path's clients, and the aiohttp sessions under litellm's cached clients. litellm's own
    cleanup misses some (BerriAI/litellm#31245) and closes its httpx clients for good; a
    session alone can be closed, as litellm makes a new one when it finds it closed."""
    await openai_wire.aclose()
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return  # never imported: nothing cached
    loop = asyncio.get_running_loop()
    # (getattr: another thread may still be importing it)
    cached = getattr(getattr(litellm, "in_memory_llm_clients_cache", None), "cache_dict", {})
    for holder in [*cached.values(), getattr(litellm, "module_level_aclient", None)]:
        # AsyncHTTPHandler.client, AsyncOpenAI._client: an httpx client on litellm's
        # aiohttp transport, whose `client` is the session.
        http = getattr(holder, "client", None) or getattr(holder, "_client", None)
        session = getattr(getattr(http, "_transport", None), "client", None)
        if (
            isinstance(session, aiohttp.ClientSession)
            and not session.closed
            and getattr(session, "_loop", None) is loop  # another loop's is not ours to close
        ):
            await session.close()


def _call_kwargs(litellm: ModuleType, request: ChatRequest, timeout: float) -> dict[str, Any]:
    provider = provider_of(litellm, request.route)
    kwargs: dict[str, Any] = {
        "model": request.route.litellm_model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        # No read timeout for litellm: its aiohttp transport turns it into a limit on the whole
        # stream, failing long answers. We bound the wait for each chunk instead. Providers
        # litellm gives no httpx timeout take a number (its own fallback, 600, is an int that
        # its OpenAI-compatible providers such as hosted_vllm reject).
        "timeout": httpx.Timeout(timeout, read=None)
        if provider is not None and litellm.supports_httpx_timeout(provider)
        else 600.0,
        "num_retries": 0,  # retries are ours, so they never replay a half-streamed answer
    }
    if provider == "ollama_chat":
        kwargs["messages"] = _bare_base64_images(request.messages)
    if request.route.api_base:
        kwargs["api_base"] = request.route.api_base
    if request.route.api_key:
        kwargs["api_key"] = request.route.api_key
    if request.tools:
        kwargs["tools"] = request.tools
        if request.tool_choice is not None:
            kwargs["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = request.parallel_tool_calls
    for name in ("response_format", "temperature", "top_p", "max_tokens"):
        value = getattr(request, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def _bare_base64_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's native chat takes an image as bare base64 (its `images`); litellm's
    ollama_chat passes each image_url's URL on whole, so data URLs lose their prefix here."""
    converted = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == "image_url" for p in content
        ):
            parts = []
            for part in content:
                url = part.get("image_url", {}).get("url", "") if isinstance(part, dict) else ""
                if part.get("type") == "image_url" and url.startswith("data:") and "," in url:
                    part = {**part, "image_url": {**part["image_url"], "url": url.split(",", 1)[1]}}
                parts.append(part)
            message = {**message, "content": parts}
        converted.append(message)
    return converted


async def stream_chat(
    request: ChatRequest, policy: RetryPolicy | None = None
) -> AsyncIterator[StreamEvent]:
    policy = policy or RetryPolicy()
    litellm = await load()
    problem = await check_model(request.route)
    if problem is not None:
        raise LLMError("server_error", problem)
    wire = wire_route(litellm, request.route) if policy.fast_path else None
    kwargs: dict[str, Any] = {}
    if wire is None:
        kwargs = _call_kwargs(litellm, request, policy.timeout)
        if request.tools:
            _native_ollama_tools(litellm, request.route.litellm_model)
    retryable_errors = _retryable(litellm)
    call = ModelCall(request.route.name)  # latency and tokens by model, for /metrics
    for attempt in range(1, policy.attempts + 1):
        emitted = False
        events = (
            openai_wire.stream(litellm, wire, request, policy.timeout)
            if wire is not None
            else _litellm_stream(litellm, kwargs, policy.timeout)
        )
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if not emitted and not isinstance(event, Finish):
                        emitted = True
                        call.first_output()
                    elif isinstance(event, Finish):
                        call.finished(event.usage)
                    yield event
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            retryable = isinstance(exc, retryable_errors) and not emitted
            if not retryable or attempt == policy.attempts:
                call.failed()
                logger.warning("model call failed (attempt %d): %r", attempt, exc)
                raise _classify(litellm, exc) from exc
            delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
            delay *= 0.5 + random.random() / 2
            logger.info(
                "model call failed (attempt %d), retrying in %.2fs: %s", attempt, delay, exc
            )
            await asyncio.sleep(delay)


async def _litellm_stream(
    litellm: ModuleType, kwargs: dict[str, Any], idle_timeout: float
) -> AsyncIterator[StreamEvent]:
    """One streamed call through `litellm.acompletion`."""
    async with asyncio.timeout(idle_timeout):
        response = await litellm.acompletion(**kwargs)
    chunks = aiter(response)
    finish_reason: str | None = None
    usage: Usage | None = None
    saw_tool_call = False
    while True:
        try:
            # An idle limit per chunk: a stalled provider fails, a long answer does not.
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        chunk_usage = getattr(chunk, "usage", None)
        if chunk_usage is not None and getattr(chunk_usage, "prompt_tokens", None):
            usage = Usage(chunk_usage.prompt_tokens or 0, chunk_usage.completion_tokens or 0)
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta is not None:
            if delta.content:
                yield TextDelta(delta.content)
            for call in delta.tool_calls or []:
                saw_tool_call = True
                function = call.function
                yield ToolCallDelta(
                    index=call.index or 0,
                    id=call.id,
                    name=getattr(function, "name", None) if function else None,
                    arguments=(getattr(function, "arguments", None) or "") if function else "",
                )
        if choice.finish_reason:
            finish_reason = choice.finish_reason
    if finish_reason is None:
        finish_reason = "tool_calls" if saw_tool_call else "stop"
    yield Finish(finish_reason, usage)


# Tokens an image is taken to cost when a prompt is measured: OpenAI's charge for a
# high-detail 512x512 image. Measuring never fetches the image (litellm would, to read its
# size: a request to any URL, made synchronously on the event loop); an `image_file` part
# (not yet inlined by app.runs.images) counts the same.
IMAGE_TOKENS = 765


def _without_images(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    images = 0
    stripped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            kept = [
                p
                for p in content
                if not (isinstance(p, dict) and p.get("type") in ("image_url", "image_file"))
            ]
            images += len(content) - len(kept)
            message = {**message, "content": kept}
        stripped.append(message)
    return stripped, images


def count_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    messages, images = _without_images(messages)
    try:
        counted = int(_import_litellm().token_counter(model=model, messages=messages))
        return counted + images * IMAGE_TOKENS
    except Exception:  # unknown tokenizer for an exotic model: a rough estimate is enough here
        return sum(len(str(m.get("content") or "")) // 4 + 4 for m in messages) + (
            images * IMAGE_TOKENS
        )
