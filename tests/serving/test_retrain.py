"""Issue 19's acceptance, end to end on the tiny model: items enqueued and decided through the API,
`shenhe retrain` makes a candidate from them, the gate runs, and the promoted bundle is picked up by the
running service without a restart (the model version in the responses changes; every request sent during
the swap succeeds). One conflict between two reviewers goes back to the queue for a third opinion.

And on an install without the training packages, `shenhe review export` works and `shenhe retrain` fails
with one line naming what is missing and how to install it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import REPO, ServerProcess, auth, free_port, server_env
from tests.serving.test_reload import bundle_copy, wait_for

FIXTURE = REPO / "tests" / "training" / "data"
NEW_VERSION = "0.0.2-retrained"


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHENHE_")}
    return subprocess.run([sys.executable, "-m", "shenhe.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**base, "OMP_NUM_THREADS": "1", **(env or {})}, check=False, timeout=timeout)


def _reviewed_texts() -> list[tuple[str, list[str]]]:
    """Fixture sentences made review-bound by the test policy's word list (废物 routes to review)."""
    rows = [json.loads(line) for line in (FIXTURE / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(f"{r['text']}，废物", r["labels"]) for r in rows[:24]]


@pytest.mark.integration
def test_reviews_to_a_promoted_model_on_a_running_service(tiny_run: Path, tiny_bundle: Path,
                                                          serving_files: dict[str, Path], tmp_path: Path) -> None:
    serving = bundle_copy(tiny_bundle, tmp_path / "serving" / "bundle", "0.0.1")
    db_url = f"sqlite:///{tmp_path / 'queue.db'}"
    env = server_env(tmp_path, db_url, serving_files["policy"], serving_files["keys"],
                     SHENHE_SECOND_OPINION_SHARE="1", SHENHE_RELOAD_INTERVAL_S="0.5")
    server = ServerProcess(args=["--bundle", str(serving)], env=env, log_path=tmp_path / "server.log",
                           port=free_port()).start()
    url = server.url
    try:
        # 1. enqueue through the API
        t0 = time.monotonic()
        texts = _reviewed_texts()
        labels_of = dict(texts)
        r = httpx.post(f"{url}/v1/classify", headers=auth("classify"), timeout=60,
                       json={"items": [{"id": f"post-{i}", "text": t} for i, (t, _) in enumerate(texts)]})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == "0.0.1"
        assert all(i["decision"] == "review" and i["review_id"] for i in r.json()["items"])

        # 2. decide through the API: every decision gets a second opinion (share 1); bob disagrees once
        def decide_all(role: str, disagree_on: str | None = None) -> int:
            n = 0
            while True:
                got = httpx.get(f"{url}/v1/review/next", headers=auth(role), timeout=30)
                if got.status_code == 204:
                    return n
                item = got.json()
                labels = [] if item["text"] == disagree_on else labels_of[item["text"]]
                d = httpx.post(f"{url}/v1/review/{item['review_id']}", headers=auth(role), timeout=30,
                               json={"labels": {s: True for s in labels}, "lease_token": item["lease_token"]})
                assert d.status_code == 200, d.text
                n += 1

        conflicted = next(t for t, labels in texts if labels)
        assert decide_all("review") == len(texts)  # the first reviewer ("reviewers") takes everything
        assert decide_all("review2", disagree_on=conflicted) == len(texts)  # bob: the second opinions
        decided_s = time.monotonic() - t0

        # 3. retrain from the queue, gate, promote onto the serving path, while a client keeps sending
        statuses: list[int] = []
        versions: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as c:
                for _ in range(5000):  # bounded
                    if stop.is_set():
                        return
                    resp = c.post(f"{url}/v1/classify", headers=auth("classify"),
                                  json={"items": [{"text": "今天天气很好"}, {"text": "我们下午去公园散步吧"}]})
                    statuses.append(resp.status_code)
                    if resp.status_code == 200:
                        versions.append(resp.json()["model"]["version"])
                    time.sleep(0.2)  # leave the CPU to the retraining

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            started = time.monotonic()
            proc = _cli("retrain", "--from-reviews", db_url, "--base-bundle", str(serving), "--out",
                        str(tmp_path / "runs" / "r1"), "--replay", str(FIXTURE), "--base",
                        str(tiny_run.parent / "encoder"), "--max-steps", "6", "--batch-size", "8",
                        "--eval-every-steps", "3", "--min-train-positives", "2", "--lr", "1e-3", "--head-lr", "1e-2",
                        "--quantization", "dynamic", "--allow-parity-failure", "--threads", "1", "--quiet",
                        "--version", NEW_VERSION, "--record", str(tmp_path / "promotions.jsonl"),
                        # a tiny random model on 30 gate texts: judge the path, not the model's quality
                        "--allow-category-regressions", "--allow-more-harmful-passed", "--tolerance", "1")
            retrain_s = time.monotonic() - started
            assert proc.returncode == 0, proc.stdout + proc.stderr
            wait_for(lambda: versions[-2:] == [NEW_VERSION] * 2, 15)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)

        # what it said it did
        err = proc.stderr
        assert f"read {len(texts)} decided item(s) from sqlite:///" in err  # second opinions pooled with their item
        assert "no --corpus: continuing from" in err and "plus a replay sample of" in err
        assert "held apart for the gate" in err and "gate:" in err
        assert f"promoted: {tmp_path / 'runs' / 'r1' / 'bundle'} -> {serving}" in proc.stdout
        dropped = [line for line in err.splitlines() if "  dropped review:" in line]
        assert len(dropped) == 1 and "conflicting labels from 2 reviewers (reviewers: [" in dropped[0]
        assert "bob: [] (acceptable)); sent back to the queue for a third opinion (review id " in dropped[0]
        summary = json.loads((tmp_path / "runs" / "r1" / "retrain.json").read_text(encoding="utf-8"))
        assert summary["data"]["mode"] == "replay" and summary["gate"]["promote"] is True
        assert summary["gate"]["held_apart_reviewed"] == summary["data"]["reviewed_held_apart"]
        record = json.loads((tmp_path / "promotions.jsonl").read_text(encoding="utf-8").splitlines()[-1])
        assert record["promoted"] and record["candidate"]["version"] == NEW_VERSION

        # the running service took the new model without a restart; nothing failed during the swap
        assert set(statuses) == {200}, statuses
        assert versions[0] == "0.0.1" and versions[-1] == NEW_VERSION
        assert "0.0.1" not in versions[versions.index(NEW_VERSION):][5:]
        assert json.loads((serving / "bundle.json").read_text(encoding="utf-8"))["version"] == NEW_VERSION
        assert (serving.with_name("bundle.previous") / "bundle.json").is_file()

        # the conflict is back in the queue, for a reviewer who has not seen it
        assert httpx.get(f"{url}/v1/review/next", headers=auth("review")).status_code == 204
        assert httpx.get(f"{url}/v1/review/next", headers=auth("review2")).status_code == 204
        from shenhe.serving.queue import ReviewStore

        store = ReviewStore(db_url)
        third = store.claim(600, "carol")
        store.close()
        assert third is not None and third.text == conflicted and third.kind == "second"
        print(f"enqueue + decide {decided_s:.1f} s, retrain {retrain_s:.1f} s")
    finally:
        server.stop()


