"""Reading evaluation JSONL: valid files load; every bad line is a one-line error naming the line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shenhe.eval.data import EvalDataError, read_eval_file
from shenhe.models.policy import CATEGORY_SLUGS


def write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = json.dumps({"text": "你就是个傻逼", "labels": ["insult_defamation"]}, ensure_ascii=False)
CLEAN = json.dumps({"text": "今天天气很好", "labels": [], "source": "weibo", "id": 7}, ensure_ascii=False)


def test_reads_labels_sources_ids_and_skips_blank_lines(tmp_path: Path) -> None:
    d = read_eval_file(write(tmp_path, [GOOD, "", "   ", CLEAN]))
    assert d.n == 2
    assert d.texts == ["你就是个傻逼", "今天天气很好"]
    assert d.y_true.shape == (2, 9)
    assert d.y_true[0].tolist() == [s == "insult_defamation" for s in CATEGORY_SLUGS]
    assert not d.y_true[1].any()
    assert d.sources == [None, "weibo"] and d.has_sources
    assert d.ids == ["line1", "7"]  # missing id -> line number


def test_hash_changes_with_content(tmp_path: Path) -> None:
    a = read_eval_file(write(tmp_path, [GOOD], "a.jsonl"))
    b = read_eval_file(write(tmp_path, [GOOD, CLEAN], "b.jsonl"))
    assert a.sha256 != b.sha256


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('{"text": "谣言", "labels": ["fake_news"]}', "line 3: unknown label 'fake_news'"),
        ('{"labels": []}', 'line 3: missing "text"'),
        ('{"text": "你好", "labels": [}', "line 3: not valid JSON"),
        ('{"text": 5, "labels": []}', 'line 3: "text" must be a string'),
        ('{"text": "你好"}', 'line 3: missing "labels"'),
        ('{"text": "你好", "labels": "rumor"}', 'line 3: "labels" must be a list'),
        ('["你好", []]', "line 3: expected a JSON object"),
    ],
)
def test_bad_line_names_the_line(tmp_path: Path, bad: str, expected: str) -> None:
    p = write(tmp_path, [GOOD, CLEAN, bad, GOOD])
    with pytest.raises(EvalDataError) as err:
        read_eval_file(p)
    msg = str(err.value)
    assert expected.replace("line 3", f"{p}:3") in msg
    assert "\n" not in msg


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match="empty file"):
        read_eval_file(empty)
    with pytest.raises(EvalDataError, match="no such file"):
        read_eval_file(tmp_path / "nope.jsonl")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "latin.jsonl"
    p.write_bytes(GOOD.encode() + b"\n" + '{"text": "caf\xe9", "labels": []}'.encode("latin-1") + b"\n")
    with pytest.raises(EvalDataError, match=r":2: not valid UTF-8"):
        read_eval_file(p)


def test_cli_bad_data_is_one_line_exit_2(tmp_path: Path) -> None:
    p = write(tmp_path, [GOOD, '{"text": "谣言", "labels": ["fake_news"]}'])
    proc = subprocess.run(
        [sys.executable, "-m", "shenhe.cli", "eval", "--data", str(p), "--out", str(tmp_path / "out"),
         "--bundle", str(tmp_path / "no-bundle")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: ") and f"{p}:2: unknown label 'fake_news'" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written
