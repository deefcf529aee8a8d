"""/v1/vector_stores through the official SDK: stores, files, batches, background ingestion
of many file types, search with filters and score thresholds, expiry, restarts, and the
service function the run executor uses."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import delete, update

from app.auth.models import DEFAULT_PROJECT_ID
from app.db import Database
from app.files.models import StoredFile
from app.retrieval.embeddings import drain_litellm_logging
from app.vector_stores.ingestion import cleanup_expired, reconcile
from app.vector_stores.models import VectorStore, VectorStoreFile
from app.vector_stores.search import search_stores
from tests.app_server import AppServer, make_settings
from tests.databases import fresh_database
from tests.fake_upstream import FakeUpstream
from tests.spec_check import validating_http_client
from tests.test_errors import error_of
from tests.test_retrieval import _pdf

VS_ID = re.compile(r"^vs_[A-Za-z0-9]{24}$")


def _docx(text: str) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Memo", level=1)
    document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# name -> (bytes, a phrase only that file contains)
DOCUMENTS: dict[str, tuple[bytes, str]] = {
    "plain.txt": (b"Notes: the ochre narwhal sings at dawn.", "ochre narwhal"),
    "readme.md": (b"# Readme\n\n* the *jade* capybara naps\n", "jade capybara"),
    "paper.pdf": (_pdf(["Abstract", "A magenta tortoise wins the race."]), "magenta tortoise"),
    "memo.docx": (_docx("The russet pangolin signs the memo."), "russet pangolin"),
    "page.html": (
        b"<html><head><script>var decoy='amber lemur';</script></head>"
        b"<body><p>An <b>amber</b> lemur waves.</p></body></html>",
        "amber lemur",
    ),
    "data.json": (json.dumps({"animal": "indigo wombat", "n": [1, 2]}).encode(), "indigo wombat"),
}


def upload(client: openai.OpenAI, name: str, data: bytes) -> Any:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="assistants")


def wait_for_store(client: openai.OpenAI, vector_store_id: str, timeout: float = 60) -> Any:
    """Poll until no file is in progress (the SDK has no vector_stores.create_and_poll)."""
    deadline = time.monotonic() + timeout
    while True:
        store = client.vector_stores.retrieve(vector_store_id)
        if store.status != "in_progress":
            return store
        assert time.monotonic() < deadline, store
        time.sleep(0.1)


def top_file(client: openai.OpenAI, vector_store_id: str, query: str) -> str | None:
    results = client.vector_stores.search(vector_store_id, query=query).data
    return results[0].file_id if results else None


# -- vector stores -----------------------------------------------------------------------


def test_vector_store_crud(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(
        name="Handbook",
        metadata={"team": "docs"},
        expires_after={"anchor": "last_active_at", "days": 7},
    )
    assert VS_ID.match(store.id) and store.object == "vector_store"
    assert store.name == "Handbook" and store.metadata == {"team": "docs"}
    assert store.status == "completed" and store.usage_bytes == 0
    assert store.file_counts.total == 0 and store.file_counts.in_progress == 0
    assert store.expires_after is not None and store.expires_after.days == 7
    assert store.expires_at == store.last_active_at + 7 * 86400  # type: ignore[operator]
    assert client.vector_stores.retrieve(store.id) == store

    updated = client.vector_stores.update(
        store.id, name="Renamed", metadata={"team": "eng"}, expires_after=None
    )
    assert updated.name == "Renamed" and updated.metadata == {"team": "eng"}
    assert updated.expires_after is None and updated.expires_at is None
    assert client.vector_stores.update(store.id, metadata={"k": "v"}).name == "Renamed"
    assert store.id in [s.id for s in client.vector_stores.list(limit=100)]

    deleted = client.vector_stores.delete(store.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        store.id,
        "vector_store.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError) as info:
        client.vector_stores.retrieve(store.id)
    assert info.value.body["message"] == f"No vector store found with id '{store.id}'."  # type: ignore[index]


def test_create_with_files_and_static_chunking(client: openai.OpenAI) -> None:
    words = " ".join(f"word{i}" for i in range(600)) + " the saffron axolotl hides here."
    file = upload(client, "long.txt", words.encode())
    store = client.vector_stores.create(
        name="chunked",
        file_ids=[file.id],
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50},
        },
    )
    assert store.status == "in_progress" or store.file_counts.completed == 1
    store = wait_for_store(client, store.id)
    assert store.status == "completed" and store.usage_bytes > len(words)  # overlap counted
    assert store.file_counts.completed == store.file_counts.total == 1
    vs_file = client.vector_stores.files.retrieve(file.id, vector_store_id=store.id)
    assert vs_file.status == "completed" and vs_file.last_error is None
    assert vs_file.chunking_strategy.type == "static"
    assert vs_file.chunking_strategy.static.max_chunk_size_tokens == 200  # type: ignore[union-attr]
    assert vs_file.chunking_strategy.static.chunk_overlap_tokens == 50  # type: ignore[union-attr]
    hit = client.vector_stores.search(store.id, query="saffron axolotl").data[0]
    assert hit.file_id == file.id and hit.filename == "long.txt"
    assert "saffron axolotl" in hit.content[0].text and 0 < hit.score <= 1


def test_every_file_type_is_searchable(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="types")
    batch = client.vector_stores.file_batches.upload_and_poll(
        store.id,
        files=[(name, io.BytesIO(data)) for name, (data, _) in DOCUMENTS.items()],
        poll_interval_ms=100,
    )
    assert batch.status == "completed", batch
    assert batch.file_counts.completed == batch.file_counts.total == len(DOCUMENTS)
    by_name = {}
    for vs_file in client.vector_stores.files.list(store.id, limit=100):
        by_name[client.files.retrieve(vs_file.id).filename] = vs_file.id
    for name, (_, phrase) in DOCUMENTS.items():
        assert top_file(client, store.id, phrase) == by_name[name], name
    # The HTML's script text is not indexed.
    results = client.vector_stores.search(store.id, query="decoy").data
    assert results == []
    content = client.vector_stores.files.content(by_name["memo.docx"], vector_store_id=store.id)
    assert "russet pangolin" in "".join(part.text or "" for part in content)


def test_failing_files_leave_the_rest_of_the_batch_alone(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="mixed")
    good = upload(client, "good.txt", b"The vermilion gecko is fine.")
    bad = {
        "empty.txt": (b"", "invalid_file"),
        "corrupt.pdf": (b"%PDF-1.4\nthis is not really a pdf", "invalid_file"),
        "corrupt.docx": (b"PK\x03\x04 broken zip", "invalid_file"),
        "binary.txt": (b"\x00\x01\x02\xff" * 100, "invalid_file"),
        "program.exe": (b"MZ\x90\x00", "unsupported_file"),
    }
    bad_ids = {name: upload(client, name, data).id for name, (data, _) in bad.items()}
    batch = client.vector_stores.file_batches.create_and_poll(
        store.id, file_ids=[good.id, *bad_ids.values()], poll_interval_ms=100
    )
    assert batch.status == "completed"
    counts = batch.file_counts
    assert (counts.completed, counts.failed, counts.in_progress) == (1, len(bad), 0)
    for name, (_, code) in bad.items():
        vs_file = client.vector_stores.files.retrieve(bad_ids[name], vector_store_id=store.id)
        assert vs_file.status == "failed" and vs_file.last_error is not None, name
        assert vs_file.last_error.code == code and vs_file.last_error.message, name
        assert vs_file.usage_bytes == 0
    failed = client.vector_stores.file_batches.list_files(
        batch.id, vector_store_id=store.id, filter="failed"
    )
    assert sorted(f.id for f in failed) == sorted(bad_ids.values())
    completed = client.vector_stores.files.list(store.id, filter="completed").data
    assert [f.id for f in completed] == [good.id]
    assert top_file(client, store.id, "vermilion gecko") == good.id
    assert client.vector_stores.retrieve(store.id).file_counts.failed == len(bad)


def test_attributes_filters_and_score_threshold(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="filters")
    # Average-length documents: very short ones saturate BM25 and every match scores 1.
    filler = b" ".join(b"filler%d" % i for i in range(250))
    red = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("red.txt", io.BytesIO(b"Quarterly figures: the teal heron budget grew. " + filler)),
        attributes={"team": "red", "year": 2023, "public": True},
        poll_interval_ms=100,
    )
    blue = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("blue.txt", io.BytesIO(b"Quarterly: the teal heron budget shrank. " + filler)),
        attributes={"team": "blue", "year": 2024, "public": False},
        poll_interval_ms=100,
    )
    assert red.status == blue.status == "completed"
    assert red.attributes == {"team": "red", "year": 2023, "public": True}

    def found(**kwargs: Any) -> list[str]:
        page = client.vector_stores.search(store.id, query="teal heron budget", **kwargs)
        return sorted(hit.file_id for hit in page.data)

    both = sorted([red.id, blue.id])
    assert found() == both
    assert found(filters={"type": "eq", "key": "team", "value": "red"}) == [red.id]
    assert found(filters={"type": "gt", "key": "year", "value": 2023}) == [blue.id]
    assert found(filters={"type": "in", "key": "team", "value": ["red", "blue"]}) == both
    assert found(
        filters={
            "type": "or",
            "filters": [
                {"type": "eq", "key": "public", "value": False},
                {"type": "lt", "key": "year", "value": 2000},
            ],
        }
    ) == [blue.id]
    assert found(max_num_results=1) in ([red.id], [blue.id])

    # score_threshold: red holds every query term, blue misses "grew", so scores lower.
    scores = {
        hit.file_id: hit.score
        for hit in client.vector_stores.search(store.id, query="teal heron grew").data
    }
    assert scores[red.id] > scores[blue.id] > 0
    cut = (scores[red.id] + scores[blue.id]) / 2
    above = client.vector_stores.search(
        store.id, query="teal heron grew", ranking_options={"score_threshold": cut}
    )
    assert [hit.file_id for hit in above.data] == [red.id]

    updated = client.vector_stores.files.update(
        red.id, vector_store_id=store.id, attributes={"team": "green"}
    )
    assert updated.attributes == {"team": "green"}
    assert found(filters={"type": "eq", "key": "team", "value": "green"}) == [red.id]
    assert found(filters={"type": "eq", "key": "team", "value": "red"}) == []
    hit = client.vector_stores.search(
        store.id, query="grew", filters={"type": "eq", "key": "team", "value": "green"}
    ).data[0]
    assert hit.attributes == {"team": "green"}


def test_search_query_list_and_request_fields(client: openai.OpenAI, http: httpx.Client) -> None:
    store = client.vector_stores.create(name="queries")
    client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("a.txt", io.BytesIO(b"The lilac ferret and the olive newt.")),
        poll_interval_ms=100,
    )
    page = client.vector_stores.search(
        store.id,
        query=["lilac ferret", "olive newt"],
        rewrite_query=True,
        ranking_options={"ranker": "auto", "score_threshold": 0.0},
    )
    # rewrite_query: one model call per query (the fake upstream's model echoes it back);
    # search_query says what was searched.
    assert page.search_query == ["Echo: lilac ferret", "Echo: olive newt"]  # type: ignore[attr-defined]
    assert len(page.data) == 1 and page.has_more is False
    plain = client.vector_stores.search(store.id, query="lilac ferret", rewrite_query=False)
    assert plain.search_query == ["lilac ferret"]  # type: ignore[attr-defined]
    fast = client.vector_stores.search(
        store.id, query="lilac ferret", ranking_options={"ranker": "none", "score_threshold": 0.0}
    )
    assert [d.file_id for d in fast.data] == [d.file_id for d in plain.data]
    for body, param in [
        ({"query": "x", "max_num_results": 0}, "max_num_results"),
        ({"query": "x", "max_num_results": 51}, "max_num_results"),
        ({"query": "x", "ranking_options": {"score_threshold": 1.5}}, None),
        ({"query": "x", "filters": {"type": "eq", "key": "k"}}, "filters"),
        ({"query": "x", "filters": {"type": "like", "key": "k", "value": 1}}, "filters"),
        ({"query": ""}, "query"),
        ({}, "query"),
        ({"query": "x", "bogus": 1}, "bogus"),
    ]:
        error = error_of(http.post(f"/vector_stores/{store.id}/search", json=body), 400)
        if param is not None:
            assert error["param"] == param, (body, error)


def test_detach_and_delete_file(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="detach")
    other = client.vector_stores.create(name="detach-other")
    file = upload(client, "gone.txt", b"A chartreuse quokka was here.")
    for vs in (store, other):
        attached = client.vector_stores.files.create_and_poll(
            file.id, vector_store_id=vs.id, poll_interval_ms=100
        )
        assert attached.status == "completed"
    assert top_file(client, store.id, "chartreuse quokka") == file.id

    deleted = client.vector_stores.files.delete(file.id, vector_store_id=store.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        file.id,
        "vector_store.file.deleted",
        True,
    )
    assert top_file(client, store.id, "chartreuse quokka") is None
    assert client.vector_stores.retrieve(store.id).file_counts.total == 0
    assert client.files.retrieve(file.id).id == file.id  # the file itself stays
    assert top_file(client, other.id, "chartreuse quokka") == file.id

    # Deleting the file removes it from every vector store.
    client.files.delete(file.id)
    assert top_file(client, other.id, "chartreuse quokka") is None
    assert client.vector_stores.files.list(other.id).data == []
    with pytest.raises(openai.NotFoundError) as info:
        client.vector_stores.files.retrieve(file.id, vector_store_id=other.id)
    assert info.value.body["message"] == (  # type: ignore[index]
        f"No file found with id '{file.id}' in vector store '{other.id}'."
    )


def test_deleting_a_store_removes_its_files_and_chunks(client: openai.OpenAI) -> None:
    file = upload(client, "shared.txt", b"The cobalt marmot lives in two stores.")
    doomed = client.vector_stores.create(name="doomed", file_ids=[file.id])
    kept = client.vector_stores.create(name="kept", file_ids=[file.id])
    wait_for_store(client, doomed.id)
    wait_for_store(client, kept.id)
    client.vector_stores.delete(doomed.id)
    assert top_file(client, kept.id, "cobalt marmot") == file.id
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.list(doomed.id)


def test_list_files_pagination(client: openai.OpenAI) -> None:
    ids = [upload(client, f"p{i}.txt", f"page {i} mauve".encode()).id for i in range(3)]
    store = client.vector_stores.create(name="pages", file_ids=ids)
    wait_for_store(client, store.id)
    listed = [f.id for f in client.vector_stores.files.list(store.id, order="asc")]
    assert sorted(listed) == sorted(ids)
    first = client.vector_stores.files.list(store.id, limit=2, order="asc")
    assert len(first.data) == 2 and first.has_more
    rest = client.vector_stores.files.list(store.id, limit=2, order="asc", after=first.data[-1].id)
    assert [f.id for f in first.data + rest.data] == listed and not rest.has_more
    assert client.vector_stores.files.list(store.id, filter="in_progress").data == []


def test_reattaching_reprocesses_with_new_settings(client: openai.OpenAI) -> None:
    file = upload(client, "again.txt", b"The beige ibis returns.")
    store = client.vector_stores.create(name="again")
    client.vector_stores.files.create_and_poll(file.id, vector_store_id=store.id)
    again = client.vector_stores.files.create_and_poll(
        file.id,
        vector_store_id=store.id,
        attributes={"v": 2},
        chunking_strategy={
            "type": "static",
            "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0},
        },
    )
    assert again.status == "completed" and again.attributes == {"v": 2}
    assert again.chunking_strategy.static.max_chunk_size_tokens == 100  # type: ignore[union-attr]
    assert client.vector_stores.retrieve(store.id).file_counts.total == 1
    hit = client.vector_stores.search(store.id, query="beige ibis").data
    assert len(hit) == 1 and hit[0].attributes == {"v": 2}


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "/vector_stores/vs_nope", None, "No vector store found with id 'vs_nope'."),
        ("POST", "/vector_stores/vs_nope", {}, "No vector store found with id 'vs_nope'."),
        ("DELETE", "/vector_stores/vs_nope", None, "No vector store found with id 'vs_nope'."),
        (
            "POST",
            "/vector_stores/vs_nope/files",
            {"file_id": "file-x"},
            "No vector store found with id 'vs_nope'.",
        ),
        ("GET", "/vector_stores/vs_nope/files", None, "No vector store found with id 'vs_nope'."),
        (
            "POST",
            "/vector_stores/vs_nope/search",
            {"query": "x"},
            "No vector store found with id 'vs_nope'.",
        ),
        (
            "POST",
            "/vector_stores/vs_nope/file_batches",
            {"file_ids": ["file-x"]},
            "No vector store found with id 'vs_nope'.",
        ),
        ("GET", "/files/file-nope", None, "No file found with id 'file-nope'."),
        ("DELETE", "/files/file-nope", None, "No file found with id 'file-nope'."),
        ("GET", "/files/file-nope/content", None, "No file found with id 'file-nope'."),
        (
            "POST",
            "/vector_stores",
            {"file_ids": ["file-nope"]},
            "No file found with id 'file-nope'.",
        ),
    ],
)
def test_unknown_ids(
    http: httpx.Client, method: str, path: str, body: dict[str, Any] | None, message: str
) -> None:
    error = error_of(http.request(method, path, json=body), 404)
    assert error["message"] == message and error["type"] == "invalid_request_error"


def test_unknown_ids_inside_a_store(client: openai.OpenAI, http: httpx.Client) -> None:
    store = client.vector_stores.create(name="ids")
    base = f"/vector_stores/{store.id}"
    missing_file = f"No file found with id 'file-nope' in vector store '{store.id}'."
    assert error_of(http.get(f"{base}/files/file-nope"), 404)["message"] == missing_file
    assert error_of(http.delete(f"{base}/files/file-nope"), 404)["message"] == missing_file
    assert (
        error_of(http.post(f"{base}/files/file-nope", json={"attributes": {}}), 404)["message"]
        == missing_file
    )
    assert (
        error_of(http.post(f"{base}/files", json={"file_id": "file-nope"}), 404)["message"]
        == "No file found with id 'file-nope'."
    )
    for path in (f"{base}/file_batches/vsfb_nope", f"{base}/file_batches/vsfb_nope/files"):
        error = error_of(http.get(path), 404)
        assert error["message"] == "No vector store file batch found with id 'vsfb_nope'."
    cancel = http.post(f"{base}/file_batches/vsfb_nope/cancel")
    assert error_of(cancel, 404)["message"].startswith("No vector store file batch found")
    assert client.vector_stores.retrieve(store.id).file_counts.total == 0


BAD_STORE_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"name": 5}, "name"),
    ({"name": "x" * 257}, "name"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after.anchor"),
    ({"expires_after": {"anchor": "last_active_at", "days": 0}}, "expires_after.days"),
    ({"expires_after": {"anchor": "last_active_at", "days": 366}}, "expires_after.days"),
    ({"bogus": True}, "bogus"),
]


@pytest.mark.parametrize(("body", "param"), BAD_STORE_BODIES)
def test_bad_store_input_changes_nothing(
    client: openai.OpenAI, http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    store = http.post("/vector_stores", json={"name": "stable", "metadata": {"a": "b"}}).json()
    before = http.get("/vector_stores", params={"limit": 100}).json()["data"]
    assert error_of(http.post("/vector_stores", json=body), 400)["param"] == param
    assert error_of(http.post(f"/vector_stores/{store['id']}", json=body), 400)["param"] == param
    assert http.get(f"/vector_stores/{store['id']}").json() == store
    assert http.get("/vector_stores", params={"limit": 100}).json()["data"] == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"file_id": "F", "attributes": {f"k{i}": 1 for i in range(17)}}, "attributes"),
        ({"file_id": "F", "attributes": {"k" * 65: 1}}, "attributes"),
        ({"file_id": "F", "attributes": {"k": "v" * 513}}, "attributes"),
        ({"file_id": "F", "attributes": {"k": [1]}}, "attributes"),
        ({"file_id": "F", "attributes": {"k": {"x": 1}}}, "attributes"),
        (
            {
                "file_id": "F",
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0},
                },
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        (
            {
                "file_id": "F",
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0},
                },
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        (
            {
                "file_id": "F",
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101},
                },
            },
            "chunking_strategy.static",
        ),
        ({"file_id": "F", "chunking_strategy": {"type": "other"}}, "chunking_strategy"),
        ({}, "file_id"),
    ],
)
def test_bad_file_input_changes_nothing(
    client: openai.OpenAI, http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    store = client.vector_stores.create(name="strict")
    file = upload(client, "f.txt", b"content")
    if "file_id" in body:
        body = {**body, "file_id": file.id}
    error = error_of(http.post(f"/vector_stores/{store.id}/files", json=body), 400)
    assert error["param"] == param, error
    batch_body = {k: v for k, v in body.items() if k != "file_id"}
    if batch_body:  # the same mistakes in a batch
        batch = http.post(
            f"/vector_stores/{store.id}/file_batches", json={"file_ids": [file.id], **batch_body}
        )
        error_of(batch, 400)
    assert client.vector_stores.files.list(store.id).data == []
    assert client.vector_stores.retrieve(store.id).file_counts.total == 0


def test_bad_batches(client: openai.OpenAI, http: httpx.Client) -> None:
    store = client.vector_stores.create(name="batches")
    file = upload(client, "b.txt", b"batch")
    path = f"/vector_stores/{store.id}/file_batches"
    assert "file_ids" in error_of(http.post(path, json={}), 400)["message"]
    error_of(http.post(path, json={"file_ids": []}), 400)
    error_of(http.post(path, json={"file_ids": [file.id], "files": [{"file_id": file.id}]}), 400)
    missing = error_of(http.post(path, json={"file_ids": [file.id, "file-nope"]}), 404)
    assert missing["message"] == "No file found with id 'file-nope'."
    assert client.vector_stores.files.list(store.id).data == []


def test_update_attributes_validation(client: openai.OpenAI, http: httpx.Client) -> None:
    store = client.vector_stores.create(name="attrs")
    file = upload(client, "a.txt", b"The taupe egret.")
    vs_file = client.vector_stores.files.create_and_poll(
        file.id, vector_store_id=store.id, attributes={"a": 1}
    )
    path = f"/vector_stores/{store.id}/files/{file.id}"
    assert error_of(http.post(path, json={}), 400)["param"] == "attributes"
    assert error_of(http.post(path, json={"attributes": {"a": [1]}}), 400)["param"] == (
        "attributes"
    )
    assert client.vector_stores.files.retrieve(file.id, vector_store_id=store.id) == vs_file
    cleared = client.vector_stores.files.update(file.id, vector_store_id=store.id, attributes=None)
    assert cleared.attributes in ({}, None)


# -- file batches with paused ingestion, restarts, expiry, embeddings ----------------------


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A data dir and database that several in-process servers share in turn."""
    data_dir = tmp_path_factory.mktemp("vs-app")
    with fresh_database(data_dir) as url:
        yield data_dir / "data", url


