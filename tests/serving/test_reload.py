"""Hot reload (serving/reload.py): a policy edited on disk and a promoted bundle are picked up by a running
service; broken files are refused and the old ones keep serving; requests in flight during a bundle swap
finish on the model they started with."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from shenhe.models.policy import load_policy
from shenhe.serving.runtime import Runtime
from tests.serving.conftest import (
    EVERYDAY,
    INSULT,
    REVIEW_TERMS,
    ServerProcess,
    auth,
    free_port,
    inprocess_runtime,
    loopback_client,
    server_env,
    write_keys,
    write_test_policy,
)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

BROKEN_POLICY = "version: broken\ncategories: [this is not a policy\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def policy_with_park(path: Path, version: str) -> None:
    """The test policy plus 公园 ("park") as a review term: EVERYDAY (a walk in the park) goes to review."""
    policy = load_policy(path).with_updates({"insult_defamation": {"terms": (*REVIEW_TERMS, "公园")}},
                                             version=version)
    write_atomically(path, policy.to_yaml())


def bundle_copy(tiny_bundle: Path, dest: Path, version: str) -> Path:
    """The tiny bundle under another version (bundle.json itself is not hashed; the other files are)."""
    shutil.copytree(tiny_bundle, dest)
    manifest = json.loads((dest / "bundle.json").read_text(encoding="utf-8"))
    manifest["version"] = version
    (dest / "bundle.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return dest


def wait_for(check: Callable[[], object], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


# ---- in process ------------------------------------------------------------------------------------


@pytest.fixture
def files(tiny_bundle: Path, tmp_path: Path) -> dict[str, Path]:
    return {"policy": write_test_policy(tmp_path / "policy.yaml", version="reload-1"),
            "bundle": bundle_copy(tiny_bundle, tmp_path / "bundle", "0.0.1"), "root": tmp_path}


@pytest.fixture
def runtime(files: dict[str, Path], tmp_path: Path) -> Iterator[Runtime]:
    yield from inprocess_runtime(files["bundle"], files, tmp_path, reload_interval_s=0)


def classify(client: TestClient, text: str = EVERYDAY) -> dict[str, Any]:
    r = client.post("/v1/classify", json={"items": [{"text": text}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_policy_reload_and_refusal_inprocess(runtime: Runtime, files: dict[str, Path],
                                             caplog: pytest.LogCaptureFixture) -> None:
    client = loopback_client()
    before = classify(client)
    assert (before["items"][0]["decision"], before["policy_version"]) == ("pass", "reload-1")
    old_predictor = runtime.predictor

    r = client.post("/v1/admin/reload")
    assert r.status_code == 200 and r.json()["status"] == "unchanged", r.text

    policy_with_park(files["policy"], "reload-2")
    r = client.post("/v1/admin/reload")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "reloaded" and r.json()["changed"] == ["policy"]
    after = classify(client)
    assert (after["items"][0]["decision"], after["policy_version"]) == ("review", "reload-2")
    # a policy change shares the model session and never mutates the predictor a request may hold
    assert runtime.predictor is not old_predictor and runtime.predictor.session is old_predictor.session
    assert old_predictor.policy.version == "reload-1"

    write_atomically(files["policy"], BROKEN_POLICY)
    r = client.post("/v1/admin/reload")
    assert r.status_code == 422 and r.json()["error"] == "reload_refused", r.text
    assert "reload-2" in r.json()["message"]
    still = classify(client)
    assert (still["items"][0]["decision"], still["policy_version"]) == ("review", "reload-2")


def test_broken_bundle_refused_inprocess(runtime: Runtime, files: dict[str, Path]) -> None:
    assert runtime.reloader is not None
    tok = files["bundle"] / "tokenizer.json"
    tok.write_text(tok.read_text(encoding="utf-8") + " ", encoding="utf-8")  # no longer matches its hash
    result = runtime.reloader.reload("test")
    assert result.status == "refused" and "hash" in (result.reason or ""), result
    assert classify(loopback_client())["model"]["version"] == "0.0.1"


def test_bundle_swap_inflight_finishes_on_old_model(runtime: Runtime, files: dict[str, Path], tmp_path: Path) -> None:
    from shenhe.models.predictor import Predictor

    old_scheduler = runtime.scheduler
    slow_run = old_scheduler.batcher.run

    def slow(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return slow_run(ids, mask)

    old_scheduler.batcher.run = slow
    new = Predictor(bundle_copy(files["bundle"], tmp_path / "bundle2", "0.0.2"), policy=files["policy"],
                    intra_op_threads=1)

    async def scenario() -> tuple[str, str, str, str]:
        first = asyncio.ensure_future(old_scheduler.predict([EVERYDAY]))
        await asyncio.sleep(0.2)  # the first request is scoring on the old model now
        second = asyncio.ensure_future(old_scheduler.predict([INSULT]))
        await asyncio.sleep(0.1)  # the second one waits in the old batcher's queue
        runtime.swap_predictor(new)
        late = await old_scheduler.predict([EVERYDAY])  # captured the old scheduler before the swap
        fresh = await runtime.scheduler.predict([EVERYDAY])
        return ((await first)[0].model.version, (await second)[0].model.version, late[0].model.version,
                fresh[0].model.version)

    assert asyncio.run(scenario()) == ("0.0.1", "0.0.1", "0.0.2", "0.0.2")
    wait_for(lambda: old_scheduler.batcher._closed, 5)  # drained, then closed


# ---- live service ----------------------------------------------------------------------------------


@pytest.fixture
def live(tiny_bundle: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, Path]]]:
    files = {"policy": write_test_policy(tmp_path / "policy.yaml", version="live-1"),
             "bundle": bundle_copy(tiny_bundle, tmp_path / "serving" / "bundle", "0.0.1"), "root": tmp_path}
    env = server_env(tmp_path, f"sqlite:///{tmp_path / 'q.db'}", files["policy"], None,
                     SHENHE_RELOAD_INTERVAL_S="0.5", SHENHE_SECOND_OPINION_SHARE="0")
    server = ServerProcess(args=["--bundle", str(files["bundle"])], env=env, log_path=tmp_path / "server.log",
                           port=free_port()).start()
    yield server, files
    server.stop()


def test_live_policy_edit_broken_policy_and_promoted_bundle(live: tuple[ServerProcess, dict[str, Path]],
                                                            tiny_bundle: Path) -> None:
    server, files = live
    url = f"{server.url}/v1/classify"

    def answer(text: str = EVERYDAY) -> dict[str, Any]:
        r = httpx.post(url, json={"items": [{"text": text}]}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def decided(decision: str, version: str) -> bool:
        a = answer()
        return (a["items"][0]["decision"], a["policy_version"]) == (decision, version)

    assert decided("pass", "live-1")

    # 1. the word list edited on disk changes decisions within 5 s
    policy_with_park(files["policy"], "live-2")
    wait_for(lambda: decided("review", "live-2"), 5)

    # 2. a broken policy is refused with a log line; the last good one keeps serving
    write_atomically(files["policy"], BROKEN_POLICY)
    wait_for(lambda: "reload refused" in server.log_text(), 5)
    assert decided("review", "live-2")
    write_test_policy(files["policy"], version="live-3")  # fixed again: picked up
    wait_for(lambda: decided("pass", "live-3"), 5)

    # 3. a bundle promoted onto the serving path (directory renames, as `shenhe promote --target` does)
    #    is picked up while a client keeps sending; every request succeeds
    staged = bundle_copy(tiny_bundle, files["root"] / "serving" / "bundle.new", "0.0.2")
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(url, json={"items": [{"text": EVERYDAY}, {"text": "废物"}]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model"]["version"])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(versions) >= 5, 10)
        os.replace(files["bundle"], files["bundle"].with_name("bundle.previous"))
        os.replace(staged, files["bundle"])
        wait_for(lambda: versions[-3:] == ["0.0.2"] * 3, 10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert set(statuses) == {200}, statuses
    assert versions[0] == "0.0.1" and versions[-1] == "0.0.2"
    assert "0.0.1" not in versions[versions.index("0.0.2"):][5:]  # no flapping back after the swap
    log = server.log_text()
    assert '"reloaded"' in log and "old model closed" in log, server.log_tail()


def test_live_sighup_and_admin_reload(tiny_bundle: Path, tmp_path: Path) -> None:
    """With the watcher off, SIGHUP to the worker reloads it, and POST /v1/admin/reload needs role admin."""
    import signal

    import psutil

    policy = write_test_policy(tmp_path / "policy.yaml", version="hup-1")
    keys = write_keys(tmp_path / "keys.yaml")
    env = server_env(tmp_path, f"sqlite:///{tmp_path / 'q.db'}", policy, keys, SHENHE_RELOAD_INTERVAL_S="0")
    server = ServerProcess(args=["--bundle", str(tiny_bundle)], env=env, log_path=tmp_path / "server.log",
                           port=free_port()).start()
    try:
        def version() -> str:
            r = httpx.post(f"{server.url}/v1/classify", json={"items": [{"text": EVERYDAY}]}, headers=auth("classify"),
                           timeout=30)
            assert r.status_code == 200, r.text
            return str(r.json()["policy_version"])

        policy_with_park(policy, "hup-2")
        time.sleep(1.0)
        assert version() == "hup-1"  # not watching
        workers = [p for p in psutil.Process(server.pids()[0]).children(recursive=True)
                   if "_bentoml_impl.worker" in " ".join(p.cmdline())]
        assert len(workers) == 1
        os.kill(workers[0].pid, signal.SIGHUP)
        wait_for(lambda: version() == "hup-2", 5)
        assert '"trigger": "sighup"' in server.log_text()

        policy_with_park(policy, "hup-3")
        reload_url = f"{server.url}/v1/admin/reload"
        assert httpx.post(reload_url, headers=auth("classify"), timeout=30).status_code == 403
        r = httpx.post(reload_url, headers=auth("admin"), timeout=30)
        assert r.status_code == 200 and r.json()["policy_version"] == "hup-3", r.text
        assert version() == "hup-3"
        assert workers[0].is_running()  # reloaded in place, not restarted
    finally:
        server.stop()
