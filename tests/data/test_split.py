"""Split assignment by key: official splits kept, test wins, supplements never in test."""

from __future__ import annotations

from collections import Counter

from shenhe.training.data.records import Record
from shenhe.training.data.split import assign_split, bucket


def rec(source: str, split: str | None = None) -> Record:
    return Record(f"{source}:1", "文本", (), source, {"split": split} if split else {})


def test_bucket_is_stable_and_spread() -> None:
    assert bucket("河南人偷井盖") == bucket("河南人偷井盖")
    counts = Counter(bucket(f"文本{i}") // 10 for i in range(5000))
    assert len(counts) == 10 and min(counts.values()) > 400  # roughly uniform deciles


def test_official_splits_are_kept_and_test_wins() -> None:
    assert assign_split("k", [rec("COLD", "dev")], set()) == "dev"
    assert assign_split("k", [rec("COLD", "train"), rec("ToxiCN", "test")], set()) == "test"
    assert assign_split("k", [rec("COLD", "train"), rec("CHECKED", "dev")], set()) == "dev"
    assert assign_split("k", [rec("SWSR"), rec("ToxiCN", "test")], set()) == "test"


def test_dev_carved_from_train_only_for_sources_without_dev() -> None:
    keys = [f"文本{i}" for i in range(2000)]
    toxicn = Counter(assign_split(k, [rec("ToxiCN", "train")], {"ToxiCN"}) for k in keys)
    assert set(toxicn) == {"train", "dev"} and 150 < toxicn["dev"] < 250
    cold = Counter(assign_split(k, [rec("COLD", "train")], {"ToxiCN"}) for k in keys)
    assert cold == {"train": 2000}


def test_unsplit_public_rows_hash_80_10_10_and_supplements_never_test() -> None:
    keys = [f"句子{i}" for i in range(3000)]
    public = Counter(assign_split(k, [rec("SWSR")], set()) for k in keys)
    assert 2250 < public["train"] < 2550 and 200 < public["dev"] < 400 and 200 < public["test"] < 400
    supplement = Counter(assign_split(k, [], set()) for k in keys)
    assert "test" not in supplement and 350 < supplement["dev"] < 550
