"""Start-up benchmark: how soon `./dev serve` answers, and how much memory it holds.

    ./dev python -m bench.startup_bench [--repeat 5]

Starts the server exactly as the README does (`./dev serve --port P --data-dir D`, on the
embedded defaults), polls `/health` every 10 ms and reports, as medians over `--repeat` starts
(the first on an empty data dir, the rest on the data it left):
  * answer: time from launch to the first HTTP answer of `/health` (status "starting" or "ok");
  * ready:  time until `/health` says "ok" (database and vector index open);
  * RSS of the server process when idle (2 s after ready), and the number of processes in its
    tree (the launcher execs the server: one process, no resident wrapper);
  * once, after the first run (which loads litellm) against the fake upstream: that run's
    duration and the RSS then.
Every loop is bounded; the script exits by itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.fake_upstream import FakeUpstream
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(pid: int) -> list[str]:
    """Command names of pid and all its descendants."""
    names = [Path(f"/proc/{pid}/comm").read_text().strip()]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        names += process_tree(int(child))
    return names


class Start:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self.launched = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(ROOT / "dev"), "serve", "--port", str(self.port), "--data-dir", str(data_dir)],
            env={**os.environ, **env},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait(self, client: httpx.Client, timeout: float = 60.0) -> tuple[float, float]:
        """(seconds to the first answer, seconds to status ok)."""
        answered: float | None = None
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited early:\n{self.log.read_text()}")
            try:
                body = client.get(f"{self.base}/health", timeout=1).json()
            except httpx.HTTPError:
                time.sleep(0.01)
                continue
            elapsed = time.perf_counter() - self.launched
            answered = answered if answered is not None else elapsed
            if body.get("status") == "ok":
                return answered, elapsed
            time.sleep(0.01)
        raise SystemExit(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def first_run(client: httpx.Client, base: str) -> float:
    started = time.perf_counter()
    run = client.post(
        f"{base}/v1/threads/runs",
        json={
            "assistant_id": client.post(
                f"{base}/v1/assistants", json={"model": "fake-model"}
            ).json()["id"],
            "thread": {"messages": [{"role": "user", "content": "hello"}]},
        },
    ).json()
    deadline = time.perf_counter() + 60
    while run["status"] in ("queued", "in_progress") and time.perf_counter() < deadline:
        time.sleep(0.02)
        run = client.get(f"{base}/v1/threads/{run['thread_id']}/runs/{run['id']}").json()
    if run["status"] != "completed":
        raise SystemExit(f"first run ended {run['status']}: {run.get('last_error')}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    answers: list[float] = []
    readies: list[float] = []
    idle_rss: list[float] = []
    with FakeUpstream() as upstream, tempfile.TemporaryDirectory() as tmp, httpx.Client() as client:
        models = Path(tmp) / "models.yaml"
        models.write_text(
            "models:\n  - name: fake-model\n    model: openai/fake-model\n"
            f"    api_base: {upstream.base_url}\n    api_key: fake\n"
        )
        env = {"OPENGROVE_MODEL_CONFIG": str(models), "OPENGROVE_LOG_LEVEL": "warning"}
        data_dir = Path(tmp) / "data"
        for attempt in range(args.repeat):
            start = Start(data_dir, env)
            try:
                answer, ready = start.wait(client)
                time.sleep(2.0)
                rss = rss_mb(start.proc.pid)
                tree = process_tree(start.proc.pid)
                answers.append(answer)
                readies.append(ready)
                idle_rss.append(rss)
                print(
                    f"start {attempt + 1} ({'empty' if attempt == 0 else 'existing'} data dir): "
                    f"answer {answer:.2f} s, ready {ready:.2f} s, idle RSS {rss:.0f} MB, "
                    f"processes {tree}"
                )
                if attempt == args.repeat - 1:
                    took = first_run(client, start.base)
                    print(
                        f"first run (loads litellm): {took:.2f} s, "
                        f"RSS after it {rss_mb(start.proc.pid):.0f} MB"
                    )
                    took = first_run(client, start.base)
                    print(f"second run: {took:.3f} s")
            finally:
                start.stop()
    print(
        f"median of {args.repeat}: answers /health after {statistics.median(answers):.2f} s, "
        f"ready after {statistics.median(readies):.2f} s, "
        f"idle RSS {statistics.median(idle_rss):.0f} MB"
    )


if __name__ == "__main__":
    main()
