"""code_interpreter end to end: the official SDK drives runs whose model (the fake upstream,
through litellm) calls `python`; the code runs in a real ipykernel inside the real bubblewrap
sandbox (and, last, on a real Jupyter Kernel Gateway). Escape attempts each come back as an
output, none succeeds, and the server stays healthy."""

from __future__ import annotations

import atexit
import io
import itertools
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import server_env
from tests.fake_upstream import FakeReply, FakeToolCall, FakeUpstream, last_tool_output
from tests.server_process import ServerProcess, free_port
from tests.spec_check import validate_sse_stream, validating_sdk_client

KERNEL_VENV = Path(__file__).resolve().parents[1] / ".kernel-venv"
IDLE_SECONDS = 8  # kernels of this module's server are reaped this soon (reaper every 2 s)
CALL_TIMEOUT = 6
# Not walked by the escape searches: kernel files, and /usr — the host's own, mounted
# read-only and the same for every kernel (nothing of the server's or of a thread can be
# written there); walking it can take longer than CALL_TIMEOUT on a busy machine.
WALK_SKIPPED = ("/proc", "/sys", "/usr")
PNG = b"\x89PNG\r\n\x1a\n"
CI = {"type": "code_interpreter"}


def sandbox_dir() -> Path:
    """Kernel workspaces must be reachable by the kernels' unprivileged users: not under
    pytest's own (private) temporary directory."""
    path = Path(tempfile.mkdtemp(prefix="og-test-kernels-"))
    path.chmod(0o711)
    atexit.register(shutil.rmtree, path, True)
    return path


def _env(database_url: str, upstream: FakeUpstream, data_dir: Path, **extra: str) -> dict:
    kernels = data_dir / "kernels"
    if not kernels.is_symlink():
        kernels.symlink_to(sandbox_dir())  # found from the data dir, removed with it
    return {
        **server_env(database_url, upstream, data_dir),
        "OPENGROVE_SANDBOX_IDLE_SECONDS": str(IDLE_SECONDS),
        "OPENGROVE_SANDBOX_CALL_TIMEOUT": str(CALL_TIMEOUT),
        "OPENGROVE_SANDBOX_DIR": str(kernels.resolve()),
        "OPENGROVE_LLM_TIMEOUT": "30",
        **extra,
    }


