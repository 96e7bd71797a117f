"""Active learning: the queue serves the item whose scores came closest to a threshold first, per claim
(``GET /v1/review/next?order=``, the console's order) or by default (``SHENHE_REVIEW_ORDER``). In-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.models.types import ModelInfo, Prediction, Reason
from shenhe.serving.config import ConfigError, ServingConfig
from shenhe.serving.runtime import Runtime
from tests.serving.conftest import inprocess_runtime, loopback_client

# The test policy's review threshold is 0.999999: a score of 0.99 is the closest call, 0.5 the farthest.
SCORES = {"远": 0.5, "最近": 0.99, "中间": 0.9}


def _fake_scores(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    async def predict(texts: list[str], disconnected: object = None) -> list[Prediction]:
        out = []
        for t in texts:
            s = SCORES[t.rstrip("0123456789")]
            out.append(Prediction(
                scores={c: (s if c == "insult_defamation" else 0.0) for c in CATEGORY_SLUGS}, decision="review",
                categories=["insult_defamation"], reasons=[Reason("insult_defamation", "review", s, 0.5, (0, 1))],
                matches=[], model=ModelInfo("tiny", "0.0.1"), policy_version="p"))
        return out

    monkeypatch.setattr(runtime.scheduler, "predict", predict)


def _runtime(tiny_bundle: Path, files: dict[str, Path], tmp_path: Path, **settings: object) -> Iterator[Runtime]:
    yield from inprocess_runtime(tiny_bundle, files, tmp_path, second_opinion_share=0.0, **settings)


@pytest.fixture
def runtime(tiny_bundle: Path, serving_files: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    yield from _runtime(tiny_bundle, serving_files, tmp_path)


def _enqueue(client: TestClient, suffix: str = "") -> dict[str, str]:
    r = client.post("/v1/classify", json={"items": [{"id": t, "text": t + suffix} for t in SCORES]})
    assert r.status_code == 200, r.text
    return {i["id"]: i["review_id"] for i in r.json()["items"]}


def test_margins_are_stored_at_enqueue(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_scores(runtime, monkeypatch)
    ids = _enqueue(loopback_client())
    margins = {k: runtime.store.get(v)["margin"] for k, v in ids.items()}
    assert margins["最近"] == pytest.approx(0.999999 - 0.99)
    assert margins["中间"] == pytest.approx(0.999999 - 0.9) and margins["远"] == pytest.approx(0.999999 - 0.5)


def test_api_claim_by_uncertainty_or_age(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_scores(runtime, monkeypatch)
    client = loopback_client()
    ids = _enqueue(client)
    first = client.get("/v1/review/next", params={"order": "uncertainty"}).json()
    assert first["review_id"] == ids["最近"]
    assert client.get("/v1/review/next").json()["review_id"] == ids["远"]  # default: by age
    assert client.get("/v1/review/next", params={"order": "age"}).json()["review_id"] == ids["中间"]
    bad = client.get("/v1/review/next", params={"order": "random"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"


def test_console_claim_by_uncertainty(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_scores(runtime, monkeypatch)
    client = loopback_client()
    ids = _enqueue(client)
    page = client.get("/review").text
    assert '<option value="oldest" selected>' in page and "最不确定优先" in page
    assert client.post("/review/api/claim", json={"order": "uncertainty"}).json()["review_id"] == ids["最近"]
    assert client.post("/review/api/claim", json={}).json()["review_id"] == ids["远"]
    bad = client.post("/review/api/claim", json={"order": "random"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_order"


def test_the_server_setting_makes_uncertainty_the_default(tiny_bundle: Path, serving_files: dict[str, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for runtime in _runtime(tiny_bundle, serving_files, tmp_path, review_order="uncertainty"):
        _fake_scores(runtime, monkeypatch)
        client = loopback_client()
        ids = _enqueue(client)
        assert client.get("/v1/review/next").json()["review_id"] == ids["最近"]
        assert client.post("/review/api/claim", json={}).json()["review_id"] == ids["中间"]
        assert client.get("/v1/review/next", params={"order": "age"}).json()["review_id"] == ids["远"]
        assert '<option value="uncertainty" selected>' in client.get("/review").text


def test_review_order_setting_is_checked() -> None:
    assert ServingConfig.from_env({"SHENHE_REVIEW_ORDER": "uncertainty"}).review_order == "uncertainty"
    assert ServingConfig.from_env({}).review_order == "age"
    with pytest.raises(ConfigError, match="SHENHE_REVIEW_ORDER"):
        ServingConfig.from_env({"SHENHE_REVIEW_ORDER": "random"})


def test_threshold_margin() -> None:
    policy = load_policy().with_updates({c: {"review_threshold": 0.5, "block_threshold": 0.9}
                                         for c in CATEGORY_SLUGS if c != "constitution"})
    scores = {c: 0.0 for c in CATEGORY_SLUGS}
    assert policy.threshold_margin(scores) == pytest.approx(0.5)
    scores["rumor"] = 0.85  # 0.05 below block
    assert policy.threshold_margin(scores) == pytest.approx(0.05)
    scores["constitution"] = 0.5  # untrained: never counts
    assert policy.threshold_margin(scores) == pytest.approx(0.05)
    no_block = policy.with_updates({"rumor": {"auto_block": False}})
    assert no_block.threshold_margin(scores) == pytest.approx(0.35)
    assert policy.threshold_margin({}) is None
