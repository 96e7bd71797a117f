"""The /v1 app driven in-process (no server): the batching scheduler, 413/503/504 mappings, text logging, and a
fresh serving process that never imports torch."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shenhe.serving.batcher import QueueFull
from shenhe.serving.queue import ReviewStore
from shenhe.serving.runtime import Runtime
from tests.serving.conftest import EVERYDAY, INSULT, REPO, inprocess_runtime, loopback_client

TEXTS = [INSULT, EVERYDAY, "", "废物", "這是繁體字", "😀" * 3, EVERYDAY * 40]


@pytest.fixture
def runtime(tiny_bundle: Path, serving_files: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    yield from inprocess_runtime(tiny_bundle, serving_files, tmp_path)


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    return loopback_client()


def test_scheduler_matches_predictor_under_concurrency(runtime: Runtime) -> None:
    predictor = runtime.predictor
    requests = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))]  # 7 requests of 7 texts, batched together

    async def all_at_once() -> list[list[dict[str, float]]]:
        results = await asyncio.gather(*(runtime.scheduler.predict(r) for r in requests))
        return [[p.scores for p in preds] for preds in results]

    got = asyncio.run(all_at_once())
    offline = {t: p for t, p in zip(TEXTS, predictor.predict(TEXTS), strict=True)}
    vectors = {t: np.array(list(p.scores.values())) for t, p in offline.items()}
    for request, scores in zip(requests, got, strict=True):
        for text, s in zip(request, scores, strict=True):
            own = np.array(list(s.values()))
            # Dynamic INT8 lets batch neighbours move a score a little, never towards another text's scores.
            assert np.abs(own - vectors[text]).max() < 0.05
            nearest = min(TEXTS, key=lambda t: float(np.abs(own - vectors[t]).sum()))
            assert nearest == text or np.allclose(vectors[nearest], vectors[text])
    decided = asyncio.run(runtime.scheduler.predict(TEXTS))
    assert [p.decision for p in decided] == [offline[t].decision for t in TEXTS]


def test_queue_full_is_503_with_retry_after(runtime: Runtime, client: TestClient,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(texts: list[str], disconnected: object = None) -> list:
        raise QueueFull("the model queue is full; retry shortly", 3)

    monkeypatch.setattr(runtime.scheduler, "predict", refuse)
    r = client.post("/v1/classify", json={"items": [{"text": "你好"}]})
    assert r.status_code == 503 and r.json()["error"] == "overloaded"
    assert r.headers["retry-after"] == "3" and r.json()["request_id"]


def test_token_budget_is_413_in_our_format(runtime: Runtime, client: TestClient) -> None:
    limit = runtime.config.max_request_tokens
    runtime.config = runtime.config.model_copy(update={"max_request_tokens": 200})
    runtime.scheduler.config = runtime.config
    try:
        r = client.post("/v1/classify", json={"items": [{"text": EVERYDAY * 20}]})
        assert r.status_code == 413 and r.json()["error"] == "token_budget_exceeded"
        assert "200" in r.json()["message"]
        assert client.post("/v1/classify", json={"items": [{"text": EVERYDAY}]}).status_code == 200
    finally:
        runtime.config = runtime.config.model_copy(update={"max_request_tokens": limit})
        runtime.scheduler.config = runtime.config


def test_deadline_is_504_in_our_format_and_drops_the_work(runtime: Runtime, client: TestClient) -> None:
    import time as _time

    batcher = runtime.scheduler.batcher
    real = batcher.run

    def slow(ids, mask):
        _time.sleep(0.05)
        return real(ids, mask)

    batcher.run = slow
    runtime.scheduler.config = runtime.config.model_copy(update={"request_timeout_s": 0.08})
    try:
        r = client.post("/v1/classify", json={"items": [{"text": f"{EVERYDAY}{i}"} for i in range(200)]})
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        assert batcher.pending_tokens() == 0  # nothing of it is left for the model
    finally:
        batcher.run = real
        runtime.scheduler.config = runtime.config


def test_unreachable_queue_is_503_and_not_ready(runtime: Runtime, client: TestClient) -> None:
    healthy = runtime.store
    runtime.store = ReviewStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    try:
        assert not runtime.ready()
        r = client.post("/v1/classify", json={"items": [{"text": INSULT}]})
        assert r.status_code == 503 and r.json()["error"] == "queue_unavailable"
        # A pass needs no queue write and still works.
        assert client.post("/v1/classify", json={"items": [{"text": EVERYDAY}]}).status_code == 200
        assert client.get("/v1/review/stats").status_code == 503
        assert "unavailable" in runtime.queue_metrics_text()
    finally:
        runtime.store.close()
        runtime.store = healthy


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        from shenhe.serving.logging import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.mark.parametrize("log_texts", [False, True])
def test_texts_reach_logs_only_when_enabled(runtime: Runtime, client: TestClient, log_texts: bool) -> None:
    runtime.config = runtime.config.model_copy(update={"log_texts": log_texts})
    capture = _Capture()
    runtime.logger.addHandler(capture)
    runtime.logger.setLevel(logging.INFO)
    try:
        r = client.post("/v1/classify", json={"items": [{"id": "x1", "text": INSULT}]})
    finally:
        runtime.logger.removeHandler(capture)
    assert r.status_code == 200
    entries = [json.loads(line) for line in capture.lines]
    assert all(e["request_id"] == r.json()["request_id"] for e in entries)
    assert (INSULT in "\n".join(capture.lines)) is log_texts


def test_a_serving_process_never_imports_torch(tiny_bundle: Path, serving_files: dict[str, Path],
                                               tmp_path: Path) -> None:
    script = f"""
import sys
from fastapi.testclient import TestClient
import shenhe.serving.service  # the BentoML service module, as a worker imports it
from shenhe.serving.api import app
from shenhe.serving.config import ServingConfig
from shenhe.serving.runtime import Runtime
app.state.runtime = Runtime.start(ServingConfig.from_env({{}}, bundle={str(tiny_bundle)!r},
    policy={str(serving_files['policy'])!r}, db_url={f'sqlite:///{tmp_path / "q.db"}'!r}, ort_threads=1))
r = TestClient(app, client=("127.0.0.1", 1)).post("/v1/classify", json={{"items": [{{"text": "你这个傻逼"}}]}})
assert r.status_code == 200, r.text
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("HEAVY", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_text_cap_is_configurable(runtime: Runtime, client: TestClient) -> None:
    runtime.config = runtime.config.model_copy(update={"max_text_chars": 10})
    assert client.post("/v1/classify", json={"items": [{"text": "好" * 10}]}).status_code == 200
    r = client.post("/v1/classify", json={"items": [{"text": "好" * 11}]})
    assert r.status_code == 400 and r.json()["error"] == "text_too_long" and "10" in r.json()["message"]
