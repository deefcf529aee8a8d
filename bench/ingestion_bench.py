"""Ingestion through the API, on the embedded defaults (SQLite, Qdrant Edge), end to end.

    ./dev python -m bench.ingestion_bench [--small-files 1400] [--big-mb 200] [--skip-big]

Starts the real server (`opengrove serve`, a subprocess, 127.0.0.1, a temp data dir,
lexical search: no embedding model) and measures, each from the request that creates the
file batch to the batch reading `completed`:
  1. --small-files small text files (1-3 KB of prose-like text, one chunk each);
  2. --medium-files files of ~60 KB each (many chunks per file): chunks/s end to end;
  3. one --big-mb MB text file: wall time, chunks/s, and the server's peak RSS above its
     idle RSS (VmHWM sampled from /proc; RssAnon and RssFile at the peak sample), the same
     with the ingestion worker processes added (their VmHWM; the sampled sum), the CPU
     seconds per chunk of the server and its workers, plus the
     zip bomb (a 1 MB docx inflating to 1 GB) ending `failed` with `invalid_file`.
Uploads are not timed. The script stops the server and exits by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from tests.server_process import ServerProcess

WORDS = (
    "system data model network server client request response index search query result "
    "store file chunk token vector sparse dense score rank filter batch stream queue worker "
    "process thread memory disk cache lock lease retry error failure timeout limit page "
    "segment shard engine runtime project policy budget latency throughput window overlap "
    "parser format document section table figure appendix summary method analysis measure "
    "river mountain forest ocean desert valley island harbour bridge tower market garden "
    "kitchen library museum theatre station airport hospital school factory office studio"
).split()


def prose(rng: random.Random, n_words: int, tag: str) -> str:
    out: list[str] = []
    count = 0
    while count < n_words:
        k = rng.randint(6, 18)
        sentence = " ".join(rng.choice(WORDS) for _ in range(k))
        if rng.random() < 0.05:
            sentence += f" {tag}{count}"
        out.append(sentence.capitalize() + ".")
        count += k
        if rng.random() < 0.1:
            out.append("\n\n")
    return " ".join(out)


def rss(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) // 1024
    return values


def children(pid: int) -> list[int]:
    """The server's descendant processes (the ingestion worker processes)."""
    found: list[int] = []
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        for task in tasks:
            for child in (task / "children").read_text().split():
                found += [int(child), *children(int(child))]
    except OSError:
        pass
    return found


