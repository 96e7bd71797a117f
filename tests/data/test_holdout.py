"""Held-apart data: the dev partition (fit part vs held-apart part) and the held-apart seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import shenhe.training.data.holdout as holdout
from shenhe.training.data.build import BuildConfig, build
from shenhe.training.data.dedup import dedup_key
from shenhe.training.data.holdout import (
    DEFAULT_HELDOUT_DIR,
    MAX_SEED_SIMILARITY,
    PART_DEV,
    PART_SEED,
    SEED_HELDOUT_SOURCE,
    is_held_apart,
    nearest,
)
from shenhe.training.data.records import IssueLog
from shenhe.training.data.sources.jsonl import load_seed

SEED_ONLY = ("national_security", "national_honor", "religion_cult")
EXAMPLES = ("河南人也好，东北人也好，地域黑真的没意思。", "女性在职场上仍然面临不少歧视，这个问题需要正视。")


def _rows(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, raw_dir: Path, seed_dir: Path):
    """The fixture corpus built twice: as shipped (fixture sources are too small to split), and with every
    source's dev split (threshold 1 dev row)."""
    plain = tmp_path_factory.mktemp("plain")
    build(BuildConfig(raw=raw_dir, out=plain, seed_dir=seed_dir, write_hf=False))
    mp = pytest.MonkeyPatch()
    mp.setattr(holdout, "MIN_DEV_ROWS_TO_SPLIT", 1)
    try:
        split = tmp_path_factory.mktemp("split")
        stats = build(BuildConfig(raw=raw_dir, out=split, seed_dir=seed_dir, write_hf=False))
    finally:
        mp.undo()
    return plain, split, stats


def test_holding_apart_changes_neither_train_nor_test(two_builds) -> None:
    plain, split, _ = two_builds
    for name in ("train.jsonl", "test.jsonl"):
        assert (plain / name).read_bytes() == (split / name).read_bytes()


def test_dev_is_partitioned_by_key_hash_into_fit_and_held_apart(two_builds) -> None:
    plain, split, stats = two_builds
    old_dev = {r["id"]: r for r in _rows(plain, "dev")}
    fit = _rows(split, "dev")
    held = [r for r in _rows(split, "holdout") if r["part"] == PART_DEV]
    assert held and fit  # both parts are non-empty on the fixture
    assert sorted([r["id"] for r in fit] + [r["id"] for r in held]) == sorted(old_dev)
    public = set(stats["holdout"]["dev_split_sources"])
    for r in held:
        assert is_held_apart(dedup_key(r["text"])) and r["source"] in public
        assert {k: v for k, v in r.items() if k != "part"} == old_dev[r["id"]]
    for r in fit:  # a public source's row stays in dev only when its hash says so
        assert r["source"] not in public or not is_held_apart(dedup_key(r["text"]))
    assert "seed_synthetic" not in public  # training seeds are never held apart (dev only, fit part)
    assert stats["sources"]["COLD"]["rows"]["holdout"]["total"] == sum(r["source"] == "COLD" for r in held)


def test_small_sources_keep_their_dev_rows(two_builds) -> None:
    plain, _, stats = two_builds
    assert stats  # the plain build: fixture sources have far fewer than MIN_DEV_ROWS_TO_SPLIT dev rows
    held = [r for r in _rows(plain, "holdout") if r["part"] == PART_DEV]
    assert held == []


def test_heldout_seeds_go_to_holdout_only_and_copies_of_corpus_rows_are_dropped(two_builds) -> None:
    plain, _, _ = two_builds
    seeds = [r for r in _rows(plain, "holdout") if r["part"] == PART_SEED]
    assert sorted(r["id"] for r in seeds) == [f"{SEED_HELDOUT_SOURCE}:ho-n-1", f"{SEED_HELDOUT_SOURCE}:ho-ns-p-1"]
    assert all(r["source"] == SEED_HELDOUT_SOURCE for r in seeds)
    stats = json.loads((plain / "stats.json").read_text(encoding="utf-8"))
    assert stats["holdout"]["seed_heldout"] == {"read": 3, "kept": 2, "dropped_duplicates": 1}
    keys = {dedup_key(r["text"]) for s in ("train", "dev", "test") for r in _rows(plain, s)}
    assert not keys & {dedup_key(r["text"]) for r in seeds}


def test_training_seed_loader_never_reads_the_heldout_folder() -> None:
    rows = list(load_seed(DEFAULT_HELDOUT_DIR.parent, IssueLog()))
    assert rows and not [r for r in rows if r.id.split(":", 1)[1].startswith("ho-")]


def test_shipped_heldout_seeds_are_enough_and_not_paraphrases_of_training_seeds() -> None:
    rows = [json.loads(line) for f in sorted(DEFAULT_HELDOUT_DIR.glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    for slug in SEED_ONLY:
        assert sum(r["labels"] == [slug] for r in rows) >= 40, slug
    negatives = [r for r in rows if not r["labels"]]
    assert len(negatives) >= 80
    assert set(EXAMPLES) <= {r["text"] for r in negatives}
    assert sum(r["topic"].startswith("counter_speech") for r in negatives) >= 25
    train_texts = [json.loads(line)["text"] for f in sorted(DEFAULT_HELDOUT_DIR.parent.glob("*.jsonl"))
                   for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    worst = max(nearest([r["text"] for r in rows], train_texts)) if rows else (0.0, -1)
    assert worst[0] < MAX_SEED_SIMILARITY, (worst, train_texts[worst[1]])


def test_nearest_finds_a_close_copy() -> None:
    sim, j = nearest(["我手里有一份绝密文件出价高就卖"], ["今天天气不错", "我手里有一份绝密文件，出价高就卖给境外"])[0]
    assert j == 1 and sim > MAX_SEED_SIMILARITY
