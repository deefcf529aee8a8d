"""LLM call benchmark: server CPU per streamed chat call, by client stack.

    ./dev python -m bench.llm_call_bench [--calls 200] [--rounds 5] [--quick]

The fake OpenAI upstream runs in its own process (bench/upstream.py, token delay 0), so the
CPU measured here — `time.process_time()` deltas of this process, all its threads, around N
sequential calls — is the client side only: what a run's model call costs the server.

Each call streams one chat completion of ~13 SSE chunks (role, text tokens, finish, usage)
and reads it to the end, through:
  * litellm        `litellm.acompletion(..., stream=True)` as the adapter calls it, chunks
                   iterated (litellm set up by the adapter: no callbacks, quiet logging);
  * adapter/litellm `adapter.stream_chat` with OPENGROVE_LLM_FAST_PATH=false (the above plus
                   our event normalisation and retry wrapper);
  * fast path      `adapter.stream_chat` with the fast path on (app/llm/openai_wire.py):
                   what runs pay now for OpenAI-format providers;
  * openai SDK     one shared `openai.AsyncOpenAI`, `chat.completions.create(stream=True)`;
  * bare httpx     one shared `httpx.AsyncClient`, POST streamed, raw bytes read (no parsing).
Rounds interleave the variants; the table shows medians over rounds (and min/max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import openai

from app.llm import adapter
from app.llm.routing import ModelRoute
from bench.upstream import Upstream

PROMPT = "please repeat these nine words back to me now"
MESSAGES = [{"role": "user", "content": PROMPT}]
Call = Callable[[], Awaitable[int]]


def variants(base_url: str) -> dict[str, Call]:
    """name → one call returning chunks/events seen."""
    litellm = adapter._import_litellm()
    route = ModelRoute("fake-model", "openai/fake-model", api_base=base_url, api_key="k")
    request = adapter.ChatRequest(route=route, messages=MESSAGES)
    policy = adapter.RetryPolicy(attempts=1, timeout=30)
    litellm_policy = adapter.RetryPolicy(attempts=1, timeout=30, fast_path=False)
    kwargs = adapter._call_kwargs(litellm, request, policy.timeout)
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(30, read=None),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )
    body = json.dumps(
        {
            "model": "fake-model",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()

    async def via_litellm() -> int:
        n = 0
        async for _ in await litellm.acompletion(**kwargs):
            n += 1
        return n

    async def via_adapter() -> int:
        n = 0
        async for _ in adapter.stream_chat(request, policy):
            n += 1
        return n

    async def via_adapter_litellm() -> int:
        n = 0
        async for _ in adapter.stream_chat(request, litellm_policy):
            n += 1
        return n

    async def via_sdk() -> int:
        n = 0
        stream = await sdk.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            n += 1
        return n

    async def via_httpx() -> int:
        n = 0
        async with http.stream(
            "POST",
            f"{base_url}/chat/completions",
            content=body,
            headers={"authorization": "Bearer k", "content-type": "application/json"},
        ) as response:
            async for data in response.aiter_raw():
                n += data.count(b"data:")
        return n

    return {
        "litellm.acompletion": via_litellm,
        "adapter (litellm path)": via_adapter_litellm,
        "adapter (fast path)": via_adapter,
        "openai SDK AsyncOpenAI": via_sdk,
        "bare httpx stream": via_httpx,
    }


async def measure(call: Call, calls: int) -> tuple[float, float]:
    """(CPU ms per call, wall ms per call) over `calls` sequential calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (
        (time.process_time() - cpu) * 1000 / calls,
        (time.perf_counter() - wall) * 1000 / calls,
    )


async def bench(base_url: str, calls: int, rounds: int, warmup: int) -> None:
    table = variants(base_url)
    chunks = await table["bare httpx stream"]()
    events = await table["adapter (fast path)"]()
    print(f"{chunks} SSE data lines per call ({events} adapter events), {calls} calls x {rounds}")
    for call in table.values():
        for _ in range(warmup):
            await call()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in table}
    for _ in range(rounds):
        for name, call in table.items():
            results[name].append(await measure(call, calls))
    print()
    print(f"{'client stack':<26}{'CPU ms/call':>12}{'(min-max)':>16}{'wall ms/call':>14}")
    for name, samples in results.items():
        cpu = [s[0] for s in samples]
        wall = [s[1] for s in samples]
        spread = f"{min(cpu):.2f}-{max(cpu):.2f}"
        print(
            f"{name:<26}{statistics.median(cpu):>12.2f}{spread:>16}{statistics.median(wall):>14.2f}"
        )
    await adapter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="sequential calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="50 calls x 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds, args.warmup = 50, 3, 10
    with tempfile.TemporaryDirectory() as tmp:
        upstream = Upstream(Path(tmp) / "upstream.log").start()
        try:
            asyncio.run(bench(upstream.base_url, args.calls, args.rounds, args.warmup))
        finally:
            upstream.stop()


if __name__ == "__main__":
    main()
