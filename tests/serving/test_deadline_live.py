"""Bounded cost per request on a live `shenhe serve`: our 504 (logged as 504) when the deadline passes, and a
client that disconnects stops consuming model time (its work is dropped, seen on /metrics)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import EVERYDAY, ServerProcess, free_port, server_env

# One window per model call, no waiting for company: a 256-text request takes many calls, so a deadline
# or a disconnect lands while most of its windows still wait.
SLOW = {"SHENHE_BATCH_MAX_WINDOWS": "1", "SHENHE_BATCH_WAIT_MS": "0", "SHENHE_REQUEST_TIMEOUT_S": "0.3",
        "SHENHE_MAX_REQUEST_TOKENS": "10000000"}
MANY = {"items": [{"id": str(i), "text": f"{EVERYDAY}{i}" * 40} for i in range(256)]}  # thousands of windows


def _slow(tiny_bundle: Path, serving_files: dict[str, Path], name: str, **extra: str) -> ServerProcess:
    tmp = serving_files["root"] / name
    tmp.mkdir(exist_ok=True)
    env = server_env(tmp, f"sqlite:///{tmp / 'q.db'}", serving_files["policy"], None, **{**SLOW, **extra})
    return ServerProcess(args=["--bundle", str(tiny_bundle)], env=env, log_path=tmp / "server.log",
                         port=free_port()).start()


@pytest.fixture(scope="module")
def slow_server(tiny_bundle: Path, serving_files: dict[str, Path]) -> Iterator[ServerProcess]:
    server = _slow(tiny_bundle, serving_files, "deadline")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def patient_server(tiny_bundle: Path, serving_files: dict[str, Path]) -> Iterator[ServerProcess]:
    """A long deadline: only the client's disconnect can stop its work (no race with the 504 on a busy CI)."""
    server = _slow(tiny_bundle, serving_files, "disconnect", SHENHE_REQUEST_TIMEOUT_S="60")
    yield server
    server.stop()


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_deadline_gives_our_504_and_is_logged_as_504(slow_server: ServerProcess) -> None:
    expired = metric(slow_server, "shenhe_batcher_requests_total", '{outcome="expired"}')
    r = httpx.post(f"{slow_server.url}/v1/classify", json=MANY, timeout=30)
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["error"] == "timeout" and body["request_id"] == r.headers["x-request-id"]
    assert metric(slow_server, "shenhe_batcher_requests_total", '{outcome="expired"}') == expired + 1
    assert metric(slow_server, "shenhe_batcher_queued_tokens") == 0
    log = slow_server.log_text()
    assert re.search(rf'"request_id": "{body["request_id"]}".*"status": 504', log) or \
        re.search(rf'"status": 504.*"request_id": "{body["request_id"]}"', log)
    # A small request on the same server is still answered within the deadline.
    ok = httpx.post(f"{slow_server.url}/v1/classify", json={"items": [{"text": EVERYDAY}]}, timeout=30)
    assert ok.status_code == 200


def test_disconnected_client_stops_using_the_model(patient_server: ServerProcess) -> None:
    server = patient_server
    cancelled = metric(server, "shenhe_batcher_requests_total", '{outcome="cancelled"}')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/classify", json=MANY, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(server, "shenhe_batcher_requests_total", '{outcome="cancelled"}') == cancelled + 1:
            break
        time.sleep(0.05)
    assert metric(server, "shenhe_batcher_requests_total", '{outcome="cancelled"}') == cancelled + 1
    assert metric(server, "shenhe_batcher_requests_total", '{outcome="done"}') == 0  # it never finished
    windows = metric(server, "shenhe_model_windows_total")
    time.sleep(0.3)
    assert metric(server, "shenhe_model_windows_total") == windows  # nothing more was scored for it
    assert metric(server, "shenhe_batcher_queued_tokens") == 0