@contextmanager
def sdk(server: AppServer) -> Iterator[openai.OpenAI]:
    with validating_http_client() as http_client:
        yield openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="k", http_client=http_client, max_retries=0
        )


def test_cancel_batch_and_resume_after_restart(database: tuple[Path, str]) -> None:
    data_dir, url = database
    # Concurrency 0: nothing is ingested, so batches stay in progress as long as we like.
    with AppServer(make_settings(data_dir, url, ingestion_concurrency=0)) as paused:
        with sdk(paused) as client:
            store = client.vector_stores.create(name="paused")
            first = [upload(client, f"c{i}.txt", b"The plum jackal.").id for i in range(3)]
            later = [upload(client, f"r{i}.txt", b"The sepia ocelot.").id for i in range(2)]
            batch = client.vector_stores.file_batches.create(store.id, file_ids=first)
            assert batch.status == "in_progress" and batch.file_counts.in_progress == 3
            cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
            assert cancelled.status == "cancelled"
            assert (cancelled.file_counts.cancelled, cancelled.file_counts.in_progress) == (3, 0)
            files = client.vector_stores.file_batches.list_files(
                batch.id, vector_store_id=store.id, filter="cancelled"
            )
            assert sorted(f.id for f in files) == sorted(first)
            pending = client.vector_stores.file_batches.create(store.id, file_ids=later)
            assert client.vector_stores.retrieve(store.id).status == "in_progress"
    # A restarted server picks up what was left in progress.
    with AppServer(make_settings(data_dir, url)) as resumed:
        with sdk(resumed) as client:
            done = client.vector_stores.file_batches.poll(
                pending.id, vector_store_id=store.id, poll_interval_ms=100
            )
            assert done.status == "completed" and done.file_counts.completed == 2
            assert top_file(client, store.id, "sepia ocelot") in later
            assert top_file(client, store.id, "plum jackal") is None  # cancelled files
            store_now = client.vector_stores.retrieve(store.id)
            assert store_now.status == "completed"
            assert (store_now.file_counts.cancelled, store_now.file_counts.completed) == (3, 2)
            with pytest.raises(openai.BadRequestError):
                client.vector_stores.file_batches.cancel(done.id, vector_store_id=store.id)


