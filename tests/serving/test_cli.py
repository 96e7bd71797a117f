"""`shenhe serve` start-up checks, the keyless loopback mode, and `shenhe review export` errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import EVERYDAY, INSULT, REPO, ServerProcess, free_port, server_env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHENHE_")}
    return subprocess.run([sys.executable, "-m", "shenhe.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**base, **(env or {})}, check=False, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_serve_refuses_public_host_without_keys(tiny_bundle: Path) -> None:
    proc = run_cli("serve", "--bundle", str(tiny_bundle), "--host", "0.0.0.0", "--port", str(free_port()))
    assert_one_line_error(proc, "refusing to listen on 0.0.0.0 without API keys", "--keys")


def test_serve_bad_inputs_are_one_line(tmp_path: Path, tiny_bundle: Path) -> None:
    assert_one_line_error(run_cli("serve", "--bundle", str(tmp_path / "nope")), "bundle directory not found")
    bad_keys = tmp_path / "keys.yaml"
    bad_keys.write_text("keys: [{name: a, key: short, roles: [admin]}]\n", encoding="utf-8")
    assert_one_line_error(run_cli("serve", "--bundle", str(tiny_bundle), "--keys", str(bad_keys)), "keys.yaml")
    assert_one_line_error(run_cli("serve", "--bundle", str(tiny_bundle), env={"SHENHE_MAX_TEXT_CHARS": "lots"}),
                          "SHENHE_MAX_TEXT_CHARS")
    assert_one_line_error(run_cli("serve", "--bundle", str(tiny_bundle), "--db-url", "nosuchdb://x/y"),
                          "review database URL")


def test_review_export_without_a_database(tmp_path: Path) -> None:
    proc = run_cli("review", "export", "--out", str(tmp_path / "o.jsonl"),
                   "--db-url", f"sqlite:///{tmp_path / 'none.db'}")
    assert_one_line_error(proc, "no review database")


@pytest.mark.integration
def test_keyless_server_binds_loopback_and_says_so(tiny_bundle: Path, serving_files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    env = server_env(tmp_path, f"sqlite:///{tmp_path / 'q.db'}", serving_files["policy"], keys=None)
    server = ServerProcess(args=["--bundle", str(tiny_bundle)], env=env, log_path=tmp_path / "server.log",
                           port=free_port()).start()
    try:
        r = httpx.post(f"{server.url}/v1/classify", json={"items": [{"text": INSULT}, {"text": EVERYDAY}]})
        assert r.status_code == 200, r.text
        assert [i["decision"] for i in r.json()["items"]] == ["review", "pass"]
        assert httpx.get(f"{server.url}/v1/review/stats").status_code == 200
        doc = httpx.get(f"{server.url}/v1/openapi.json").json()
        assert "security" not in doc
    finally:
        server.stop()
    assert "no API keys configured: listening on 127.0.0.1 only" in server.log_text()


def test_keyless_app_refuses_non_loopback_clients(tiny_bundle: Path, serving_files: dict[str, Path],
                                                  tmp_path: Path) -> None:
    """Defence in depth behind the bind address, checked in-process with a fake client address."""
    from shenhe.serving.api import app
    from shenhe.serving.config import ServingConfig
    from shenhe.serving.runtime import Runtime

    runtime = Runtime.start(ServingConfig.from_env({}, bundle=tiny_bundle, policy=serving_files["policy"],
                                                   db_url=f"sqlite:///{tmp_path / 'q.db'}", ort_threads=1))
    app.state.runtime = runtime
    try:
        far = TestClient(app, client=("203.0.113.9", 50000))
        r = far.post("/v1/classify", json={"items": [{"text": "你好"}]})
        assert r.status_code == 403 and r.json()["error"] == "loopback_only"
        near = TestClient(app, client=("127.0.0.1", 50000))
        assert near.post("/v1/classify", json={"items": [{"text": "你好"}]}).status_code == 200
    finally:
        app.state.runtime = None
        runtime.close()


def test_review_export_since_for_incremental_retraining(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from shenhe.serving.queue import ReviewStore, review_items
    from tests.serving.test_queue import item

    url = f"sqlite:///{tmp_path / 'q.db'}"
    store = ReviewStore(url)
    store.create_schema()
    old, new = store.enqueue([item("o", "上周的"), item("n", "今天的")]).review_ids
    store.decide(old, ["rumor"], "alice")
    store.decide(new, [], "alice")
    with store.engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.review_id == old).values(
            decided_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=7)))
    store.close()
    out = tmp_path / "since.jsonl"
    cut = (datetime.now(UTC) - timedelta(days=1)).astimezone().isoformat()  # a local time with its zone
    proc = run_cli("review", "export", "--out", str(out), "--db-url", url, "--since", cut)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == [f"review:{new}"]
    assert "wrote 1 decided item(s)" in proc.stderr and "decided since" in proc.stderr
    proc = run_cli("review", "export", "--out", str(out), "--db-url", url)  # without --since: everything
    assert proc.returncode == 0 and len(out.read_text(encoding="utf-8").splitlines()) == 2
    assert_one_line_error(run_cli("review", "export", "--out", str(out), "--db-url", url, "--since", "tuesday"),
                          "--since 'tuesday' is not an ISO 8601 time")
