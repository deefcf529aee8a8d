"""What operators see: /metrics (Prometheus text) and the log, text and JSON.

Counters are read before and after what a test does, since the session server is shared.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import server_env
from tests.databases import fresh_database
from tests.fake_upstream import FakeReply, FakeUpstream
from tests.server_process import ServerProcess
from tests.spec_check import validate_sse_stream

RAW_ID = re.compile(r"(asst|thread|run|msg|step|file|vs|vsfb|req)_[A-Za-z0-9]{16,}")
SECRET = "sk-secret-0123456789abcdefXYZ"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_value(base_url: str, name: str, expected: float, timeout: float = 10) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base_url)
        if value(samples, name) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_streamed_run_shows_in_metrics(
    base_url: str, http: httpx.Client, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = client.beta.assistants.create(model="fake-model", instructions="Be brief.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "count"}])
    before = scrape(base_url)
    upstream.script(
        FakeReply(
            text="one two three four five",
            usage={"prompt_tokens": 41, "completion_tokens": 5},
            token_delay=0.1,
        )
    )
    runs_route = "/v1/threads/{thread_id}/runs"
    with http.stream(
        "POST", f"/threads/{thread.id}/runs", json={"assistant_id": assistant.id, "stream": True}
    ) as response:
        assert response.status_code == 200
        chunks = response.iter_text()
        text = next(chunks)
        # Open while the model still streams: the gauge counts this stream.
        during = scrape(base_url)
        assert value(during, "opengrove_sse_streams_open") >= 1
        text += "".join(chunks)
    events = validate_sse_stream(text)
    assert events[-2][0] == "thread.run.completed"
    run_id = events[-2][1]["id"]

    after = wait_for_value(base_url, "opengrove_sse_streams_open", 0)
    assert value(after, "opengrove_sse_streams_open") == 0

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Requests by route template, method and status; latency by route template and method.
    assert delta("opengrove_http_requests_total", route=runs_route, method="POST", status="200")
    assert delta("opengrove_http_request_duration_seconds_count", route=runs_route, method="POST")
    assert value(
        after, "opengrove_http_requests_total", route="/metrics", method="GET", status="200"
    )
    # The run's outcome, its model call's latency and the tokens the provider reported.
    assert delta("opengrove_run_outcomes_total", status="completed") == 1
    assert delta("opengrove_model_calls_total", model="fake-model", outcome="ok") == 1
    assert delta("opengrove_model_time_to_first_token_seconds_count", model="fake-model") == 1
    assert delta("opengrove_model_call_duration_seconds_count", model="fake-model") == 1
    # Five tokens 0.1 s apart: the whole call takes longer than its first token.
    total = delta("opengrove_model_call_duration_seconds_sum", model="fake-model")
    first = delta("opengrove_model_time_to_first_token_seconds_sum", model="fake-model")
    assert total >= 0.4 and 0 < first < total
    assert delta("opengrove_model_tokens_total", model="fake-model", type="prompt") == 41
    assert delta("opengrove_model_tokens_total", model="fake-model", type="completion") == 5
    # Database gauges: nothing is left queued or executing.
    assert value(after, "opengrove_run_queue_depth") == 0
    assert value(after, "opengrove_runs_active", status="in_progress") == 0
    assert value(after, "opengrove_run_lease_oldest_age_seconds") == 0
    # Never a raw id in a label: route templates only.
    ids = {assistant.id, thread.id, run_id}
    for name, labels in after:
        for _, label in labels:
            assert not RAW_ID.search(label) and label not in ids, (name, label)


def test_unmatched_routes_share_one_label(base_url: str) -> None:
    before = scrape(base_url)
    for _ in range(3):
        assert (
            httpx.get(f"{base_url}/no/such/route/asst_abcdefghijklmnopqrstuvwx").status_code == 404
        )
    after = scrape(base_url)
    labels = {"route": "unmatched", "method": "GET", "status": "404"}
    assert (
        value(after, "opengrove_http_requests_total", **labels)
        - value(before, "opengrove_http_requests_total", **labels)
        == 3
    )


def test_queue_and_ingestion_gauges(base_url: str, client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="metrics")
    file = client.files.create(file=("notes.txt", b"opengrove metrics notes"), purpose="assistants")
    client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=file.id)
    samples = scrape(base_url)
    assert value(samples, "opengrove_vector_store_files", status="completed") >= 1
    assert value(samples, "opengrove_ingestion_files_total", outcome="completed") >= 1
    for status in ("queued", "in_progress", "requires_action", "cancelling"):
        assert ("opengrove_runs_active", frozenset({("status", status)})) in samples


def run_with_provider_error(client: openai.OpenAI, upstream: FakeUpstream) -> Any:
    """A run whose provider answers 401 quoting the key it got (as some do): the adapter
    logs the error, from the run's task."""
    upstream.script(
        FakeReply.error(401, f"Incorrect API key provided: {SECRET}; header: Bearer {SECRET}")
    )
    assistant = client.beta.assistants.create(model="fake-model")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "hi"}]},
        poll_interval_ms=50,
    )
    assert run.status == "failed"
    return run