# ---- without the training packages ---------------------------------------------------------------

_NO_TRAINING = textwrap.dedent("""
    # Loaded at start-up (sitecustomize): the training packages cannot be imported, as after `make serve`.
    import sys

    class _NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
""")


def test_retrain_without_the_training_packages_is_one_line(tmp_path: Path) -> None:
    from shenhe.serving.queue import ReviewStore
    from tests.serving.test_queue import item

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_TRAINING, encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    torch_gone = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env={
        **os.environ, **env}, check=False)
    assert torch_gone.returncode == 1 and "No module named 'torch'" in torch_gone.stderr

    db = tmp_path / "var" / "shenhe.db"
    store = ReviewStore(f"sqlite:///{db}")
    store.create_schema()
    (rid,) = store.enqueue([item("x", "你这个废物")]).review_ids
    store.decide(rid, ["insult_defamation"], "alice")
    store.close()

    export = tmp_path / "reviewed.jsonl"
    proc = _cli("review", "export", "--out", str(export), "--db-url", f"sqlite:///{db}", env=env)
    assert proc.returncode == 0, proc.stderr
    assert export.read_text(encoding="utf-8").count("\n") == 1

    for source in (str(export), f"sqlite:///{db}"):
        proc = _cli("retrain", "--from-reviews", source, "--base-bundle", "models/default", "--out",
                    str(tmp_path / "runs" / "r"), env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("error: shenhe retrain needs the training packages (torch, transformers missing")
        assert "pip install 'shenhe[train]'" in lines[0] and "make install-dev" in lines[0]
    assert not (tmp_path / "runs").exists()
    store = ReviewStore(f"sqlite:///{db}")
    assert store.counts().total == 1  # nothing was sent back or changed
    store.close()
