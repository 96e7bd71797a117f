"""The console and the classify hook in-process (no server): a keyless console, auto-blocks queued as
audit items, and the traffic counts behind the review rate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shenhe.models.types import ModelInfo, Prediction, Reason
from shenhe.serving.live_precision import for_runtime
from shenhe.serving.runtime import Runtime
from tests.serving.conftest import INSULT, inprocess_runtime, loopback_client


@pytest.fixture
def runtime(tiny_bundle: Path, serving_files: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    yield from inprocess_runtime(tiny_bundle, serving_files, tmp_path, audit_block_share=1.0)


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    return loopback_client()


def test_keyless_console_is_open_to_loopback(client: TestClient) -> None:
    page = client.get("/review")
    assert page.status_code == 200 and "anonymous" in page.text and "领取下一条" in page.text
    assert "退出" not in page.text  # nothing to sign out of
    assert client.get("/review/admin").status_code == 200
    assert client.post("/review/api/claim", json={}).status_code == 204
    assert client.get("/review/static/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/review/static/..%2Fconsole.py").status_code == 404
    remote = TestClient(client.app, client=("203.0.113.9", 40000))
    assert remote.get("/review").json()["error"] == "loopback_only"


def test_auto_blocks_are_queued_as_audit_items(runtime: Runtime, client: TestClient,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def block_everything(texts: list[str], disconnected: object = None) -> list[Prediction]:
        return [Prediction(scores={"rumor": 0.99}, decision="block", categories=["rumor"],
                           reasons=[Reason("rumor", "block", 0.99, 0.9, (0, len(t)))], matches=[],
                           model=ModelInfo("tiny", "0"), policy_version="p") for t in texts]

    monkeypatch.setattr(runtime.scheduler, "predict", block_everything)
    r = client.post("/v1/classify", json={"items": [{"id": "a", "text": "谣言一"}, {"id": "b", "text": "谣言二"}]})
    assert r.status_code == 200 and [i["review_id"] for i in r.json()["items"]] == [None, None]
    item = client.post("/review/api/claim", json={"band": "block"}).json()
    assert item["kind"] == "audit" and item["decision"] == "block" and item["text"] == "谣言一"
    assert item["segments"][0]["span"] == ["rumor"]
    again = client.post("/v1/classify", json={"items": [{"id": "a", "text": "谣言一"}]})  # a retry: stored once
    assert again.status_code == 200 and runtime.store.counts().total == 2
    d = client.post(f"/review/api/items/{item['review_id']}/decision",
                    json={"labels": [], "lease_token": item["lease_token"]})
    assert d.status_code == 200 and d.json()["reviewer"] == "anonymous"
    report = for_runtime(runtime).report(fresh=True)
    band = next(b for b in report.bands if b.category == "rumor" and b.band == "block")
    assert (band.n, band.confirmed) == (1, 0)
    assert runtime.store.traffic()[("*", "all")] == 3 and runtime.store.traffic()[("rumor", "block")] == 3


def test_review_items_are_counted_for_the_review_rate(runtime: Runtime, client: TestClient) -> None:
    client.post("/v1/classify", json={"items": [{"text": INSULT}, {"text": "今天天气很好"}]})
    report = for_runtime(runtime).report(fresh=True)
    rate = next(r for r in report.rates if r.category == "insult_defamation")
    assert (rate.reviews, rate.classified) == (1, 2)
