"""Data cards: generated blocks render from stats; every source has a card."""

from __future__ import annotations

from pathlib import Path

from shenhe.training.data.cards import missing_cards, render_source_counts, update_card
from shenhe.training.data.records import SPLITS
from shenhe.training.data.sources import ALL_SOURCES

CARDS = Path(__file__).resolve().parents[2] / "data_cards"


def stats_with(rows: dict[str, dict[str, int]], **extra) -> dict:
    full = {split: {k: rows.get(split, {}).get(k, 0) for k in
                    ("constitution", "national_security", "national_honor", "ethnic_hatred", "religion_cult",
                     "rumor", "obscene_violent", "insult_defamation", "other_illegal", "normal", "total")}
            for split in SPLITS}
    source = {"kind": "public", "licence": "MIT", "commercial": True, "rows_read": 5, "malformed": 1,
              "malformed_examples": ["a.csv#3: empty text"], "no_content": 0, "untrained_label_dropped": 0,
              "duplicates_removed": 2, "dropped_from_test": 0, "label_conflict_groups": 0, "rows": full}
    source.update(extra)
    return {"sources": {"SWSR": source}}


def test_counts_block_lists_nonzero_categories_and_totals() -> None:
    stats = stats_with({"train": {"insult_defamation": 2, "normal": 1, "total": 3},
                        "test": {"normal": 1, "total": 1}})
    block = render_source_counts(stats, "SWSR")
    assert "| insult_defamation | 2 | 0 | 0 |" in block
    assert "| **total** | 3 | 0 | 1 |" in block
    assert "rumor" not in block  # empty categories are omitted
    assert "malformed rows skipped: 1" in block and "`a.csv#3: empty text`" in block


def test_update_card_rewrites_only_the_generated_block() -> None:
    card = ("# SWSR\nhand-written prose\n<!-- BEGIN GENERATED: counts-SWSR -->\nold numbers\n"
            "<!-- END GENERATED: counts-SWSR -->\nmore prose\n")
    stats = stats_with({"train": {"normal": 4, "total": 4}})
    new = update_card(card, stats)
    assert new.startswith("# SWSR\nhand-written prose\n") and new.endswith("more prose\n")
    assert "old numbers" not in new and "| normal | 4 | 0 | 0 |" in new
    assert update_card(new, stats) == new  # idempotent


def test_repository_has_a_card_per_source_and_the_overview() -> None:
    stats = {"sources": {s.name: {"kind": "synthetic" if s.name == "seed_synthetic" else "public"}
                         for s in ALL_SOURCES}}
    assert missing_cards(CARDS, stats) == []
    for spec in ALL_SOURCES:
        text = (CARDS / f"{spec.name}.md").read_text(encoding="utf-8")
        assert f"<!-- BEGIN GENERATED: counts-{spec.name} -->" in text
        assert ("Commercial use: yes" in text) == spec.commercial, spec.name