@contextmanager
def _client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with validating_sdk_client(server.base_url, timeout=60) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def ci_server(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, fake_upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("ci-server")
    proc = ServerProcess(data_dir, env=_env(database_url, fake_upstream, data_dir)).start()
    _wait_offered(proc)
    yield proc
    proc.stop()


def _wait_offered(proc: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "sandbox ready" not in proc.log():
        assert "is not offered" not in proc.log(), proc.log()
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ci(ci_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with _client(ci_server) as client:
        yield client


@pytest.fixture(scope="module")
def assistant(ci: openai.OpenAI) -> Any:
    return ci.beta.assistants.create(model="fake-model", tools=[CI])


def code_call(code: str, raw: bool = False) -> FakeReply:
    return FakeReply(tool_calls=[FakeToolCall("python", code if raw else {"code": code})])


def answer(text: str = "Done.") -> Callable[[dict[str, Any]], FakeReply]:
    """A final answer that first records what the tool returned to the model."""

    def reply(body: dict[str, Any]) -> FakeReply:
        outputs.append(last_tool_output(body))
        return FakeReply(text=text)

    outputs: list[str] = []
    reply.outputs = outputs  # type: ignore[attr-defined]
    return reply


def run_code(
    client: openai.OpenAI,
    upstream: FakeUpstream,
    assistant_id: str,
    code: str,
    *,
    thread_id: str | None = None,
    text: str = "Done.",
    raw: bool = False,
) -> tuple[Any, Any, str]:
    """One run in which the model runs `code` once, then answers: (run, tool call, output the
    model read)."""
    final = answer(text)
    upstream.script(code_call(code, raw), final)
    if thread_id is None:
        thread_id = client.beta.threads.create(messages=[{"role": "user", "content": "Run it."}]).id
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=50
    )
    assert run.status == "completed", run.last_error
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    call = steps[0].step_details.tool_calls[0]
    assert call.type == "code_interpreter"
    return run, call, final.outputs[0]


def logs_of(call: Any) -> str:
    return "".join(o.logs for o in call.code_interpreter.outputs if o.type == "logs")


# ---- what users get ---------------------------------------------------------------------


def test_computation_and_state_across_runs(
    ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    run, call, output = run_code(ci, upstream, assistant.id, "x = 6 * 7\nprint(x)")
    # The model was offered a python function, as OpenAI presents code_interpreter.
    offered = {t["function"]["name"]: t for t in upstream.requests[0]["tools"]}
    assert "python" in offered and "/mnt/data" in offered["python"]["function"]["description"]
    assert call.code_interpreter.input == "x = 6 * 7\nprint(x)"
    assert logs_of(call) == "42\n" and output.startswith("42")
    # A second run on the same thread sees the same kernel (raw-code arguments, too).
    _, call, output = run_code(
        ci, upstream, assistant.id, "print(x + 1)", thread_id=run.thread_id, raw=True
    )
    assert logs_of(call) == "43\n"
    # An exception is an output (the traceback), and the run goes on.
    _, call, output = run_code(ci, upstream, assistant.id, "1 / 0", thread_id=run.thread_id)
    assert "ZeroDivisionError" in logs_of(call) and "ZeroDivisionError" in output


def test_csv_from_tool_resources_and_attachments(ci: openai.OpenAI, upstream: FakeUpstream) -> None:
    sales = ci.files.create(
        file=("sales.csv", io.BytesIO(b"region,amount\nnorth,10\nsouth,32\n")),
        purpose="assistants",
    )
    notes = ci.files.create(file=("notes.txt", io.BytesIO(b"attached!")), purpose="assistants")
    analyst = ci.beta.assistants.create(
        model="fake-model",
        tools=[CI],
        tool_resources={"code_interpreter": {"file_ids": [sales.id]}},
    )
    thread = ci.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "Total?",
                "attachments": [{"file_id": notes.id, "tools": [CI]}],
            }
        ]
    )
    code = (
        "import pandas as pd\n"
        "df = pd.read_csv('/mnt/data/sales.csv')\n"
        "print(df.amount.sum(), open('/mnt/data/notes.txt').read())"
    )
    _, call, _ = run_code(ci, upstream, analyst.id, code, thread_id=thread.id)
    assert logs_of(call) == "42 attached!\n"
    description = upstream.requests[0]["tools"][0]["function"]["description"]
    assert "/mnt/data/sales.csv" in description and "/mnt/data/notes.txt" in description


