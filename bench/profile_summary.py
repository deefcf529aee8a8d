"""Summarise py-spy speedscope profiles of the server written by `runs_bench --profile DIR`.

    uv run python -m bench.profile_summary /tmp/prof/sqlite/throughput.speedscope.json [--top 30]

Prints, per thread with samples:
  * components: each sample is charged to one component by what its stack contains (first
    rule that matches, in the order listed), split into SQL / not-SQL;
  * the deepest opengrove frame (app/…) of each sample, inclusive, i.e. "which line of ours
    led to this CPU";
  * top self (leaf) frames and top inclusive frames.
py-spy charges time spent in C (uvloop, greenlet switches, socket syscalls) to the last
Python frame; for the main thread that is often `Runner.run` (the uvloop loop itself).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

APP = "/work/main/app/"

# (component, predicate over the stack's "file:function" strings), first match wins.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("LLM client: litellm/openai SDK/aiohttp (adapter.stream_chat)", ("llm/adapter.py:",)),
    ("litellm sync part in thread pool (completion())", ("litellm/",)),
    (
        "SSE response: sse_starlette + streaming._frames + events.follow",
        (
            "sse_starlette/",
            "runs/streaming.py:",
            "runs/events.py:follow",
            "runs/events.py:load_events",
        ),
    ),
    ("executor: event log commits (EventWriter.commit)", ("runs/events.py:EventWriter.commit",)),
    ("executor: build_prompt", ("runs/prompt.py:",)),
    (
        "executor: claim/maintenance loops",
        ("RunExecutor._claim_loop", "RunExecutor._maintenance_loop"),
    ),
    ("executor: other (state transitions, rendering, steps)", ("runs/executor.py:",)),
    (
        "API: create thread+run (service/router)",
        ("runs/service.py:", "runs/router.py:", "threads/service.py:", "assistants/service.py:"),
    ),
    (
        "API: FastAPI/Starlette request handling, validation",
        ("fastapi/", "starlette/", "app/main.py:"),
    ),
    ("HTTP server: uvicorn/httptools protocol", ("uvicorn/protocols/",)),
    ("aiosqlite worker thread", ("aiosqlite/",)),
    ("logging", ("logging/__init__.py",)),
]
SQL_MARKERS = ("sqlalchemy/", "aiosqlite/", "asyncpg/")


def frame_key(frame: dict) -> str:
    path = frame.get("file", "")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame['name']}"


def frame_label(frame: dict) -> str:
    path = frame.get("file", "")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{frame['name']} ({path}:{frame.get('line', '')})"


def component(keys: list[str]) -> str:
    for name, needles in COMPONENTS:
        for key in reversed(keys):  # innermost first does not matter for "contains"
            if any(n in key for n in needles):
                return name
    if any(m in k for k in keys for m in SQL_MARKERS):
        return "SQL in SQLAlchemy greenlets (py-spy cannot see the awaiting caller)"
    if keys and keys[-1].endswith(":Runner.run"):
        return "event loop itself (uvloop C code: I/O, callbacks; charged to Runner.run)"
    return "other"


def summarise(path: Path, top: int) -> None:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    keys = [frame_key(f) for f in frames]
    labels = [frame_label(f) for f in frames]
    print(f"##### {path}")
    for prof in data["profiles"]:
        samples = [s for s in prof["samples"] if s]
        total = len(samples)
        if total < 10:
            continue
        comp: collections.Counter[tuple[str, bool]] = collections.Counter()
        owner: collections.Counter[str] = collections.Counter()
        self_: collections.Counter[str] = collections.Counter()
        roots: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        for stack in samples:
            skeys = [keys[i] for i in stack]
            is_sql = any(m in k for k in skeys for m in SQL_MARKERS)
            name = component(skeys)
            comp[name, is_sql] += 1
            if name.startswith("SQL in SQLAlchemy greenlets"):
                roots[labels[stack[0]]] += 1
            ours = [labels[i] for i in stack if frames[i].get("file", "").startswith(APP)]
            owner[ours[-1] if ours else "(no opengrove frame)"] += 1
            self_[labels[stack[-1]]] += 1
            for label in {labels[i] for i in stack}:
                incl[label] += 1
        print(f"=== {prof['name']}: {total} samples")
        by_comp: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for (name, is_sql), n in comp.items():
            by_comp[name][0 if is_sql else 1] += n
        print(f"  {'component':78} {'all':>6} {'SQL':>6} {'other':>6}")
        for name, (sql, other) in sorted(by_comp.items(), key=lambda kv: -sum(kv[1])):
            print(
                f"  {name:78} {100 * (sql + other) / total:5.1f}% {100 * sql / total:5.1f}%"
                f" {100 * other / total:5.1f}%"
            )
        sql_all = sum(n for (_, s), n in comp.items() if s)
        print(
            f"  {'(SQL anywhere in stack: sqlalchemy/aiosqlite/asyncpg)':78} "
            f"{100 * sql_all / total:5.1f}%"
        )
        print("  -- greenlet SQL by the greenlet's root frame (the sync op being awaited)")
        for label, n in roots.most_common(8):
            print(f"  {100 * n / total:5.1f}%  {label}")
        print("  -- deepest opengrove frame (inclusive)")
        for label, n in owner.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {label}")
        print("  -- self (leaf)")
        for label, n in self_.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {label}")
        print("  -- inclusive")
        for label, n in incl.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.files:
        summarise(path, args.top)


if __name__ == "__main__":
    main()
