"""models/jsonl.py: the one reader of labelled JSONL (training splits and evaluation files apply the same
rules through it), the one reader of text files to classify, and the one atomic writer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shenhe.eval.data import EvalDataError, read_eval_file
from shenhe.models.jsonl import (
    JsonlError,
    atomic_jsonl,
    count_records,
    iter_text_records,
    read_labelled,
)
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.finetune.dataset import DataError, read_split

GOOD = json.dumps({"id": "a", "text": "你就是个傻逼", "labels": ["insult_defamation"], "source": "cold"},
                  ensure_ascii=False)
CLEAN = json.dumps({"text": "今天天气很好", "labels": []}, ensure_ascii=False)


def write_bytes(tmp_path: Path, data: bytes, name: str = "data.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    return write_bytes(tmp_path, ("\n".join(lines) + "\n").encode(), name)


# ---- labelled files --------------------------------------------------------------------------------


def test_reads_rows_with_their_lines_ids_sources_and_hash(tmp_path: Path) -> None:
    p = write(tmp_path, [GOOD, "", "  \t", CLEAN, json.dumps({"text": "x", "labels": [], "id": 7})])
    rows = read_labelled(p)
    assert len(rows) == 3 and rows.lines == [1, 4, 5]
    assert rows.texts == ["你就是个傻逼", "今天天气很好", "x"]
    assert rows.ids == ["a", None, "7"] and rows.sources == ["cold", None, None]
    assert rows.labels.dtype == bool and rows.labels.shape == (3, 9)
    assert rows.labels[0].tolist() == [s == "insult_defamation" for s in CATEGORY_SLUGS]
    assert not rows.labels[1:].any()
    assert rows.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert rows.weights.tolist() == [1.0, 1.0, 1.0]


def test_sample_weights(tmp_path: Path) -> None:
    p = write(tmp_path, [GOOD, json.dumps({"text": "b", "labels": ["rumor"], "weight": 2.5})])
    assert read_labelled(p).weights.tolist() == [1.0, 2.5]
    assert read_split(p).weights.tolist() == [1.0, 2.5]  # training weighs rows by it; evaluation ignores it
    assert read_eval_file(p).n == 2


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    rows = read_labelled(write_bytes(tmp_path, b"\n \n"))
    assert len(rows) == 0 and rows.labels.shape == (0, 9)


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbf" + GOOD.encode() + b"\n" + CLEAN.encode() + b"\n",  # a byte-order mark before line 1
    GOOD.encode() + b"\r\n" + CLEAN.encode() + b"\r\n",  # Windows line ends
    GOOD.encode() + b"\r" + CLEAN.encode() + b"\r",  # old Mac line ends
    GOOD.encode() + b"\n" + CLEAN.encode(),  # no newline at the end
], ids=["bom", "crlf", "cr", "no-final-newline"])
def test_line_ends_and_bom(tmp_path: Path, data: bytes) -> None:
    rows = read_labelled(write_bytes(tmp_path, data))
    assert rows.texts == ["你就是个傻逼", "今天天气很好"] and rows.lines == [1, 2]


BAD_LINES = [
    ('{"text": "谣言", "labels": ["fake_news"]}', "unknown label 'fake_news'; expected one of constitution"),
    ('{"labels": []}', 'missing "text"'),
    ('{"text": "你好", "labels": [}', "not valid JSON (Expecting value at column 27)"),
    ('{"text": 5, "labels": []}', '"text" must be a string, got int'),
    ('{"text": "你好"}', 'missing "labels" (use [] for a text that is not harmful)'),
    ('{"text": "你好", "labels": "rumor"}', '"labels" must be a list of category slugs'),
    ('{"text": "你好", "labels": [null]}', '"labels" must be a list of category slugs'),
    ('["你好", []]', "expected a JSON object, got list"),
    ('"你好"', "expected a JSON object, got str"),
    ('{"text": "你好", "labels": [], "source": 3}', '"source" must be a string'),
    ('{"text": "你好", "labels": [], "id": 1.5}', '"id" must be a string or an integer'),
    ('{"text": "你好", "labels": [], "id": true}', '"id" must be a string or an integer'),
    ('{"text": "你好", "labels": [], "weight": 0}', "'weight' must be a positive number (got 0)"),
    ('{"text": "你好", "labels": [], "weight": "2"}', "'weight' must be a positive number"),
    ("[" * 100_000, "not valid JSON"),
]


def _eval(p: Path) -> object:
    return read_eval_file(p)


def _train(p: Path) -> object:
    return read_split(p)


@pytest.mark.parametrize(("bad", "expected"), BAD_LINES, ids=[e for _, e in BAD_LINES])
@pytest.mark.parametrize(("read", "error"), [(read_labelled, JsonlError), (_eval, EvalDataError),
                                             (_train, DataError)], ids=["reader", "eval", "train"])
def test_a_bad_line_is_one_line_naming_file_and_line_for_every_reader(
        tmp_path: Path, bad: str, expected: str, read: Callable[[Path], object], error: type[Exception]) -> None:
    p = write(tmp_path, [GOOD, "", bad, GOOD])
    with pytest.raises(error) as err:
        read(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:3: ") and expected in msg and "\n" not in msg


@pytest.mark.parametrize(("read", "error"), [(read_labelled, JsonlError), (_eval, EvalDataError),
                                             (_train, DataError)], ids=["reader", "eval", "train"])
def test_unreadable_files(tmp_path: Path, read: Callable[[Path], object], error: type[Exception]) -> None:
    with pytest.raises(error, match="no such file"):
        read(tmp_path / "nope.jsonl")
    with pytest.raises(error, match="is a directory"):
        read(tmp_path)
    p = write_bytes(tmp_path, GOOD.encode() + b"\n" + '{"text": "caf\xe9", "labels": []}'.encode("latin-1") + b"\n")
    with pytest.raises(error, match=r":2: not valid UTF-8"):
        read(p)


def test_training_and_evaluation_see_the_same_rows(tmp_path: Path) -> None:
    p = write(tmp_path, [GOOD, CLEAN], "dev.jsonl")
    split, evalset = read_split(p), read_eval_file(p)
    assert split.texts == evalset.texts
    assert np.array_equal(split.labels.astype(bool), evalset.y_true) and split.labels.dtype == np.float32
    # Only what a missing id or source is called differs: training keys rows by file and line, the
    # evaluation's error tables name the line.
    assert split.ids == ["a", "dev:2"] and evalset.ids == ["a", "line2"]
    assert split.sources == ["cold", "unknown"] and evalset.sources == ["cold", None]


# ---- text files to classify ------------------------------------------------------------------------


def test_text_records_take_objects_and_bare_strings(tmp_path: Path) -> None:
    p = write(tmp_path, [json.dumps({"id": 1, "body": "甲", "x": True}, ensure_ascii=False), "",
                         json.dumps("乙", ensure_ascii=False)])
    assert list(iter_text_records(p, "body")) == [(1, {"id": 1, "body": "甲", "x": True}), (3, {"body": "乙"})]
    assert count_records(p) == 2


@pytest.mark.parametrize(("line", "expected"), [
    ('{"text": 3}', "expected an object with a string 'text' field"),
    ("[1, 2]", "expected an object with a string 'text' field"),
    ("not json", "not valid JSON"),
])
def test_text_record_errors_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    p = write(tmp_path, ['{"text": "ok"}', line])
    with pytest.raises(JsonlError) as err:
        list(iter_text_records(p))
    assert str(err.value).startswith(f"{p}:2: ") and expected in str(err.value)


# ---- the atomic writer -----------------------------------------------------------------------------


def test_atomic_writer_writes_the_whole_file(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "out.jsonl"
    with atomic_jsonl(out) as w:
        w.write({"text": "你好", "n": 1})
        w.write({"text": "再见"})
        assert not out.exists()  # nothing visible until the block ends
    assert w.written == 2
    assert out.read_text(encoding="utf-8") == '{"text": "你好", "n": 1}\n{"text": "再见"}\n'
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]


def test_atomic_writer_leaves_the_old_file_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_jsonl(out) as w:
        w.write({"text": "half"})
        raise RuntimeError("stopped midway")
    assert out.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no .tmp left behind