def test_expiry_and_cleanup(database: tuple[Path, str]) -> None:
    data_dir, url = database
    settings = make_settings(data_dir, url)
    with AppServer(settings) as server:
        with sdk(server) as client:
            file = upload(client, "old.txt", b"The khaki puffin.")
            keep = upload(client, "keep.txt", b"The khaki puffin stays.")
            store = client.vector_stores.create(
                name="ephemeral",
                file_ids=[file.id, keep.id],
                expires_after={"anchor": "last_active_at", "days": 1},
            )
            wait_for_store(client, store.id)
            before = client.vector_stores.retrieve(store.id).last_active_at
            time.sleep(1.1)
            client.vector_stores.search(store.id, query="khaki puffin")  # activity
            after = client.vector_stores.retrieve(store.id)
            assert after.last_active_at > before  # type: ignore[operator]
            assert after.expires_at == after.last_active_at + 86400  # type: ignore[operator]

            async def backdate() -> None:
                db: Database = server.runtime.db
                async with db.sessionmaker() as session:
                    await session.execute(
                        update(VectorStore)
                        .where(VectorStore.id == store.id)
                        .values(expires_at=int(time.time()) - 60)  # expired a minute ago
                    )
                    await session.execute(
                        update(StoredFile).where(StoredFile.id == file.id).values(expires_at=1)
                    )
                    await session.commit()

            server.call(backdate())
            # Past expires_at reads as expired (and gone, for files) before any cleanup.
            assert client.vector_stores.retrieve(store.id).status == "expired"
            with pytest.raises(openai.NotFoundError):
                client.files.retrieve(file.id)
            with pytest.raises(openai.BadRequestError):
                client.vector_stores.search(store.id, query="khaki puffin")
            with pytest.raises(openai.BadRequestError):
                client.vector_stores.files.create(vector_store_id=store.id, file_id=keep.id)

            runtime = server.runtime
            assert runtime.index is not None
            result = server.call(cleanup_expired(runtime.db, runtime.index, settings))
            assert result == {
                "vector_stores_expired": 1,
                "vector_stores_purged": 0,  # expired, kept for the grace period
                "files_deleted": 1,
            }
            assert not (settings.files_dir / file.id).exists()
            assert (settings.files_dir / keep.id).exists()
            assert [f.id for f in client.vector_stores.files.list(store.id)] == [keep.id]
            assert client.vector_stores.retrieve(store.id).status == "expired"
            assert server.call(cleanup_expired(runtime.db, runtime.index, settings)) == {
                "vector_stores_expired": 0,
                "vector_stores_purged": 0,
                "files_deleted": 0,
            }
            assert server.call(runtime.index.count_chunks(store.id)) > 0
            # Past the grace period the store goes: rows and chunks.
            no_grace = settings.model_copy(update={"expired_store_grace_days": 0})
            result = server.call(cleanup_expired(runtime.db, runtime.index, no_grace))
            assert result["vector_stores_purged"] == 1
            with pytest.raises(openai.NotFoundError):
                client.vector_stores.retrieve(store.id)
            assert server.call(runtime.index.count_chunks(store.id)) == 0