def test_chart_comes_back_as_image_file(
    ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()"
    run, call, output = run_code(ci, upstream, assistant.id, code, text="Here is the chart.")
    images = [o for o in call.code_interpreter.outputs if o.type == "image"]
    assert len(images) == 1 and "1 image(s) displayed" in output
    file_id = images[0].image.file_id
    assert ci.files.retrieve(file_id).purpose == "assistants_output"
    assert ci.files.content(file_id).read().startswith(PNG)
    message = ci.beta.threads.messages.list(run.thread_id, run_id=run.id).data[0]
    assert [p.type for p in message.content] == ["text", "image_file"]
    assert message.content[1].image_file.file_id == file_id


def test_written_file_comes_back_through_file_path(
    ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    code = "import pandas as pd\npd.DataFrame({'a': [1, 2]}).to_csv('/mnt/data/report.csv')"
    link = "sandbox:/mnt/data/report.csv"
    run, _, output = run_code(
        ci, upstream, assistant.id, code, text=f"Download [the report]({link})."
    )
    assert "/mnt/data/report.csv" in output  # the model is told what the code wrote
    message = ci.beta.threads.messages.list(run.thread_id, run_id=run.id).data[0]
    text = message.content[0].text
    (annotation,) = text.annotations
    assert annotation.type == "file_path" and annotation.text == link
    assert text.value[annotation.start_index : annotation.end_index] == link
    made = ci.files.retrieve(annotation.file_path.file_id)
    assert made.purpose == "assistants_output" and made.filename == "report.csv"
    assert ci.files.content(made.id).read() == b",a\n0,1\n1,2\n"


def test_streamed_input_deltas_in_openai_order(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    code = 'for i in range(3):\n    print("line", i)'
    upstream.script(code_call(code), FakeReply(text="Printed."))
    thread = ci.beta.threads.create(messages=[{"role": "user", "content": "go"}])
    with httpx.stream(
        "POST",
        f"{ci_server.base_url}/v1/threads/{thread.id}/runs",
        json={"assistant_id": assistant.id, "stream": True},
        timeout=60,
    ) as response:
        events = validate_sse_stream("".join(response.iter_text()))
    names = [name for name, _ in events]
    first_step = names.index("thread.run.step.created")
    completed = names.index("thread.run.step.completed")
    tool_deltas = [
        data["delta"]["step_details"]["tool_calls"][0]
        for name, data in events[first_step:completed]
        if name == "thread.run.step.delta"
    ]
    opening, *inputs, last = tool_deltas
    assert opening["type"] == "code_interpreter" and opening["id"].startswith("call_")
    assert opening["code_interpreter"] == {"input": "", "outputs": []}
    assert len(inputs) > 1 and all(set(d["code_interpreter"]) == {"input"} for d in inputs)
    assert "".join(d["code_interpreter"]["input"] for d in inputs) == code
    assert last["code_interpreter"]["outputs"] == [
        {"index": 0, "type": "logs", "logs": "line 0\nline 1\nline 2\n"}
    ]
    step = events[completed][1]
    assert step["step_details"]["tool_calls"][0]["code_interpreter"]["input"] == code
    assert names[-2:] == ["thread.run.completed", "done"]


def test_sdk_stream_helper_sees_code_input(
    ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.script(code_call("print('hi')"), FakeReply(text="ok"))
    thread = ci.beta.threads.create(messages=[{"role": "user", "content": "go"}])
    inputs: list[str] = []
    logs: list[str] = []

    class Handler(openai.AssistantEventHandler):
        def on_tool_call_delta(self, delta: Any, snapshot: Any) -> None:
            if delta.type == "code_interpreter" and delta.code_interpreter:
                if delta.code_interpreter.input:
                    inputs.append(delta.code_interpreter.input)
                for output in delta.code_interpreter.outputs or []:
                    if output.type == "logs":
                        logs.append(output.logs)

    with ci.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=Handler()
    ) as stream:
        stream.until_done()
    assert "".join(inputs) == "print('hi')" and logs == ["hi\n"]


# ---- sessions: idle, deleted threads, restarts, timeouts ---------------------------------


def _workspace(server: ServerProcess, thread_id: str) -> list[Path]:
    return list((server.data_dir / "kernels").glob(f"p*/{thread_id}"))


def test_runaway_cell_is_interrupted_and_the_run_goes_on(
    ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    run, call, output = run_code(ci, upstream, assistant.id, "keep = 5\nwhile True:\n    pass")
    assert f"timed out after {CALL_TIMEOUT} seconds" in logs_of(call)
    assert "KeyboardInterrupt" in output
    _, call, _ = run_code(ci, upstream, assistant.id, "print(keep)", thread_id=run.thread_id)
    assert logs_of(call) == "5\n"  # interrupted, not restarted: state kept


def test_idle_kernels_are_reaped_and_deleted_threads_lose_theirs(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    idle, _, _ = run_code(ci, upstream, assistant.id, "y = 1")
    doomed, _, _ = run_code(ci, upstream, assistant.id, "open('f.txt', 'w').write('x')")
    assert _workspace(ci_server, doomed.thread_id)
    ci.beta.threads.delete(doomed.thread_id)
    # Its kernel ran in this process: it goes with the delete, not at the next reaping.
    assert not _workspace(ci_server, doomed.thread_id)
    time.sleep(IDLE_SECONDS + 3)
    assert not _workspace(ci_server, idle.thread_id)
    _, call, output = run_code(ci, upstream, assistant.id, "print(y)", thread_id=idle.thread_id)
    assert "session has expired" in logs_of(call) and "NameError" in output


def test_restart_loses_state_cleanly(
    tmp_path: Path, database_url: str, fake_upstream: FakeUpstream
) -> None:
    stack = ExitStack()
    server = ServerProcess(tmp_path, env=_env(database_url, fake_upstream, tmp_path)).start()
    try:
        _wait_offered(server)
        client = stack.enter_context(_client(server))
        helper = client.beta.assistants.create(model="fake-model", tools=[CI])
        fake_upstream.reset()
        run, _, _ = run_code(client, fake_upstream, helper.id, "z = 3")
        server.stop()
        server.start()
        _wait_offered(server)
        _, call, output = run_code(
            client, fake_upstream, helper.id, "print(z)", thread_id=run.thread_id
        )
        assert "session has expired" in output and "NameError" in logs_of(call)
    finally:
        stack.close()
        server.stop()


# ---- escape attempts: each is an output, none succeeds, the server stays healthy ----------


def _escape(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any, code: str
) -> str:
    _, call, _ = run_code(ci, upstream, assistant.id, code)
    assert httpx.get(f"{ci_server.base_url}/health", timeout=5).json()["status"] == "ok"
    return logs_of(call)


def test_escape_environment(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    code = (
        "import os, glob\n"
        "print(sorted(os.environ))\n"
        "for p in glob.glob('/proc/*/environ'):\n"
        "    try: print(p, open(p, 'rb').read())\n"
        "    except Exception as e: print(p, type(e).__name__)\n"
        "print(open('/proc/1/cmdline', 'rb').read())"
    )
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "/proc/1/environ" in logs  # it looked
    for secret in ("fake-key", "FAKE_UPSTREAM_KEY", "OPENAI_API_KEY", "DATABASE_URL"):
        assert secret not in logs


def test_escape_find_database_and_index(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    data_dir = str(ci_server.data_dir)
    code = (
        f"import os\nSKIPPED = {WALK_SKIPPED!r}\n"
        "hits = []\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    if root.startswith(SKIPPED): dirs[:] = []; continue\n"
        "    hits += [os.path.join(root, f) for f in files if 'opengrove' in f or 'qdrant' in f]\n"
        "    hits += [os.path.join(root, d) for d in dirs if d == 'qdrant']\n"
        "print('found', hits)\n"
        f"print(os.path.exists({data_dir!r}), os.path.exists('{data_dir}/opengrove.db'))\n"
        f"print(os.path.exists({str(Path.cwd())!r}))"
    )
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "found []" in logs and "False False\nFalse\n" in logs


def test_escape_network(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    targets = [("127.0.0.1", ci_server.port), ("127.0.0.1", urlport(upstream.base_url))]
    code = (
        "import socket\n"
        f"for host, port in {targets!r} + [('1.1.1.1', 443)]:\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try: s.connect((host, port)); print('CONNECTED', host, port)\n"
        "    except OSError as e: print('refused', host, port, type(e).__name__)\n"
        "import os; print(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys') "
        "else 'no /sys')"
    )
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "CONNECTED" not in logs and logs.count("refused") == 3


def urlport(url: str) -> int:
    return int(httpx.URL(url).port or 80)


def test_escape_fork_bomb(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            try:\n"
        "                while True: os.fork()\n"
        "            finally:\n"
        "                os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('fork refused after', n, type(e).__name__)"
    )
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "fork refused after" in logs or "timed out" in logs


def test_escape_memory_bomb(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    code = "hog = []\nwhile True:\n    hog.append(bytearray(256 * 1024 * 1024))"
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "MemoryError" in logs


def test_escape_write_outside_data(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    targets = ["/x", "/usr/x", "/etc/x", "/opt/kernel-venv/x", "/proc/x", "/dev/x", "/root/x"]
    code = (
        f"for p in {targets!r}:\n"
        "    try: open(p, 'w').write('x'); print('WROTE', p)\n"
        "    except OSError as e: print('refused', p, type(e).__name__)\n"
        "open('/tmp/ok', 'w').write('x'); open('/mnt/data/ok', 'w').write('x'); print('fine')"
    )
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "WROTE" not in logs and logs.count("refused") == len(targets) and "fine" in logs


def test_escape_other_threads_files(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    run_code(ci, upstream, assistant.id, "open('/mnt/data/secret.txt', 'w').write('s3cret')")
    code = (
        f"import os\nSKIPPED = {WALK_SKIPPED!r}\n"
        "found = []\n"
        "for r, ds, fs in os.walk('/'):\n"
        "    if r.startswith(SKIPPED): ds[:] = []; continue\n"
        "    found += [os.path.join(r, f) for f in fs if f == 'secret.txt']\n"
        f"print('found', found, os.path.exists({str(ci_server.data_dir / 'kernels')!r}))"
    )
    logs = _escape(ci_server, ci, upstream, assistant, code)
    assert "found [] False" in logs


def test_infinite_output_and_busy_server_stay_healthy(
    ci_server: ServerProcess, ci: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    logs = _escape(ci_server, ci, upstream, assistant, "while True:\n    print('x' * 1000)")
    assert "[output truncated]" in logs and "timed out" in logs


# ---- without a sandbox: not offered; the remote backend ----------------------------------


def test_not_offered_without_a_sandbox(
    tmp_path: Path, database_url: str, fake_upstream: FakeUpstream
) -> None:
    env = _env(
        database_url, fake_upstream, tmp_path, OPENGROVE_SANDBOX_BWRAP=str(tmp_path / "none")
    )
    stack = ExitStack()
    server = ServerProcess(tmp_path, env=env).start()
    try:
        deadline = time.monotonic() + 30
        while "is not offered" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert "bubblewrap (bwrap) was not found" in server.log()
        client = stack.enter_context(_client(server))
        helper = client.beta.assistants.create(model="fake-model", tools=[CI])
        fake_upstream.reset()
        fake_upstream.script(FakeReply(text="No tools here."))
        run = client.beta.threads.create_and_run_poll(
            assistant_id=helper.id,
            thread={"messages": [{"role": "user", "content": "hi"}]},
            poll_interval_ms=50,
        )
        assert run.status == "completed"
        assert not fake_upstream.requests[0].get("tools")
    finally:
        stack.close()
        server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    binary = KERNEL_VENV / "bin" / "jupyter-kernelgateway"
    assert binary.exists(), "./dev test installs the gateway into .kernel-venv"
    root = tmp_path_factory.mktemp("gateway")
    port, token = free_port(), secrets.token_hex(16)
    log = (root / "gateway.log").open("wb")
    env = {"PATH": f"{KERNEL_VENV}/bin:/usr/bin:/bin", "HOME": str(root), "LANG": "C.UTF-8"}
    proc = subprocess.Popen(
        [
            str(binary),
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}",
            f"--KernelGatewayApp.auth_token={token}",
            "--KernelGatewayApp.default_kernel_name=python3",
        ],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (root / "gateway.log").read_text()
        try:
            headers = {"Authorization": f"token {token}"}
            if httpx.get(f"{url}/api/kernelspecs", headers=headers, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (root / "gateway.log").read_text()
        time.sleep(0.2)
    yield url, token, root / "data"
    proc.terminate()
    proc.wait(timeout=15)
    log.close()
    shutil.rmtree(root / "data", ignore_errors=True)


def test_remote_backend_on_a_real_kernel_gateway(
    tmp_path: Path,
    database_url: str,
    fake_upstream: FakeUpstream,
    gateway: tuple[str, str, Path],
) -> None:
    url, token, root = gateway
    env = _env(
        database_url,
        fake_upstream,
        tmp_path,
        OPENGROVE_SANDBOX="remote",
        OPENGROVE_SANDBOX_URL=url,
        OPENGROVE_SANDBOX_TOKEN=token,
        OPENGROVE_SANDBOX_REMOTE_DIR=str(root),
    )
    stack = ExitStack()
    server = ServerProcess(tmp_path, env=env).start()
    try:
        _wait_offered(server)
        client = stack.enter_context(_client(server))
        sales = client.files.create(
            file=("sales.csv", io.BytesIO(b"amount\n40\n2\n")), purpose="assistants"
        )
        helper = client.beta.assistants.create(
            model="fake-model",
            tools=[CI],
            tool_resources={"code_interpreter": {"file_ids": [sales.id]}},
        )
        fake_upstream.reset()
        run, call, output = run_code(
            client,
            fake_upstream,
            helper.id,
            "import pandas as pd\ntotal = pd.read_csv('sales.csv').amount.sum()\nprint(total)",
        )
        assert logs_of(call) == "42\n", output
        description = fake_upstream.requests[0]["tools"][0]["function"]["description"]
        assert f"{root}/{run.thread_id}/sales.csv" in description
        chart = (
            "import matplotlib.pyplot as plt\nplt.bar(['a'], [total]); plt.show()\n"
            "open('out.txt', 'w').write(str(total))"
        )
        link = f"sandbox:{root}/{run.thread_id}/out.txt"
        run, call, _ = run_code(
            client, fake_upstream, helper.id, chart, thread_id=run.thread_id, text=f"See {link}"
        )
        (image,) = [o for o in call.code_interpreter.outputs if o.type == "image"]
        assert client.files.content(image.image.file_id).read().startswith(PNG)
        message = client.beta.threads.messages.list(run.thread_id, run_id=run.id).data[0]
        (annotation,) = message.content[0].text.annotations
        assert client.files.content(annotation.file_path.file_id).read() == b"42"
        assert [p.type for p in message.content] == ["text", "image_file"]
        # A runaway cell on the gateway is interrupted too.
        _, call, _ = run_code(
            client, fake_upstream, helper.id, "while True: pass", thread_id=run.thread_id
        )
        assert "timed out" in logs_of(call)
    finally:
        stack.close()
        server.stop()


def test_kernel_venv_is_not_the_servers() -> None:
    """The kernels' Python cannot import the server (its own venv, its own lock)."""
    probe = subprocess.run(
        [str(KERNEL_VENV / "bin" / "python"), "-c", "import app.config"],
        capture_output=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode != 0 and b"No module named 'app'" in probe.stderr
    lock = (Path(__file__).resolve().parents[1] / "sandbox" / "kernel" / "uv.lock").read_text()
    assert 'name = "pandas"' in lock and "sha256:" in lock


def test_code_streams_out_of_partial_json_arguments() -> None:
    from app.tools.code_interpreter import code_of, partial_code

    code = 'print("é\\t😀", 1 / 2)\nx = {"a": [1]}'
    arguments = json.dumps({"code": code})
    seen = [partial_code(arguments[:cut]) for cut in range(len(arguments) + 1)]
    assert seen[-1] == code and all(code.startswith(part) for part in seen)
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(seen))
    assert code_of(arguments) == code and code_of("print(1)") == "print(1)"
    assert code_of('{"code": "print(2)"') == "print(2)"  # a stream cut short


def test_node_sdk_computation_and_state(ci_server: ServerProcess, upstream: FakeUpstream) -> None:
    from tests.test_sdk_versions import node_script

    upstream.script(code_call("x = 6 * 7\nprint(x)"), answer(), code_call("print(x + 1)"), answer())
    result = node_script("code_interpreter.mjs", f"{ci_server.base_url}/v1", "fake-model")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 0 failed" in result.stdout
