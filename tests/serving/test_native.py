"""The BentoML-native ``classify`` endpoint (serving/native.py): BentoML's own clients against a running
``shenhe serve``, the same keys, queue and errors as ``/v1/classify``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.serving.conftest import EVERYDAY, INSULT, KEYS, ServerProcess, auth


def test_sync_http_client_classifies_a_batch(sqlite_server: ServerProcess) -> None:
    import bentoml

    items = [{"id": "native-1", "text": EVERYDAY}, {"id": "native-2", "text": INSULT + "（原生接口）"},
             {"text": "周末一起去爬山吗？"}]
    with bentoml.SyncHTTPClient(sqlite_server.url, token=KEYS["classify"]) as client:
        assert "classify" in client.endpoints
        result = client.classify(items=items)
    assert [i["id"] for i in result["items"]] == ["native-1", "native-2", None]
    assert [i["decision"] for i in result["items"]] == ["pass", "review", "pass"]
    assert set(result["items"][0]["scores"]) >= {"rumor", "insult_defamation"}
    assert result["items"][1]["review_id"] and result["items"][0]["review_id"] is None
    assert result["model"]["name"] and result["policy_version"] == "test-2026.1" and result["request_id"]

    # The same answer shape as /v1/classify, and the same queue: the item is queued once.
    v1 = httpx.post(f"{sqlite_server.url}/v1/classify", json={"items": items}, headers=auth("classify"), timeout=60)
    assert v1.status_code == 200
    assert set(v1.json()) == set(result) and set(v1.json()["items"][1]) == set(result["items"][1])
    assert v1.json()["items"][1]["review_id"] == result["items"][1]["review_id"]


def test_async_http_client_classifies_concurrently(sqlite_server: ServerProcess) -> None:
    import bentoml

    async def main() -> list[dict[str, object]]:
        async with bentoml.AsyncHTTPClient(sqlite_server.url, token=KEYS["classify"]) as client:
            return await asyncio.gather(*(client.classify(items=[{"id": f"a-{k}", "text": EVERYDAY}])
                                          for k in range(4)))

    results = asyncio.run(main())
    assert [r["items"][0]["id"] for r in results] == [f"a-{k}" for k in range(4)]  # type: ignore[index]
    assert all(r["items"][0]["decision"] == "pass" for r in results)  # type: ignore[index]


def test_the_same_keys_and_errors_as_v1(sqlite_server: ServerProcess) -> None:
    import bentoml
    from bentoml.exceptions import BentoMLException

    with bentoml.SyncHTTPClient(sqlite_server.url) as client, pytest.raises(BentoMLException) as e:
        client.classify(items=[{"text": EVERYDAY}])
    assert e.value.error_code == 401
    assert json.loads(str(e.value))["error"] == "unauthorized"

    url = f"{sqlite_server.url}/classify"
    cases = [
        ({"items": [{"text": EVERYDAY}]}, auth("review"), 403, "forbidden"),
        ({"items": [{"text": EVERYDAY}]}, {"Authorization": "Bearer not-a-key-0123456789"}, 401, "unauthorized"),
        ({"items": []}, auth("classify"), 400, "empty_items"),
        ({"items": [{"text": "x"}] * 257}, auth("classify"), 400, "too_many_items"),
        ({"items": [{"text": 5}]}, auth("classify"), 400, "invalid_request"),
        ({"items": [{"text": "x", "extra": 1}]}, auth("classify"), 400, "invalid_request"),
        ({"texts": ["x"]}, auth("classify"), 400, "invalid_request"),
        ({"items": [{"text": "长" * 20_001}]}, auth("classify"), 400, "text_too_long"),
    ]
    for body, headers, status, code in cases:
        r = httpx.post(url, json=body, headers=headers, timeout=60)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"] == code and r.json()["message"] and r.json()["request_id"]
    r = httpx.post(url, content=b"{not json", headers={**auth("classify"), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = httpx.post(url, content=b"x", headers={**auth("classify"), "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = httpx.get(url, headers=auth("classify"))
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed" and r.headers["allow"] == "POST"
    ok = httpx.post(url, json={"items": [{"text": EVERYDAY}]}, headers={**auth("classify"), "X-Request-ID": "abc-1"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "abc-1" and ok.json()["request_id"] == "abc-1"


def test_the_bento_api_schema_lists_classify(sqlite_server: ServerProcess) -> None:
    schema = httpx.get(f"{sqlite_server.url}/schema.json", timeout=30).json()
    (route,) = [r for r in schema["routes"] if r["name"] == "classify"]
    assert route["route"] == "/classify"
    assert route["input"]["properties"]["items"]["items"]["properties"]["text"]["type"] == "string"
    assert "items" in route["output"]["properties"]
    # The /v1 API is unchanged beside it.
    assert "/v1/classify" in httpx.get(f"{sqlite_server.url}/v1/openapi.json", timeout=30).json()["paths"]