def test_text_log_names_the_run_and_hides_secrets(
    server: ServerProcess, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    run = run_with_provider_error(client, upstream)
    lines = [line for line in server.log().splitlines() if "model call failed" in line]
    ours = [line for line in lines if f"run_id={run.id}" in line]
    assert ours, lines[-3:]
    assert "Incorrect API key provided: sk-***" in ours[-1]
    assert "Bearer ***" in ours[-1]
    assert SECRET not in server.log()


@pytest.fixture(scope="module")
def json_server(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    """Two processes sharing the port, logging JSON, on a database of their own."""
    tmp = tmp_path_factory.mktemp("json-logs")
    with fresh_database(tmp) as url:
        env = server_env(url, fake_upstream, tmp / "config")
        env |= {
            "OPENGROVE_LOG_FORMAT": "json",
            "OPENGROVE_ACCESS_LOG": "true",
            "OPENGROVE_PROCESSES": "2",
        }
        server = ServerProcess(tmp / "data", env=env).start()
        try:
            yield server
        finally:
            server.stop()


def test_json_log_lines_carry_ids_and_no_secret(
    json_server: ServerProcess, upstream: FakeUpstream
) -> None:
    client = openai.OpenAI(base_url=f"{json_server.base_url}/v1", api_key=SECRET, max_retries=0)
    created = httpx.post(
        f"{json_server.base_url}/v1/assistants",
        json={"model": "fake-model"},
        headers={"Authorization": f"Bearer {SECRET}", "x-request-id": "req_metricstest0001"},
    )
    assert created.status_code == 200 and created.headers["x-request-id"] == "req_metricstest0001"
    run = run_with_provider_error(client, upstream)
    time.sleep(0.2)  # the log is written by other processes
    log = json_server.log()
    assert SECRET not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]  # JSON, every one
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    # Both worker processes started and logged through the same JSON handler.
    assert len([r for r in records if r["message"].startswith("Started server process")]) == 2
    access = [r for r in records if r.get("request_id") == "req_metricstest0001"]
    assert access and "POST /v1/assistants" in access[0]["message"]
    assert access[0]["logger"] == "uvicorn.access" and "project_id" in access[0]
    failed = [r for r in records if r.get("run_id") == run.id]
    assert failed and failed[-1]["level"] == "WARNING"
    assert "sk-***" in failed[-1]["message"] and "Bearer ***" in failed[-1]["message"]
    assert failed[-1]["project_id"]


def test_metrics_add_up_across_processes(json_server: ServerProcess) -> None:
    url = f"{json_server.base_url}/v1/models"

    def call(times: int) -> None:
        for _ in range(times):
            assert httpx.get(url).status_code == 200  # a connection each: any process answers

    threads = [threading.Thread(target=call, args=(5,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    labels = {"route": "/v1/models", "method": "GET", "status": "200"}
    # Each process counted the requests it served, in its own file...
    served = []
    for path in Path(json_server.data_dir, "metrics").glob("*/counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):
            served += [
                sample.value
                for sample in family.samples
                if sample.name == "opengrove_http_requests_total" and sample.labels == labels
            ]
    assert len(served) == 2 and sum(served) == 40, served
    # ...and whichever process answers the scrape reports both.
    for _ in range(4):
        assert value(scrape(json_server.base_url), "opengrove_http_requests_total", **labels) == 40