def test_reconcile_and_retried_deletes(database: tuple[Path, str]) -> None:
    """Chunks whose store or store file vanished behind the index's back (a crash between
    the commit and the index delete) are removed by `reconcile`; a delete that failed is
    queued and retried by the index's upkeep."""
    data_dir, url = database
    with AppServer(make_settings(data_dir, url)) as server:
        with sdk(server) as client:
            a = upload(client, "a.txt", b"The teal heron.")
            b = upload(client, "b.txt", b"The teal heron again.")
            gone = client.vector_stores.create(name="gone", file_ids=[a.id])
            kept = client.vector_stores.create(name="kept", file_ids=[a.id, b.id])
            wait_for_store(client, gone.id)
            wait_for_store(client, kept.id)
            runtime = server.runtime
            index = runtime.index
            assert index is not None

            async def forget_rows() -> None:  # as if the process died before the index delete
                async with runtime.db.sessionmaker() as session:
                    await session.execute(delete(VectorStore).where(VectorStore.id == gone.id))
                    await session.execute(
                        delete(VectorStoreFile).where(
                            VectorStoreFile.vector_store_id == kept.id, VectorStoreFile.id == b.id
                        )
                    )
                    await session.commit()

            server.call(forget_rows())
            assert server.call(index.count_chunks(gone.id)) == 1
            removed = server.call(reconcile(runtime.db, index))
            assert removed == {"stores": 1, "files": 1}
            assert server.call(index.count_chunks(gone.id)) == 0
            assert server.call(index.count_chunks(kept.id, b.id)) == 0
            assert server.call(index.count_chunks(kept.id, a.id)) == 1
            assert server.call(reconcile(runtime.db, index)) == {"stores": 0, "files": 0}

            backend = server.call(index.backend())
            original = backend.delete_file
            failures = [RuntimeError("index down")]

            async def flaky(store_id: str | None, file_id: str) -> None:
                if failures:
                    raise failures.pop()
                await original(store_id, file_id)

            backend.delete_file = flaky
            try:
                client.vector_stores.files.delete(a.id, vector_store_id=kept.id)  # no 500
                assert index.pending_deletes == [("file", kept.id, a.id)]
                assert server.call(index.count_chunks(kept.id, a.id)) == 1
                server.call(index.maintain())
                assert index.pending_deletes == []
                assert server.call(index.count_chunks(kept.id, a.id)) == 0
            finally:
                backend.delete_file = original


