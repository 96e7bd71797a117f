"""Held-apart data: rows that neither training nor threshold fitting ever sees (``holdout.jsonl``).

Two parts, each row marked by ``part``:

- ``dev_heldout``: half of the dev rows of every public source with at least
  :data:`MIN_DEV_ROWS_TO_SPLIT` dev rows, chosen by a hash of the row's dedup key (salt
  :data:`SALT`, so the choice is independent of the train/dev/test hash). These rows leave
  ``dev.jsonl``: ``dev.jsonl`` is the *fit* part (early stopping, calibration and the thresholds
  that ``shenhe export`` chooses), ``holdout.jsonl`` the part they are measured on. ``train.jsonl``
  and ``test.jsonl`` are unchanged by this.
- ``seed_heldout``: hand-written texts in ``training/data/seed/heldout/`` (source ``seed_heldout``),
  written separately from the training seeds, for the seed-only categories and for hard negatives
  (ordinary discussion and counter-speech). The seed loader reads ``seed/*.jsonl`` only, so these never
  reach train or dev; one whose dedup key equals any corpus row's is dropped (counted in stats.json).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from shenhe.training.data.records import IssueLog, Record

SALT = "shenhe-holdout-v1"
HOLDOUT_SHARE = 50  # percent of a qualifying source's dev rows held apart
MIN_DEV_ROWS_TO_SPLIT = 400  # a source with fewer dev rows keeps them all in dev (too few to fit on half)
HOLDOUT_SPLIT = "holdout"
PART_DEV = "dev_heldout"
PART_SEED = "seed_heldout"
SEED_HELDOUT_SOURCE = "seed_heldout"
DEFAULT_HELDOUT_DIR = Path(__file__).resolve().parent / "seed" / "heldout"
# A held-apart seed may not resemble a training seed more than this (character-trigram Jaccard).
MAX_SEED_SIMILARITY = 0.35


def holdout_bucket(key: str) -> int:
    """Stable 0..99 bucket of a dedup key for the fit/held-apart partition of dev."""
    digest = hashlib.sha256(f"{SALT}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def is_held_apart(key: str) -> bool:
    return holdout_bucket(key) < HOLDOUT_SHARE


def split_sources(dev_rows_per_source: dict[str, int], eligible: Iterable[str]) -> set[str]:
    """The sources whose dev rows are partitioned (public, with enough dev rows)."""
    allowed = set(eligible)
    return {s for s, n in dev_rows_per_source.items() if s in allowed and n >= MIN_DEV_ROWS_TO_SPLIT}


def load_heldout_seeds(folder: Path, log: IssueLog) -> list[Record]:
    """The held-apart seed rows (same line format as the training seeds), as source ``seed_heldout``."""
    from shenhe.training.data.sources.jsonl import load_seed

    if not folder.is_dir():
        log.warn(f"{SEED_HELDOUT_SOURCE}: folder {folder} is missing; no held-apart seeds")
        return []
    out = []
    for r in load_seed(folder, log):
        local = r.id.split(":", 1)[1]
        meta = {**r.meta, "origin": SEED_HELDOUT_SOURCE}
        out.append(Record(f"{SEED_HELDOUT_SOURCE}:{local}", r.text, r.labels, SEED_HELDOUT_SOURCE, meta))
    return out


# --------------------------------------------------------------------------- similarity check


def char_ngrams(text: str, n: int = 3) -> frozenset[str]:
    from shenhe.training.data.dedup import dedup_key

    key = dedup_key(text)
    if len(key) < n:
        return frozenset({key}) if key else frozenset()
    return frozenset(key[i : i + n] for i in range(len(key) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def nearest(texts: Sequence[str], references: Sequence[str], n: int = 3) -> list[tuple[float, int]]:
    """For each text, the highest character n-gram Jaccard similarity to any reference and its index
    (an inverted index keeps this fast for a few hundred texts against tens of thousands)."""
    ref_grams = [char_ngrams(t, n) for t in references]
    index: dict[str, list[int]] = {}
    for j, grams in enumerate(ref_grams):
        for g in grams:
            index.setdefault(g, []).append(j)
    out = []
    for t in texts:
        grams = char_ngrams(t, n)
        candidates: set[int] = set()
        for g in grams:
            candidates.update(index.get(g, ()))
        best = (0.0, -1)
        for j in candidates:
            s = jaccard(grams, ref_grams[j])
            if s > best[0]:
                best = (s, j)
        out.append(best)
    return out
