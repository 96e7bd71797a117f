"""The Python client and the JSONL streamer behind ``shenhe classify --url``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shenhe.models.errors import UserError
from shenhe.serving.client import InputFileError, ShenheClient, ShenheError, classify_file
from tests.serving.conftest import EVERYDAY, INSULT, KEYS, ServerProcess


def test_client_classify_review_round_trip(sqlite_server: ServerProcess) -> None:
    with ShenheClient(sqlite_server.url, api_key=KEYS["admin"]) as client:
        assert client.ready()
        texts = [EVERYDAY] * 259 + [{"id": "c-1", "text": INSULT + "（客户端）"}]
        result = client.classify(texts)  # 260 items: two requests, joined
        assert len(result["items"]) == 260
        last = result["items"][-1]
        assert last["id"] == "c-1" and last["decision"] == "review"
        stats = client.review_stats()
        assert stats["total"] >= 1
        claimed = client.next_review(lease_seconds=60)
        assert claimed is not None and claimed["review_id"]
        decided = client.decide(claimed["review_id"], ["insult_defamation"], "client-test",
                                lease_token=claimed["lease_token"])
        assert decided["labels"] == ["insult_defamation"]
        with pytest.raises(ShenheError) as e:
            client.decide(claimed["review_id"], [], "client-test")
        assert e.value.status == 409 and e.value.code == "conflict"


def test_client_without_a_key_gets_a_one_line_401(sqlite_server: ServerProcess) -> None:
    with ShenheClient(sqlite_server.url) as client, pytest.raises(ShenheError) as e:
        client.classify(["你好"])
    assert e.value.status == 401 and "unauthorized" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UserError)  # the CLI prints it as one line, exit 2


def test_classify_file_streams_and_isolates_bad_items(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "p1", "text": EVERYDAY}, ensure_ascii=False),
        json.dumps({"id": "p2", "text": INSULT}, ensure_ascii=False),
        "",
        json.dumps("只有文本的一行", ensure_ascii=False),
        json.dumps({"id": "too-long", "text": "长" * 20_001}, ensure_ascii=False),
        json.dumps({"id": 7, "text": "数字 id", "extra": "ignored"}, ensure_ascii=False),
    ]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "results.jsonl"
    summary = classify_file(sqlite_server.url, src, out, api_key=KEYS["classify"], batch_size=2, progress=False)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [1, 2, 4, 5, 6]
    assert [r.get("id") for r in records] == ["p1", "p2", None, "too-long", "7"]
    assert records[1]["decision"] == "review" and records[1]["review_id"]
    assert records[3]["error"] == "text_too_long" and "decision" not in records[3]
    assert all(r["model"]["name"] and r["policy_version"] == "test-2026.1" for r in records if "decision" in r)
    assert summary.items == 5 and summary.errors == 1 and summary.decisions["review"] == 1


def test_classify_file_bad_line_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "ok"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputFileError, match=r"in.jsonl:2: expected an object with a string 'text'"):
        classify_file("http://127.0.0.1:9", src, tmp_path / "o.jsonl", progress=False, retries=0,
                      transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))


def _answer(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    return httpx.Response(200, json={
        "items": [{"id": i.get("id"), "decision": "pass", "scores": {}, "categories": [], "reasons": [],
                   "matches": [], "review_id": None} for i in items],
        "model": {"name": "m", "version": "1"}, "policy_version": "p", "request_id": "r"})


def test_retries_on_503_and_connection_errors_then_succeeds() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            return httpx.Response(503, json={"error": "overloaded", "message": "busy"}, headers={"Retry-After": "0"})
        return _answer(request)

    with ShenheClient("http://svc", backoff=0.001, transport=httpx.MockTransport(handler)) as client:
        assert client.classify(["一"])["items"][0]["decision"] == "pass"
    assert len(calls) == 3


def test_gives_up_after_the_retry_budget() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"error": "queue_unavailable", "message": "db down"})

    with ShenheClient("http://svc", retries=2, backoff=0.001, transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(ShenheError, match="gave up after 3 attempts") as e:
        client.classify(["一"])
    assert len(calls) == 3 and e.value.status == 503


def test_4xx_is_not_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"error": "empty_items", "message": "'items' is empty"})

    with ShenheClient("http://svc", transport=httpx.MockTransport(handler)) as client, \
            pytest.raises(ShenheError) as e:
        client.classify_batch([])
    assert len(calls) == 1 and e.value.code == "empty_items"
