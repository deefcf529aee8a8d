"""code_interpreter sandbox benchmark (the local bubblewrap backend, as the server runs it).

    ./dev python -m bench.sandbox_bench [--cold 5] [--warm 50] [--idle 10]

Prints medians:
  * cold start: a new thread's first call (`print(1)`), kernel launch included;
  * warm call: a call on a running kernel (`x = x + 1`), and one that prints 100 kB;
  * idle memory: PSS (shared pages split fairly) of each kernel's whole process tree (bwrap,
    its PID 1, ipykernel), bare and after `import numpy, pandas, matplotlib.pyplot` — and how
    many such idle kernels fit in 1 GB.
Every loop is bounded; the kernels are shut down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from app.config import Settings
from app.sandbox import create_sandbox
from app.sandbox.local import LocalKernel
from app.sandbox.pool import KernelPool


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_pss_mb(pid: int) -> float:
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        todo += tree.get(current, [])
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def pids(pool: KernelPool) -> list[int]:
    out = []
    for session in pool.sessions.values():
        kernel = session.kernel
        assert isinstance(kernel, LocalKernel) and kernel.proc is not None
        out.append(kernel.proc.pid)
    return out


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="og-bench-kernels-"))
    base.chmod(0o711)
    pool = create_sandbox(Settings(sandbox_dir=base, sandbox_max_kernels=1000))
    assert pool is not None
    reason = await pool.ready()
    if reason:
        raise SystemExit(f"sandbox unavailable: {reason}")
    print(f"backend: {pool.backend.name}, cores: {os.cpu_count()}")
    try:
        cold = []
        for i in range(args.cold):
            started = time.perf_counter()
            result = await pool.execute(f"cold-{i}", "print(1)")
            cold.append(time.perf_counter() - started)
            assert result.logs == "1\n", result
            await pool.shutdown(f"cold-{i}")
        print(
            f"cold start (first call of a thread): median {statistics.median(cold):.3f} s "
            f"(min {min(cold):.3f}, max {max(cold):.3f}, n={len(cold)})"
        )

        await pool.execute("warm", "x = 0")
        warm = []
        for _ in range(args.warm):
            started = time.perf_counter()
            await pool.execute("warm", "x = x + 1")
            warm.append(time.perf_counter() - started)
        big = []
        for _ in range(max(5, args.warm // 5)):
            started = time.perf_counter()
            result = await pool.execute("warm", "print('y' * 100_000)")
            big.append(time.perf_counter() - started)
        print(
            f"warm call: median {statistics.median(warm) * 1000:.1f} ms "
            f"(p90 {sorted(warm)[int(len(warm) * 0.9)] * 1000:.1f} ms, n={len(warm)}); "
            f"printing 100 kB: median {statistics.median(big) * 1000:.1f} ms"
        )
        await pool.shutdown("warm")

        for i in range(args.idle):
            await pool.execute(f"idle-{i}", "1")
        await asyncio.sleep(2)
        bare = [tree_pss_mb(pid) for pid in pids(pool)]
        for i in range(args.idle):
            await pool.execute(f"idle-{i}", "import numpy, pandas, matplotlib.pyplot as plt")
        await asyncio.sleep(2)
        loaded = [tree_pss_mb(pid) for pid in pids(pool)]
        for name, sizes in (("bare", bare), ("numpy+pandas+matplotlib imported", loaded)):
            per = statistics.median(sizes)
            print(
                f"idle kernel, {name}: median PSS {per:.1f} MB over {len(sizes)} kernels "
                f"-> {int(1024 // per)} idle kernels per GB"
            )
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--idle", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
