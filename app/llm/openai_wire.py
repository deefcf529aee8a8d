"""The fast path for providers that speak OpenAI's chat-completions wire format.

litellm's streaming wrapper costs more CPU per call than the rest of a run together, so for
routes whose litellm provider is plain OpenAI-format (`openai`, incl. `openai/<x>` with an
api_base, and `hosted_vllm`) the adapter streams here instead: one shared keep-alive
`aiohttp.ClientSession` per (api_base, api_key) (half the CPU of an httpx client per streamed
call), the SSE `data:` lines parsed with orjson.

litellm still decides everything a call depends on: the provider (`get_llm_provider`), the
api_base and key (resolved as its `completion` does), which parameters go out and how they
are named (its provider config's `map_openai_params`, `drop_params` semantics), and what an
error means (its own exception mapping). Models whose litellm config rewrites messages (the
o-series) or any provider not listed here keep going through `litellm.acompletion`.
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from app.llm.routing import ModelRoute

if TYPE_CHECKING:
    from app.llm.adapter import ChatRequest, StreamEvent

FAST_PROVIDERS = frozenset({"openai", "hosted_vllm"})
_DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
# Parameters the adapter may send; the provider config keeps those the model supports.
_OPTIONAL = ("response_format", "temperature", "top_p", "max_tokens")


@dataclass(frozen=True)
class WireRoute:
    """How one route is called over the wire, resolved once (see `resolve`)."""

    provider: str
    model: str  # as sent in the body (the provider prefix stripped)
    api_base: str
    api_key: str | None
    url: str
    headers: tuple[tuple[str, str], ...]
    config: Any  # litellm's chat config for the provider and model
    supported: frozenset[str]
    strip_tool_schemas: bool  # hosted_vllm: no `strict` / `additionalProperties: false`
    proxy: str | None  # from the environment, for this url


def _config_classes(litellm: ModuleType) -> tuple[type, ...]:
    # Exact classes whose request transform is "model + messages + mapped params": the
    # subclasses with message rewrites (o-series, audio) are left to litellm.
    return (litellm.OpenAIGPTConfig, litellm.OpenAIGPT5Config, litellm.HostedVLLMChatConfig)


def resolve(litellm: ModuleType, route: ModelRoute) -> WireRoute | None:
    """The wire route for a model litellm places with an OpenAI-format provider, else None."""
    try:
        model, provider, dynamic_key, api_base = litellm.get_llm_provider(
            route.litellm_model, api_base=route.api_base, api_key=route.api_key
        )
    except Exception:
        return None
    if provider not in FAST_PROVIDERS:
        return None
    config = litellm.ProviderConfigManager.get_provider_chat_config(
        model=model, provider=litellm.LlmProviders(provider)
    )
    if type(config) not in _config_classes(litellm):
        return None
    if config.should_fake_stream(model=model, stream=True, custom_llm_provider=provider):
        return None
    # As litellm.main.completion resolves them for OpenAI and OpenAI-compatible providers.
    api_key = (
        dynamic_key
        or route.api_key
        or litellm.api_key
        or litellm.openai_key
        or os.environ.get("OPENAI_API_KEY")
    )
    base = (
        api_base
        or litellm.api_base
        or os.environ.get("OPENAI_BASE_URL")
        or os.environ.get("OPENAI_API_BASE")
        or _DEFAULT_OPENAI_BASE
    )
    headers = {"accept": "application/json", "content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    organization = litellm.organization or os.environ.get("OPENAI_ORGANIZATION")
    if organization:
        headers["openai-organization"] = organization
    url = f"{base.rstrip('/')}/chat/completions"
    return WireRoute(
        provider=provider,
        model=model,
        api_base=base,
        api_key=api_key,
        url=url,
        headers=tuple(headers.items()),
        config=config,
        supported=frozenset(config.get_supported_openai_params(model)),
        strip_tool_schemas=provider == "hosted_vllm",
        proxy=_proxy_for(url),
    )


def request_body(wire: WireRoute, request: ChatRequest) -> dict[str, Any]:
    """The JSON body litellm would send for this request (same params, names and drops)."""
    params: dict[str, Any] = {}
    if request.tools:
        tools = request.tools
        if wire.strip_tool_schemas:  # the provider config edits the schemas in place
            tools = orjson.loads(orjson.dumps(tools))
        params["tools"] = tools
        if request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
    for name in _OPTIONAL:
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    params = {k: v for k, v in params.items() if k in wire.supported}  # drop_params=True
    optional = _mapped_params(wire, params) if params else {}
    # litellm drops None-valued fields from each message (e.g. an assistant's content: None).
    messages = [
        {k: v for k, v in m.items() if v is not None} if None in m.values() else m
        for m in request.messages
    ]
    return {
        "model": wire.model,
        "messages": messages,
        **optional,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# litellm's mapping costs more CPU than the rest of a streamed call; runs mostly repeat the
# same scalar options (temperature, top_p, …), so its result is kept for those.
_param_maps: dict[tuple[Any, ...], dict[str, Any]] = {}
_MAPPED_LIMIT = 4096


def _mapped_params(wire: WireRoute, params: dict[str, Any]) -> dict[str, Any]:
    scalar = all(isinstance(v, str | int | float | bool) for v in params.values())
    if not scalar:
        return wire.config.map_openai_params(params, {}, wire.model, True)
    key = (wire.provider, wire.model, *sorted(params.items()))
    found = _param_maps.get(key)
    if found is None:
        found = wire.config.map_openai_params(dict(params), {}, wire.model, True)
        if len(_param_maps) < _MAPPED_LIMIT:
            _param_maps[key] = found
    return dict(found)


_clients: dict[tuple[str, str | None], tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}


def _client(wire: WireRoute) -> aiohttp.ClientSession:
    """The shared client for an (api_base, api_key), made on this event loop."""
    key = (wire.api_base, wire.api_key)
    loop = asyncio.get_running_loop()
    entry = _clients.get(key)
    if entry is None or entry[0] is not loop:
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096, keepalive_timeout=60.0),
            headers=dict(wire.headers),
            # No overall limit: each call bounds its waits (an idle limit per read).
            timeout=aiohttp.ClientTimeout(total=None),
            # Not trust_env: it reads ~/.netrc in a worker thread on every request. The
            # proxy the environment names for this provider is looked up once, below.
            trust_env=False,
        )
        _clients[key] = (loop, client)
        return client
    return entry[1]


def _proxy_for(url: str) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as httpx and the openai SDK honour them."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


async def aclose() -> None:
    """Close the shared clients made on this event loop (others cannot be closed from here)."""
    loop = asyncio.get_running_loop()
    for key, (owner, client) in list(_clients.items()):
        if owner is loop:
            del _clients[key]
            await client.close()


def _mapped(
    litellm: ModuleType, wire: WireRoute, status: int, message: str, body: Any
) -> Exception:
    """The litellm exception its OpenAI provider raises for this failure (same class and text
    as on the litellm path, so retries and `last_error` stay the same)."""
    from litellm.litellm_core_utils.exception_mapping_utils import exception_type
    from litellm.llms.openai.common_utils import OpenAIError

    original = OpenAIError(status_code=status, message=message, body=body)
    try:
        exception_type(
            model=wire.model, original_exception=original, custom_llm_provider=wire.provider
        )
    except Exception as mapped:
        return mapped
    return original


def _status_error(litellm: ModuleType, wire: WireRoute, status: int, raw: bytes) -> Exception:
    # The openai SDK's message and body for an HTTP error (litellm reads these).
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = raw.decode(errors="replace").strip()
    body = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    return _mapped(litellm, wire, status, f"Error code: {status} - {parsed}", body)


def _transport_error(litellm: ModuleType, wire: WireRoute, exc: Exception) -> Exception:
    if isinstance(exc, TimeoutError):
        return _mapped(litellm, wire, 500, "Request timed out.", None)
    return _mapped(litellm, wire, 500, "Connection error.", None)


# What a broken connection or a silent provider raises (aiohttp's timeouts are TimeoutErrors).
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
_timeouts: dict[float, aiohttp.ClientTimeout] = {}


def _idle_limit(seconds: float) -> aiohttp.ClientTimeout:
    """Connect within `seconds`, and no wait for the next bytes longer than that: a stalled
    provider fails, a long answer does not."""
    found = _timeouts.get(seconds)
    if found is None:
        found = _timeouts[seconds] = aiohttp.ClientTimeout(
            total=None, sock_connect=seconds, sock_read=seconds
        )
    return found


async def stream(
    litellm: ModuleType, wire: WireRoute, request: ChatRequest, idle_timeout: float
) -> AsyncIterator[StreamEvent]:
    """One streamed call: the adapter's events, or a litellm exception (the adapter retries)."""
    from app.llm.adapter import Finish, TextDelta, ToolCallDelta, Usage

    client = _client(wire)
    content = orjson.dumps(request_body(wire, request))
    try:
        response = await client.post(
            wire.url, data=content, timeout=_idle_limit(idle_timeout), proxy=wire.proxy
        )
    except _TRANSPORT_ERRORS as exc:
        raise _transport_error(litellm, wire, exc) from exc
    try:
        if response.status >= 400:
            try:
                raw = await response.read()
            except _TRANSPORT_ERRORS:
                raw = b""
            raise _status_error(litellm, wire, response.status, raw)
        reader = response.content  # decoded when the provider compressed it
        finish_reason: str | None = None
        usage: Usage | None = None
        saw_tool_call = False
        buffer = b""
        done = False
        while not done:
            try:
                data = await reader.readany()
            except _TRANSPORT_ERRORS as exc:
                raise _transport_error(litellm, wire, exc) from exc
            if not data:
                break
            buffer += data
            if b"\n" not in data:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, `event:`, `:` comments
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                chunk = orjson.loads(payload)
                error = chunk.get("error")
                if error:
                    message = error.get("message") if isinstance(error, dict) else error
                    raise _mapped(litellm, wire, 500, str(message or error), error)
                chunk_usage = chunk.get("usage")
                if chunk_usage and chunk_usage.get("prompt_tokens"):
                    usage = Usage(
                        chunk_usage["prompt_tokens"] or 0,
                        chunk_usage.get("completion_tokens") or 0,
                    )
                choices = chunk.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    text = delta.get("content")
                    if text:
                        yield TextDelta(text)
                    for call in delta.get("tool_calls") or ():
                        saw_tool_call = True
                        function = call.get("function") or {}
                        yield ToolCallDelta(
                            index=call.get("index") or 0,
                            id=call.get("id"),
                            name=function.get("name"),
                            arguments=function.get("arguments") or "",
                        )
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
    finally:
        response.release()
    # As litellm's stream wrapper reports it: tool calls that end with "stop" are tool_calls.
    if finish_reason is None or (finish_reason == "stop" and saw_tool_call):
        finish_reason = "tool_calls" if saw_tool_call else "stop"
    yield Finish(finish_reason, usage)
