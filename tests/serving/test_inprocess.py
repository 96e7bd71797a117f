"""The /v1 app driven in-process (no server): adaptive batching, 503 mappings, text logging, and a
fresh serving process that never imports torch."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.config import ServingConfig
from serving.queue import ReviewStore
from serving.runtime import AdaptiveBatchScheduler, DirectScheduler, Overloaded, Runtime
from tests.serving.conftest import EVERYDAY, INSULT, REPO

TEXTS = [INSULT, EVERYDAY, "", "废物", "這是繁體字", "😀" * 3, EVERYDAY * 40]


@pytest.fixture
def runtime(tiny_bundle: Path, serving_files: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    from serving.api import app

    rt = Runtime.start(ServingConfig.from_env({}, bundle=tiny_bundle, policy=serving_files["policy"],
                                              db_url=f"sqlite:///{tmp_path / 'q.db'}", ort_threads=1))
    app.state.runtime = rt
    yield rt
    app.state.runtime = None
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    from serving.api import app

    return TestClient(app, client=("127.0.0.1", 40000))


def test_adaptive_batching_merges_requests_and_keeps_order(runtime: Runtime) -> None:
    predictor = runtime.predictor
    expected = [p.decision for p in predictor.predict(TEXTS)]
    scheduler = AdaptiveBatchScheduler(predictor, max_batch_size=4, max_latency_ms=10_000)
    requests = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))]  # 7 requests of 7 texts; batches of 4 split them

    async def all_at_once() -> list[list[str]]:
        results = await asyncio.gather(*(scheduler.predict(r) for r in requests))
        return [[p.decision for p in preds] for preds in results]

    got = asyncio.run(all_at_once())
    assert got == [expected[i:] + expected[:i] for i in range(len(TEXTS))]
    scheduler.close()


def test_direct_scheduler_matches_predictor(runtime: Runtime) -> None:
    scheduler = DirectScheduler(runtime.predictor)
    got = asyncio.run(scheduler.predict(TEXTS))
    assert [p.scores for p in got] == [p.scores for p in runtime.predictor.predict(TEXTS)]


def test_overload_is_503(runtime: Runtime, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(texts: list[str]) -> list:
        raise Overloaded("adaptive batching could not answer within 100 ms; retry later")

    monkeypatch.setattr(runtime.scheduler, "predict", refuse)
    r = client.post("/v1/classify", json={"items": [{"text": "你好"}]})
    assert r.status_code == 503 and r.json()["error"] == "overloaded"


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
        from serving.logging import JsonFormatter

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
import serving.service  # the BentoML service module, as a worker imports it
from serving.api import app
from serving.config import ServingConfig
from serving.runtime import Runtime
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
