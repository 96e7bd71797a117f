"""Crash test: SIGKILL the whole server (arbiter and workers) while a client sends review-bound texts,
restart it on the same database, and check that every item the client got a review_id for is in the
queue, and that the client's retries of unanswered requests did not store anything twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from shenhe.serving.queue import ReviewStore, review_items
from tests.serving.conftest import INSULT, ServerProcess, auth, free_port, server_env

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_loses_no_acknowledged_review_item(tiny_bundle: Path, serving_files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fault.db'}"
    env = server_env(tmp_path, db_url, serving_files["policy"], serving_files["keys"])
    server = ServerProcess(args=["--bundle", str(tiny_bundle)], env=env, log_path=tmp_path / "server.log",
                           port=free_port()).start()
    acked: dict[str, str] = {}  # caller id -> review_id the client received
    failures = Counter[str]()
    stop = threading.Event()

    def monitor() -> None:
        batch_no = 0
        with httpx.Client(base_url=server.url, headers=auth("classify"), timeout=10) as http:
            while not stop.is_set():
                items = [{"id": f"b{batch_no}-{k}", "text": f"{INSULT}（第{batch_no}批第{k}条）"} for k in range(4)]
                try:
                    r = http.post("/v1/classify", json={"items": items})
                except httpx.TransportError as e:
                    failures[type(e).__name__] += 1
                    time.sleep(0.05)
                    continue  # retry the same batch, as a monitor would
                if r.status_code != 200:
                    failures[f"http {r.status_code}"] += 1
                    continue
                for item in r.json()["items"]:
                    assert item["decision"] == "review"
                    acked[item["id"]] = item["review_id"]
                batch_no += 1

    client = threading.Thread(target=monitor, daemon=True)
    client.start()
    try:
        wait_for(lambda: len(acked) >= 40, 60, "40 acknowledged items")
        server.kill()  # mid-stream, while requests are in flight
        at_kill = len(acked)
        server.start()
        wait_for(lambda: len(acked) >= at_kill + 40, 90, "the client to resume after the restart")
    finally:
        stop.set()
        client.join(timeout=30)
        server.stop()

    assert failures, "the kill should have interrupted at least one request"
    store = ReviewStore(db_url)
    with store.engine.connect() as conn:
        rows = conn.execute(select(review_items.c.review_id, review_items.c.caller_id)).tuples().all()
    store.close()
    stored = dict((rid, cid) for rid, cid in rows)
    missing = {cid: rid for cid, rid in acked.items() if rid not in stored}
    assert not missing, f"{len(missing)} acknowledged item(s) lost: {list(missing)[:5]}"
    assert all(stored[rid] == cid for cid, rid in acked.items())
    per_caller = Counter(cid for _, cid in rows)
    assert max(per_caller.values()) == 1, "a retried request stored an item twice"