def children_rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (MB) summed over the server's descendants."""
    total = {"VmRSS": 0, "VmHWM": 0}
    for child in children(pid):
        try:
            values = rss(child)
        except OSError:
            continue
        total["VmRSS"] += values.get("VmRSS", 0)
        total["VmHWM"] += values.get("VmHWM", 0)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (living ones)."""
    total = 0.0
    for each in [pid, *children(pid)]:
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def upload(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    r = await client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "assistants"})
    r.raise_for_status()
    return r.json()["id"]


async def upload_path(client: httpx.AsyncClient, path: Path) -> str:
    with path.open("rb") as f:
        r = await client.post(
            "/v1/files",
            files={"file": (path.name, f)},
            data={"purpose": "assistants"},
            timeout=600,
        )
    r.raise_for_status()
    return r.json()["id"]


async def batch(
    client: httpx.AsyncClient, file_ids: list[str], sample_pid: int | None = None
) -> tuple[float, dict[str, Any], dict[str, int]]:
    """Create a store and a batch of the files; wait for the batch; return (seconds,
    batch, peak memory seen while waiting)."""
    store = (await client.post("/v1/vector_stores", json={"name": "bench"})).json()["id"]
    peak: dict[str, int] = {}
    peak_total = 0
    started = time.perf_counter()
    r = await client.post(f"/v1/vector_stores/{store}/file_batches", json={"file_ids": file_ids})
    r.raise_for_status()
    batch_id = r.json()["id"]
    while True:
        if sample_pid is not None:
            now = rss(sample_pid)
            if now["VmRSS"] >= peak.get("VmRSS", 0):
                peak = now
            peak_total = max(peak_total, now["VmRSS"] + children_rss(sample_pid)["VmRSS"])
        body = (await client.get(f"/v1/vector_stores/{store}/file_batches/{batch_id}")).json()
        if body["status"] != "in_progress":
            elapsed = time.perf_counter() - started
            if sample_pid is not None:
                peak["VmHWM"] = rss(sample_pid)["VmHWM"]
                peak["workers_VmHWM"] = children_rss(sample_pid)["VmHWM"]
                peak["total_sampled"] = peak_total
            body["vector_store_id"] = store
            return elapsed, body, peak
        await asyncio.sleep(0.05)


def zip_bomb(path: Path) -> None:
    """A docx-shaped zip whose one XML member inflates ~1000x."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w") as member:
            block = b"<w:t>" + b"0" * ((1 << 20) - 5)
            for _ in range(1024):
                member.write(block)


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="opengrove-ingestion-bench-") as tmp:
        root = Path(tmp)
        env = {"OPENGROVE_RATE_LIMITS": "false", "OPENGROVE_LOG_LEVEL": "warning"}
        if args.concurrency:
            env["OPENGROVE_INGESTION_CONCURRENCY"] = str(args.concurrency)
        server = ServerProcess(root / "data", env=env).start()
        assert server.proc is not None
        pid = server.proc.pid
        db = root / "data" / "opengrove.db"
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                idle = rss(pid)
                print(f"server idle: {idle}", flush=True)

                ids = await asyncio.gather(
                    *(
                        upload(
                            client,
                            f"small_{i}.txt",
                            prose(rng, rng.randint(150, 450), "s").encode(),
                        )
                        for i in range(args.small_files)
                    )
                )
                seconds, body, _ = await batch(client, list(ids))
                counts = body["file_counts"]
                print(
                    f"{args.small_files} small files: {seconds:.1f} s "
                    f"({args.small_files / seconds:,.0f} files/s), counts {counts}",
                    flush=True,
                )

                ids = []
                for i in range(args.medium_files):
                    ids.append(
                        await upload(client, f"medium_{i}.txt", prose(rng, 9000, "m").encode())
                    )
                seconds, body, _ = await batch(client, ids)
                store = body["vector_store_id"]
                chunks = count_chunks(db, store)
                print(
                    f"{args.medium_files} files of ~60 KB: {chunks:,} chunks in {seconds:.1f} s "
                    f"= {chunks / seconds:,.0f} chunks/s end to end, counts {body['file_counts']}",
                    flush=True,
                )

                bomb = root / "bomb.docx"
                zip_bomb(bomb)
                bomb_id = await upload_path(client, bomb)
                _, body, _ = await batch(client, [bomb_id])
                store = body["vector_store_id"]
                item = (await client.get(f"/v1/vector_stores/{store}/files/{bomb_id}")).json()
                print(
                    f"zip bomb ({bomb.stat().st_size:,} bytes -> 1 GiB): status {item['status']}, "
                    f"last_error {item['last_error']}",
                    flush=True,
                )

                if not args.skip_big:
                    big = root / "big.txt"
                    with big.open("w") as f:
                        written = 0
                        while written < args.big_mb << 20:
                            piece = prose(rng, 20_000, "b") + "\n\n"
                            f.write(piece)
                            written += len(piece)
                    big_id = await upload_path(client, big)
                    before = rss(pid)
                    cpu = cpu_seconds(pid)
                    seconds, body, peak = await batch(client, [big_id], sample_pid=pid)
                    cpu = cpu_seconds(pid) - cpu
                    store = body["vector_store_id"]
                    item = (await client.get(f"/v1/vector_stores/{store}/files/{big_id}")).json()
                    chunks = count_chunks(db, store)
                    print(
                        f"{args.big_mb} MB text file: {item['status']} {item['last_error']}, "
                        f"{chunks:,} chunks in {seconds:.1f} s ({chunks / seconds:,.0f} chunks/s; "
                        f"CPU {cpu * 1000 / max(chunks, 1):.2f} ms/chunk, server and workers); "
                        f"RSS before {before['VmRSS']} MB, peak sample {peak}, "
                        f"peak above idle {peak['VmHWM'] - idle['VmRSS']} MB (VmHWM - idle VmRSS); "
                        f"with the worker processes: sampled peak "
                        f"{peak['total_sampled'] - idle['VmRSS']} MB above idle, bound "
                        f"{peak['VmHWM'] + peak['workers_VmHWM'] - idle['VmRSS']} MB (server "
                        "VmHWM + workers' VmHWM - idle)",
                        flush=True,
                    )
        finally:
            server.stop()


def count_chunks(db: Path, store: str) -> int:
    """Chunks written to a store: the files' `chunk_count` column (the API does not show it),
    read from the server's SQLite file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(chunk_count), 0) FROM vector_store_files "
            "WHERE vector_store_id = ?",
            (store,),
        ).fetchone()
    return int(row[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-files", type=int, default=1400)
    parser.add_argument("--medium-files", type=int, default=60)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--seed", type=int, default=3)
    asyncio.run(run(parse(parser, argv)))


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
