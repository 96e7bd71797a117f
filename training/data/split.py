"""Split assignment: by dedup key, so copies and near-duplicates of a text can never straddle splits.

Policy (documented in data_cards/README.md):
- a group containing a row from a source's official split takes that split, test > dev > train
  (a text in an official test split and elsewhere stays in test and leaves train/dev);
- a source with official train+test but no dev (ToxiCN) gets dev carved out of its train split by
  the key hash (test untouched);
- other public rows: key hash -> 80% train, 10% dev, 10% test;
- groups made only of synthetic seed rows or --extra rows: key hash -> 85% train, 15% dev, never test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

from shenhe.training.data.records import Record

SALT = "shenhe-split-v1"
PUBLIC_TRAIN, PUBLIC_DEV = 80, 90  # bucket < 80 train, < 90 dev, else test
SUPPLEMENT_TRAIN = 85  # seed/extra: bucket < 85 train, else dev
SPLIT_PRIORITY = ("test", "dev", "train")


def bucket(key: str) -> int:
    """Stable 0..99 bucket of a dedup key (sha256, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{SALT}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def assign_split(key: str, public: Sequence[Record], dev_from_train: Collection[str]) -> str:
    """Split for the group with dedup ``key``; ``public`` are its rows from public sources
    (empty when the group holds only seed/extra rows)."""
    b = bucket(key)
    if not public:
        return "train" if b < SUPPLEMENT_TRAIN else "dev"
    official = {r.official_split for r in public if r.official_split}
    for split in SPLIT_PRIORITY:
        if split not in official:
            continue
        if split == "train" and PUBLIC_TRAIN <= b < PUBLIC_DEV:
            trainers = [r for r in public if r.official_split == "train"]
            if all(r.source in dev_from_train for r in trainers):
                return "dev"
        return split
    if b < PUBLIC_TRAIN:
        return "train"
    return "dev" if b < PUBLIC_DEV else "test"
