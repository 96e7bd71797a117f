"""Invariants of a built corpus, checked by the tests (and usable on any build folder)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.data.build import iter_jsonl
from shenhe.training.data.dedup import key_of_normalized
from shenhe.training.data.records import NORMAL, SPLITS


def read_build(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {split: list(iter_jsonl(out / f"{split}.jsonl")) for split in SPLITS}


def cross_split_texts(rows: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """Normalised texts or dedup keys found in more than one split (must be empty)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for split, split_rows in rows.items():
        for row in split_rows:
            norm = normalize_text(row["text"])
            seen["norm:" + norm].add(split)
            seen["key:" + key_of_normalized(norm)].add(split)
    return sorted((text, sorted(splits)) for text, splits in seen.items() if len(splits) > 1)


def bad_rows(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Rows whose fields or labels are not the corpus format (must be empty)."""
    problems = []
    ids: Counter[str] = Counter()
    for split, split_rows in rows.items():
        for row in split_rows:
            ids[row.get("id", "")] += 1
            if set(row) != {"id", "text", "labels", "source"}:
                problems.append(f"{split}: {row.get('id')}: fields {sorted(row)}")
            elif not isinstance(row["labels"], list) or any(s not in CATEGORY_SLUGS for s in row["labels"]):
                problems.append(f"{split}: {row['id']}: labels {row['labels']!r}")
            elif not row["text"].strip():
                problems.append(f"{split}: {row['id']}: empty text")
    problems += [f"duplicate id {i}" for i, n in ids.items() if n > 1]
    return problems


def count_table(rows: dict[str, list[dict[str, Any]]], sources: set[str] | None = None) -> dict[str, Counter[str]]:
    """Rows per category per split (optionally only rows of some sources), as the stats count them."""
    table: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    for split, split_rows in rows.items():
        for row in split_rows:
            if sources is not None and row["source"] not in sources:
                continue
            table[split]["total"] += 1
            for label in row["labels"] or [NORMAL]:
                table[split][label] += 1
    return table
