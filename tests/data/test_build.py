"""`build()` on fixture files: dedup, conflicts, splits, supplements, stats and determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shenhe.training.data.build import BuildConfig, BuildError, build
from shenhe.training.data.records import SPLITS
from shenhe.training.data.verify import bad_rows, count_table, cross_split_texts, read_build


@pytest.fixture(scope="module")
def built(tmp_path_factory, raw_dir: Path, seed_dir: Path, extra_file: Path):
    out = tmp_path_factory.mktemp("build")
    stats = build(BuildConfig(raw=raw_dir, out=out, seed_dir=seed_dir, extra=(extra_file,)))
    return out, stats, read_build(out)


def by_text(rows: dict, text: str) -> tuple[str, dict]:
    hits = [(split, row) for split in SPLITS for row in rows[split] if row["text"] == text]
    assert len(hits) == 1, hits
    return hits[0]


def test_no_normalised_text_or_near_duplicate_in_two_splits(built) -> None:
    _, _, rows = built
    assert cross_split_texts(rows) == []


def test_every_row_has_the_corpus_fields_and_known_slugs(built) -> None:
    _, _, rows = built
    assert bad_rows(rows) == []


def test_near_duplicate_of_an_official_test_text_joins_test_with_both_labels(built) -> None:
    _, stats, rows = built
    # SWSR's copy (with emoji) merges into ToxiCN's official test row; union of the two sources' labels.
    split, row = by_text(rows, "河南人都是小偷，偷井盖的")
    assert split == "test" and row["id"] == "ToxiCN:test:0"
    assert row["labels"] == ["ethnic_hatred", "insult_defamation"]
    assert not any("偷井盖的😡" in r["text"] for s in SPLITS for r in rows[s])
    assert stats["sources"]["SWSR"]["duplicates_removed"] == 1


def test_text_in_official_train_and_test_stays_in_test_only(built) -> None:
    _, _, rows = built
    split, row = by_text(rows, "网传钟南山院士说吃大蒜可以预防新冠肺炎！！")
    assert split == "test" and row["id"] == "CHECKED:test:0"


def test_cross_source_conflict_keeps_the_human_positive(built) -> None:
    _, _, rows = built
    split, row = by_text(rows, "外国人滚出中国，别来污染我们")  # COLD offensive, SophonPlus normal
    assert (split, row["source"], row["labels"]) == ("dev", "COLD", ["ethnic_hatred"])


def test_seed_rows_are_train_or_dev_and_never_duplicate_test(built) -> None:
    _, stats, rows = built
    assert not [r for r in rows["test"] if r["source"] == "seed_synthetic"]
    seeds = [r for s in ("train", "dev") for r in rows[s] if r["source"] == "seed_synthetic"]
    assert sorted(r["id"] for r in seeds) == ["seed_synthetic:ns-n-1", "seed_synthetic:ns-p-1"]
    seed_stats = stats["sources"]["seed_synthetic"]
    assert seed_stats["dropped_from_test"] == 1  # "今天天气不错，出去走走！" is a ToxiCN test text
    assert seed_stats["untrained_label_dropped"] == 1  # constitution-only row
    assert seed_stats["malformed"] == 3


def test_reviewer_labels_win_and_join_train_dev(built) -> None:
    _, stats, rows = built
    split, row = by_text(rows, "送餐太慢了，菜都凉了，差评")
    assert row["source"] == "review_queue" and row["labels"] == ["insult_defamation"] and split != "test"
    assert stats["dedup"]["conflicts_reviewer"] == 1
    assert stats["sources"]["extra"]["malformed"] == 1  # unknown slug 'spam'


def test_malformed_rows_are_counted_per_source(built) -> None:
    _, stats, _ = built
    malformed = {name: s["malformed"] for name, s in stats["sources"].items() if s["malformed"]}
    assert malformed == {"CED_Chinese_Rumor": 1, "CHECKED": 1, "COLD": 2, "ChineseHarm-bench": 1, "SWSR": 1,
                         "SophonPlus_ChineseNlpCorpus": 1, "ToxiCN": 1, "extra": 1, "seed_synthetic": 3}


def test_stats_match_the_written_files(built) -> None:
    out, stats, rows = built
    assert json.loads((out / "stats.json").read_text(encoding="utf-8")) == stats
    for name, source in stats["sources"].items():
        table = count_table(rows, {name})
        for split in SPLITS:
            assert {k: v for k, v in source["rows"][split].items() if v} == dict(table[split]), (name, split)
    assert {split: stats["rows_out"][split] for split in SPLITS} == {split: len(rows[split]) for split in SPLITS}
    held = (out / "holdout.jsonl").read_text(encoding="utf-8").splitlines()
    assert stats["rows_out"]["holdout"] == len(held)


def test_datasetdict_holds_the_same_rows(built) -> None:
    import datasets

    out, _, rows = built
    dd = datasets.load_from_disk(str(out / "hf"))
    assert set(dd) == set(SPLITS)
    for split in SPLITS:
        assert dd[split].to_list() == rows[split]


def test_second_build_is_byte_identical(built, tmp_path: Path, raw_dir: Path, seed_dir: Path,
                                        extra_file: Path) -> None:
    out, _, _ = built
    build(BuildConfig(raw=raw_dir, out=tmp_path, seed_dir=seed_dir, extra=(extra_file,)))
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (out / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_missing_source_folder_is_skipped_with_a_warning_naming_it(tmp_path: Path, raw_dir: Path,
                                                                    seed_dir: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir / "COLD", raw / "COLD")
    stats = build(BuildConfig(raw=raw, out=tmp_path / "out", seed_dir=seed_dir, write_hf=False))
    missing = [w for w in stats["warnings"] if "source folder" in w]
    assert len(missing) == 7 and any("ToxiCN" in w for w in missing)
    assert stats["sources"]["COLD"]["rows_read"] == 7


def test_commercial_only_keeps_cold_swsr_and_seeds(tmp_path: Path, raw_dir: Path, seed_dir: Path) -> None:
    stats = build(BuildConfig(raw=raw_dir, out=tmp_path, seed_dir=seed_dir, commercial_only=True, write_hf=False))
    assert stats["options"]["sources"] == ["COLD", "SWSR", "seed_synthetic"]
    rows = read_build(tmp_path)
    assert {r["source"] for s in SPLITS for r in rows[s]} == {"COLD", "SWSR", "seed_synthetic"}
    assert any("ToxiCN: excluded by --commercial-only" in w for w in stats["warnings"])


def test_sources_option_selects_and_rejects_unknown_names(tmp_path: Path, raw_dir: Path) -> None:
    stats = build(BuildConfig(raw=raw_dir, out=tmp_path, sources=("checked", "CED_Chinese_Rumor"), write_hf=False))
    assert stats["options"]["sources"] == ["CED_Chinese_Rumor", "CHECKED"]
    with pytest.raises(BuildError, match="unknown source 'Weibo'"):
        build(BuildConfig(raw=raw_dir, out=tmp_path, sources=("Weibo",), write_hf=False))