def test_search_service_for_the_run_executor(database: tuple[Path, str]) -> None:
    data_dir, url = database
    with AppServer(make_settings(data_dir, url)) as server:
        with sdk(server) as client:
            file = upload(client, "tool.txt", b"The scarlet bison guards the archive.")
            store = client.vector_stores.create(name="tool", file_ids=[file.id])
            wait_for_store(client, store.id)
            runtime = server.runtime
            assert runtime.index is not None

            async def run(*queries: str, **kwargs: Any) -> list[Any]:
                async with runtime.db.sessionmaker() as session:
                    return await search_stores(
                        session,
                        runtime.index,
                        None,
                        DEFAULT_PROJECT_ID,
                        [store.id, "vs_missing"],
                        list(queries),
                        max_num_results=kwargs.pop("max_num_results", 5),
                        score_threshold=kwargs.pop("score_threshold", 0.0),
                        **kwargs,
                    )

            hits = server.call(run("scarlet bison"))
            assert len(hits) == 1
            hit = hits[0]
            assert (hit.file_id, hit.filename) == (file.id, "tool.txt")
            assert "scarlet bison" in hit.text and 0 < hit.score <= 1
            assert server.call(run("scarlet bison", score_threshold=1.0)) in ([], hits)
            assert server.call(run("nothing matches zzyzx")) == []
            # Several queries finding the same chunk: it counts once, with its best score.
            assert server.call(run("scarlet bison", "guards the archive", "zzyzx")) == hits
            filtered = run("scarlet", filters={"type": "eq", "key": "x", "value": 1})
            assert server.call(filtered) == []
            # ranker "none": BM25 alone (no query embedding, no fusion); same hit here.
            assert server.call(run("scarlet bison", ranker="none")) == hits


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(embedding_dim=32) as server:
        yield server


