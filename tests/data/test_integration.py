"""Build from the real ../shared/data and check the corpus invariants and the data cards."""

from __future__ import annotations

from pathlib import Path

import pytest

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.data.build import DEFAULT_SEED_DIR, BuildConfig, build
from shenhe.training.data.cards import missing_cards, update_cards
from shenhe.training.data.records import SPLITS
from shenhe.training.data.verify import bad_rows, count_table, cross_split_texts, read_build

REPO = Path(__file__).resolve().parents[2]
RAW = REPO.parent / "shared" / "data"
CARDS = REPO / "data_cards"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not RAW.is_dir(), reason=f"real source data not found at {RAW} (../shared/data)"),
]


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_build")
    stats = build(BuildConfig(raw=RAW, out=out, write_hf=False))
    return out, stats, read_build(out)


def test_real_build_has_no_text_in_two_splits(real_build) -> None:
    _, _, rows = real_build
    assert cross_split_texts(rows) == []


def test_real_build_rows_are_well_formed_with_the_nine_slugs(real_build) -> None:
    _, stats, rows = real_build
    assert bad_rows(rows) == []
    assert {split: stats["rows_out"][split] for split in SPLITS} == {split: len(rows[split]) for split in SPLITS}
    assert all(not w.endswith("is missing; skipped") for w in stats["warnings"]), stats["warnings"]


def test_every_trained_category_has_training_rows_and_constitution_none(real_build) -> None:
    _, _, rows = real_build
    train = count_table(rows)["train"]
    if not any(DEFAULT_SEED_DIR.glob("*.jsonl")):
        pytest.skip("synthetic seed files not written yet (training/data/seed/*.jsonl)")
    assert train["constitution"] == 0
    assert [slug for slug in CATEGORY_SLUGS[1:] if train[slug] == 0] == []


def test_synthetic_rows_never_in_test(real_build) -> None:
    _, _, rows = real_build
    assert not [r["id"] for r in rows["test"] if r["source"] == "seed_synthetic"]


def test_data_cards_match_the_build(real_build) -> None:
    _, stats, _ = real_build
    assert missing_cards(CARDS, stats) == []
    stale = update_cards(CARDS, stats, check=True)
    assert stale == [], f"cards out of date: run `shenhe data cards` after `shenhe data build` ({stale})"


def test_held_apart_seeds_are_kept_and_no_corpus_row_is_a_close_copy(real_build) -> None:
    from shenhe.training.data.build import iter_jsonl
    from shenhe.training.data.holdout import MAX_SEED_SIMILARITY, PART_SEED, nearest

    out, stats, rows = real_build
    seeds = [r for r in iter_jsonl(out / "holdout.jsonl") if r["part"] == PART_SEED]
    assert stats["holdout"]["seed_heldout"]["dropped_duplicates"] == 0
    assert len(seeds) == stats["holdout"]["seed_heldout"]["read"]
    corpus = [r["text"] for split in SPLITS for r in rows[split]]
    worst = max(nearest([r["text"] for r in seeds], corpus))
    assert worst[0] < MAX_SEED_SIMILARITY, (worst, corpus[worst[1]])  # measured: 0.21
