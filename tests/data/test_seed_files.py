"""The shipped seed files: one schema, unique ids, and held-apart texts that are neither training texts nor
close copies of them (issue 16: hard negatives, counter-speech and short rumours, trained and held apart)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.data.dedup import dedup_key
from shenhe.training.data.holdout import DEFAULT_HELDOUT_DIR, MAX_SEED_SIMILARITY, nearest
from shenhe.training.data.records import IssueLog
from shenhe.training.data.sources.jsonl import load_seed

SEED_DIR = DEFAULT_HELDOUT_DIR.parent
FIELDS = {"id", "text", "labels", "kind", "topic"}
EXAMPLES = ("河南人也好，东北人也好，地域黑真的没意思。", "女性在职场上仍然面临不少歧视，这个问题需要正视。")
RUMOUR_EXAMPLE = "听说明天要地震了，大家快跑"


def _read(files: list[Path]) -> list[dict]:
    return [{**json.loads(line), "_file": f.name} for f in files
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _read(sorted(SEED_DIR.glob("*.jsonl")))


@pytest.fixture(scope="module")
def held() -> list[dict]:
    return _read(sorted(DEFAULT_HELDOUT_DIR.glob("*.jsonl")))


def test_every_seed_line_has_the_schema(train: list[dict], held: list[dict]) -> None:
    for r in train + held:
        where = f"{r['_file']}:{r.get('id')}"
        assert set(r) - {"_file"} == FIELDS, where
        assert isinstance(r["text"], str) and r["text"] == r["text"].strip() and re.search(r"[\u4e00-\u9fff]", r["text"])
        assert r["kind"] in ("positive", "hard_negative"), where
        assert isinstance(r["labels"], list) and all(s in CATEGORY_SLUGS for s in r["labels"]), where
        assert (r["kind"] == "hard_negative") == (r["labels"] == []), where
        assert isinstance(r["topic"], str) and re.fullmatch(r"[a-z_]+", r["topic"]), where
        assert normalize_text(r["text"]) and dedup_key(r["text"]), where
    ids = Counter(r["id"] for r in train + held)
    assert [i for i, n in ids.items() if n > 1] == []
    assert all(r["id"].startswith("ho-") for r in held) and not any(r["id"].startswith("ho-") for r in train)
    # the loader reads every line (nothing malformed)
    log = IssueLog()
    assert len(list(load_seed(SEED_DIR, log))) == len(train) and not log.malformed


def test_issue16_hard_negatives_and_rumours_are_there(train: list[dict], held: list[dict]) -> None:
    negatives = [r for r in train if r["_file"] == "hard_negatives.jsonl"]
    assert len(negatives) >= 300 and all(r["kind"] == "hard_negative" for r in negatives)
    topics = Counter(r["topic"] for r in negatives)
    for kind in ("region", "race", "gender", "lgbt", "bullying"):
        assert topics[f"counter_speech_{kind}"] >= 20, kind
    for topic in ("ethnicity_discussion", "region_discussion", "foreigner_discussion", "religion_discussion",
                  "history", "national_events", "disaster_news", "health_news", "lawful_criticism"):
        assert topics[topic] >= 10, topic
    rumour = [r for r in train if r["_file"] == "rumor.jsonl"]
    assert sum(r["labels"] == ["rumor"] for r in rumour) >= 30 and sum(not r["labels"] for r in rumour) >= 30
    new_held = [r for r in held if r["_file"] == "heldout_issue16.jsonl"]
    assert sum(not r["labels"] for r in new_held) >= 120
    assert sum(r["topic"].startswith("counter_speech") for r in new_held) >= 60
    assert sum(r["labels"] == ["rumor"] for r in new_held) >= 15


def test_evaluation_examples_are_held_apart_never_trained(train: list[dict], held: list[dict]) -> None:
    train_keys = {dedup_key(r["text"]) for r in train}
    held_texts = {r["text"] for r in held}
    for text in (*EXAMPLES, RUMOUR_EXAMPLE):
        assert text in held_texts
        assert dedup_key(text) not in train_keys
    sims = nearest([*EXAMPLES, RUMOUR_EXAMPLE], [r["text"] for r in train])
    assert max(s for s, _ in sims) < MAX_SEED_SIMILARITY


def test_held_apart_seeds_are_not_training_seeds_or_close_copies(train: list[dict], held: list[dict]) -> None:
    train_keys = {dedup_key(r["text"]) for r in train}
    assert not [r["id"] for r in held if dedup_key(r["text"]) in train_keys]
    held_keys = Counter(dedup_key(r["text"]) for r in held)
    assert [k for k, n in held_keys.items() if n > 1] == []  # no held-apart text twice either
    sims = nearest([r["text"] for r in held], [r["text"] for r in train])
    worst = max(sims)
    assert worst[0] < MAX_SEED_SIMILARITY, (worst, train[worst[1]]["text"])