def test_hybrid_search_with_embeddings(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> None:
    data_dir = tmp_path_factory.mktemp("embeddings")
    with fresh_database(data_dir) as url:
        settings = make_settings(
            data_dir / "data",
            url,
            embedding_model="openai/fake-embed",
            embedding_api_base=upstream.base_url,
            embedding_api_key="fake",
            embedding_dimensions=32,
        )
        with AppServer(settings) as server:
            try:
                with sdk(server) as client:
                    _check_embeddings(client, upstream)
            finally:
                server.call(drain_litellm_logging())


def _check_embeddings(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    store = client.vector_stores.create(name="dense")
    good = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("dense.txt", io.BytesIO(b"The silver falcon circles the tower.")),
        poll_interval_ms=100,
    )
    assert good.status == "completed", good.last_error
    sent = [text for r in upstream.embedding_requests for text in r["input"]]
    assert any("silver falcon" in text for text in sent)

    count = len(upstream.embedding_requests)
    hit = client.vector_stores.search(store.id, query="silver falcon").data[0]
    assert hit.file_id == good.id
    assert len(upstream.embedding_requests) == count + 1  # the query was embedded

    # The provider rejecting the texts fails that file only, with a reason.
    upstream.fail_next_embeddings(1, 400)
    bad = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("bad.txt", io.BytesIO(b"The bronze owl.")),
        poll_interval_ms=100,
    )
    assert bad.status == "failed" and bad.last_error is not None
    assert bad.last_error.code == "server_error" and "Embedding" in bad.last_error.message
    assert client.vector_stores.files.retrieve(good.id, vector_store_id=store.id).status == (
        "completed"
    )
    # Query embedding failing degrades to lexical search instead of an error.
    upstream.fail_next_embeddings(1, 400)
    assert top_file(client, store.id, "silver falcon") == good.id
