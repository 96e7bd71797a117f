"""`shenhe batch` (serving/batch.py): corpus re-scoring on Ray Data.

The Ray runs are real (`shenhe batch` in a subprocess starting a local Ray); each one costs Ray's startup
(10-20 s on two cores), so the file has three. The input handling, part naming and summary are tested
without Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shenhe.serving.batch import (
    BatchError,
    describe_inputs,
    find_inputs,
    part_name,
    summarize,
)
from tests.serving.conftest import EVERYDAY, INSULT, REPO

EVERYDAY_TEXTS = [
    EVERYDAY, "明天早上八点在学校门口集合。", "这家店的牛肉面很好吃，推荐大家去尝尝。", "周末一起去爬山吗？",
    "我刚看完这本书，结局很感人。", "地铁今天又晚点了，真是没办法。", "祝你生日快乐，万事如意！",
    "请问图书馆几点关门？",
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHENHE_", "RAY_"))}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


def _batch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shenhe.cli", "batch", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- without Ray ------------------------------------------------------------------------------------


def test_inputs_by_file_directory_and_glob(tmp_path: Path) -> None:
    a = _write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "1", "text": "x"}, {"id": "2", "text": "y"}])
    (tmp_path / "in" / "b.csv").write_text("id,text\n1,\"多行\n文本\"\n2,z\n", encoding="utf-8")
    (tmp_path / "in" / "notes.txt").write_text("ignored", encoding="utf-8")
    (tmp_path / "in" / "_jsonl").mkdir()
    _write_jsonl(tmp_path / "in" / "_jsonl" / "hidden.jsonl", [{"text": "x"}])  # an output folder: skipped
    assert find_inputs(str(a)) == [str(a.resolve())]
    assert [Path(p).name for p in find_inputs(str(tmp_path / "in"))] == ["a.jsonl", "b.csv"]
    assert [Path(p).name for p in find_inputs(str(tmp_path / "in" / "*.csv"))] == ["b.csv"]
    files = describe_inputs(str(tmp_path / "in"))
    assert [(Path(f.path).name, f.fmt, f.rows) for f in files] == [("a.jsonl", "json", 2), ("b.csv", "csv", 2)]
    with pytest.raises(BatchError, match="unsupported file type"):
        find_inputs(str(tmp_path / "in" / "notes.txt"))
    with pytest.raises(BatchError, match="no such file"):
        find_inputs(str(tmp_path / "missing"))
    with pytest.raises(BatchError, match="no input files"):
        find_inputs(str(tmp_path / "in" / "*.parquet"))
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "1", "body": "no text field"}])
    with pytest.raises(BatchError, match=r"bad.jsonl:1: expected an object with a string 'text' field"):
        describe_inputs(str(bad))
    # A URI (here file://) of a folder: its files as URIs, read through pyarrow's file systems.
    uri = f"file://{(tmp_path / 'in').resolve()}"
    assert [f.rsplit("/", 1)[-1] for f in find_inputs(uri)] == ["a.jsonl", "b.csv"]
    assert all(f.startswith("file:///") for f in find_inputs(uri))
    assert [f.rows for f in describe_inputs(uri)] == [2, 2]
    # An output folder inside the input folder: its parts are not inputs.
    _write_jsonl(tmp_path / "in" / "out" / "part-a-0123.jsonl", [{"text": "x"}])
    assert [Path(f.path).name for f in describe_inputs(str(tmp_path / "in"), output=tmp_path / "in" / "out")] == [
        "a.jsonl", "b.csv"]
    # Same file name in two folders: two parts.
    assert part_name("/x/a.jsonl") != part_name("/y/a.jsonl")
    assert part_name("/x/a.jsonl").startswith("part-a-")


def test_summary_counts_decisions_categories_and_backlog(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shenhe.serving.batch import InputFile, output_schema, part_path

    f = InputFile(path="/in/a.jsonl", fmt="json", rows=4, part=part_name("/in/a.jsonl"))
    schema = output_schema()
    rows: dict[str, list[object]] = {name: [] for name in schema.names}
    for i, (decision, cats) in enumerate([("pass", []), ("review", ["rumor"]), ("block", ["rumor", "ethnic_hatred"]),
                                          ("review", ["insult_defamation"])]):
        for name in schema.names:
            rows[name].append({"source": f.path, "row": i, "id": str(i), "decision": decision,
                               "categories": cats}.get(name, 0.1))
    pq.write_table(pa.table(rows, schema=schema), part_path(tmp_path, f.part))
    s = summarize(tmp_path, [f], audit_block_share=0.5, second_opinion_share=0.5)
    assert s["texts"] == 4
    assert s["decisions"]["review"] == {"count": 2, "share": 0.5}
    assert s["categories"]["rumor"] == {"review": 1, "block": 1}
    assert s["categories"]["ethnic_hatred"] == {"review": 0, "block": 1}
    assert s["review_backlog"] == {"review_items": 2, "audit_items": 1, "second_opinions": 1, "total": 4}


def test_without_ray_the_command_names_the_extra(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['shenhe', 'batch', '--input', sys.argv[1], "
            "'--output', sys.argv[2]]; from shenhe.cli import app; app()")
    run = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out")], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'shenhe[batch]'" in lines[0], run.stderr
    assert not (tmp_path / "out").exists()


# ---- with Ray -----------------------------------------------------------------------------------------


def test_batch_scores_every_format_like_the_predictor(tiny_bundle: Path, serving_files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    """JSONL (string and numeric ids), CSV, Parquet and an empty file; Parquet + JSONL output; the review
    band into a queue; decisions equal the offline Predictor's; a rerun with --resume scores nothing."""
    pytest.importorskip("ray")
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shenhe.models.predictor import Predictor
    from shenhe.serving.queue import ReviewStore

    texts = EVERYDAY_TEXTS + [INSULT, INSULT + "！", "你真是个废物", ""]
    inputs = tmp_path / "in"
    _write_jsonl(inputs / "s.jsonl", [{"id": f"s-{i}", "text": t, "extra": [i]} for i, t in enumerate(texts)])
    _write_jsonl(inputs / "n.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    pd.DataFrame({"id": [f"c-{i}" for i in range(len(texts))], "text": texts}).to_csv(inputs / "c.csv", index=False)
    pq.write_table(pa.table({"text": texts, "id": [f"p-{i}" for i in range(len(texts))]}), inputs / "p.parquet")
    (inputs / "empty.jsonl").write_text("", encoding="utf-8")
    out = tmp_path / "out"
    db = f"sqlite:///{tmp_path / 'queue.db'}"
    args = ["--input", str(inputs), "--output", str(out), "--bundle", str(tiny_bundle),
            "--policy", str(serving_files["policy"]), "--jsonl", "--enqueue", db]  # batches span files
    run = _batch(*args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Ray ready in" in run.stderr and "review backlog" in run.stderr

    table = pd.read_parquet(out)  # every part at once
    assert len(table) == 4 * len(texts)
    assert sorted(Path(s).name for s in table["source"].unique()) == ["c.csv", "n.jsonl", "p.parquet", "s.jsonl"]
    expected = Predictor(tiny_bundle, policy=serving_files["policy"], intra_op_threads=1).predict(texts)
    for name, prefix in (("s.jsonl", "s-"), ("n.jsonl", ""), ("c.csv", "c-"), ("p.parquet", "p-")):
        part = table[table["source"].map(lambda s, n=name: Path(s).name == n)].sort_values("row")
        assert list(part["row"]) == list(range(len(texts)))
        assert list(part["id"]) == [f"{prefix}{i}" for i in range(len(texts))]
        assert list(part["decision"]) == [p.decision for p in expected]
        assert [list(c) for c in part["categories"]] == [p.categories for p in expected]
        # Dynamic INT8 quantisation scales activations per model call, so a score moves a little with the texts
        # that share its batch (Ray's batches are not the Predictor's here).
        assert part["score_rumor"].tolist() == pytest.approx([p.scores["rumor"] for p in expected], abs=0.03)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert len(parts) == 5 and any(p.startswith("part-empty-") for p in parts)
    assert not list(out.glob(".tmp-*"))
    lines = [json.loads(x) for f in sorted((out / "_jsonl").glob("*.jsonl")) for x in f.read_text("utf-8").splitlines()]
    assert len(lines) == 4 * len(texts) and set(lines[0]) == {"source", "row", "id", "decision", "categories", "scores"}

    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    reviews = sum(p.decision == "review" for p in expected)
    assert reviews >= 3
    assert summary["texts"] == 4 * len(texts)
    assert summary["decisions"]["review"]["count"] == 4 * reviews
    assert summary["review_backlog"]["review_items"] == 4 * reviews
    assert summary["categories"]["insult_defamation"]["review"] == 4 * reviews
    assert summary["files"] == {"total": 5, "written": 5, "skipped": 0}
    assert summary["timing"]["texts_scored"] == 4 * len(texts) and summary["timing"]["ray_startup_s"] > 0
    # One queue item per (id, text): the four files' ids differ, so 4 x the review-band texts.
    assert summary["enqueued"]["new_items"] == 4 * reviews
    store = ReviewStore(db)
    try:
        assert store.counts().total == 4 * reviews
    finally:
        store.close()

    again = _batch(*args, "--resume")  # everything written: no Ray, nothing queued twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Ray ready" not in again.stderr
    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    assert summary["files"] == {"total": 5, "written": 0, "skipped": 5} and summary["texts"] == 4 * len(texts)
    refused = _batch(*args)  # without --resume an output directory with parts is refused
    assert refused.returncode == 2 and "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    other = _batch("--input", str(inputs), "--output", str(out), "--bundle", str(tiny_bundle), "--resume")
    assert other.returncode == 2 and "policy" in other.stderr  # resuming with another policy: refused


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def test_kill_mid_run_then_resume_finishes_without_duplicates_or_gaps(serving_files: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """SIGKILL the whole run (driver and Ray) as soon as the first part is written, then --resume: every input
    row is in exactly one part, the parts written before the kill are kept, and the review queue holds each
    review-band text once."""
    pytest.importorskip("ray")
    import pandas as pd
    import psutil

    from shenhe.serving.queue import ReviewStore

    inputs = tmp_path / "in"
    n_files, per_file = 10, 40
    for k in range(n_files):  # the default model: slow enough that the kill lands with most files to go
        _write_jsonl(inputs / f"f{k:02d}.jsonl", [
            {"id": f"{k}-{i}", "text": (INSULT if i % 5 == 0 else EVERYDAY_TEXTS[i % len(EVERYDAY_TEXTS)]) + f"（{i}）"}
            for i in range(per_file)])
    out = tmp_path / "out"
    db = f"sqlite:///{tmp_path / 'queue.db'}"
    args = ["--input", str(inputs / "*.jsonl"), "--output", str(out), "--policy", str(serving_files["policy"]),
            "--enqueue", db, "--batch-size", "8"]
    log = (tmp_path / "killed.log").open("w+", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "shenhe.cli", "batch", *args], cwd=REPO, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if list(out.glob("part-*.parquet")):
                break
            time.sleep(0.05)
        pids = _tree(proc.pid)
        for pid in pids:  # like a power cut: the driver and every Ray process at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        psutil.wait_procs(procs, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log.seek(0)
    written_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 1 <= len(written_before) < n_files, log.read()[-3000:]

    run = _batch(*args, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    assert summary["files"]["skipped"] == len(written_before)
    assert summary["files"]["written"] == n_files - len(written_before)
    for name, mtime in written_before.items():  # untouched by the resumed run
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob(".tmp-*"))

    table = pd.read_parquet(out)
    assert len(table) == n_files * per_file
    assert sorted(table["id"]) == sorted(f"{k}-{i}" for k in range(n_files) for i in range(per_file))
    assert not table.duplicated(["source", "row"]).any()
    for _, part in table.groupby("source"):
        assert sorted(part["row"]) == list(range(per_file))
    reviews = table[table["decision"] == "review"]
    assert len(reviews) == n_files * per_file // 5
    store = ReviewStore(db)
    try:
        assert store.counts().total == len(reviews)  # each review-band text queued once, kill or not
    finally:
        store.close()
