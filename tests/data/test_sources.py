"""Each loader reads its source's files as they are and maps labels as the data cards say."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shenhe.training.data.records import IssueLog, Record
from shenhe.training.data.sources import (
    PUBLIC_SOURCES,
    ced,
    checked,
    chineseharm,
    cold,
    jsonl,
    sophonplus,
    swsr,
    telecom_fraud,
    toxicn,
)


def load(module, raw: Path) -> tuple[dict[str, Record], IssueLog]:
    log = IssueLog()
    records = list(module.load(raw / module.NAME, log))
    by_id = {r.id: r for r in records}
    assert len(by_id) == len(records), "ids must be unique within a source"
    return by_id, log


def test_cold_maps_topic_and_keeps_official_split(raw_dir: Path) -> None:
    rows, log = load(cold, raw_dir)
    assert rows["COLD:train:1082"].labels == ("ethnic_hatred",)  # region -> ethnic_hatred (policy)
    assert rows["COLD:train:16"].labels == ("ethnic_hatred",)  # race
    assert rows["COLD:train:15"].labels == ("insult_defamation",)  # gender
    assert rows["COLD:train:19"].labels == ()  # safe, anti-bias
    assert rows["COLD:dev:8168"].official_split == "dev"
    assert rows["COLD:train:15"].meta["topic"] == "gender"
    assert rows["COLD:train:1082"].text.startswith("说这些")  # BOM not in the first column's value
    assert log.malformed["COLD"] == 2  # label 'x', topic 'sports'
    assert "train.csv#4" in log.examples["COLD"][0]


def test_toxicn_maps_type_and_targets_and_reads_csv_only_rows(raw_dir: Path) -> None:
    rows, log = load(toxicn, raw_dir)
    assert rows["ToxiCN:train:0"].labels == ("ethnic_hatred",)  # hate, racism target
    assert rows["ToxiCN:train:1"].labels == ("insult_defamation",)  # general offensive
    assert rows["ToxiCN:train:2"].labels == ()
    assert rows["ToxiCN:train:3"].labels == ("ethnic_hatred", "insult_defamation")  # sexism + racism
    assert rows["ToxiCN:train:4"].labels == ("insult_defamation",)  # LGBTQ
    assert rows["ToxiCN:test:0"].labels == ("ethnic_hatred",) and rows["ToxiCN:test:0"].official_split == "test"
    # The CSV repeats the JSON texts (not read twice); its extra row has no official split.
    csv_rows = [r for r in rows.values() if r.id.startswith("ToxiCN:csv:")]
    assert [r.text for r in csv_rows] == ["只在CSV里的一句话：黑鬼滚回非洲"]
    assert csv_rows[0].official_split is None and csv_rows[0].labels == ("ethnic_hatred",)
    assert log.malformed["ToxiCN"] == 1


def test_swsr_sexist_is_insult_and_sexual_offence_is_not_obscene(raw_dir: Path) -> None:
    rows, log = load(swsr, raw_dir)
    assert rows["SWSR:0"].labels == ("insult_defamation",)
    assert rows["SWSR:1"].meta["category"] == "SO"
    assert rows["SWSR:1"].labels == ("insult_defamation",)
    assert rows["SWSR:2"].labels == ()
    assert all("gender" not in r.meta and "location" not in r.meta for r in rows.values())  # no author data
    assert log.malformed["SWSR"] == 1


def test_ced_reads_derived_labels_and_counts_missing_posts(raw_dir: Path) -> None:
    rows, log = load(ced, raw_dir)
    assert rows["CED_Chinese_Rumor:0_yBmepBtUB_2279086572"].labels == ("rumor",)
    assert rows["CED_Chinese_Rumor:1001_abc_1"].labels == ()
    assert len(rows) == 3
    assert log.malformed["CED_Chinese_Rumor"] == 1
    assert "9999_missing_0.json" in log.examples["CED_Chinese_Rumor"][0]


def test_ced_derives_labels_from_repository_layout_without_tsv(raw_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / ced.NAME
    shutil.copytree(raw_dir / ced.NAME / "CED_Dataset", root / "CED_Dataset")
    (root / "CED_Dataset/rumor-repost").mkdir()
    (root / "CED_Dataset/non-rumor-repost").mkdir()
    (root / "CED_Dataset/rumor-repost/1002_def_2.json").write_text("[]", encoding="utf-8")
    (root / "CED_Dataset/non-rumor-repost/1001_abc_1.json").write_text("[]", encoding="utf-8")
    log = IssueLog()
    rows = {r.id: r for r in ced.load(root, log)}
    assert rows["CED_Chinese_Rumor:1002_def_2"].labels == ("rumor",)
    assert rows["CED_Chinese_Rumor:1001_abc_1"].labels == ()
    assert len(rows) == 2  # the third post is in neither folder: unlabelled, not used
    assert not log.warnings


def test_checked_keeps_splits_and_counts_line_without_tab(raw_dir: Path) -> None:
    rows, log = load(checked, raw_dir)
    assert rows["CHECKED:train:1"].labels == ("rumor",)
    assert rows["CHECKED:train:0"].labels == ()
    assert rows["CHECKED:test:0"].official_split == "test"
    assert rows["CHECKED:train:0"].text.endswith("《全球经济展望》")  # label column not in the text
    assert log.malformed["CHECKED"] == 1


def test_chineseharm_label_map_and_file_aliases(raw_dir: Path) -> None:
    rows, log = load(chineseharm, raw_dir)
    labels = {r.text: r.labels for r in rows.values()}
    assert labels["代发短信，有想做的联系我，无押金"] == ("other_illegal",)
    assert labels["https://lgclub.agjy96.com带你上岸"] == ("obscene_violent",)  # gambling
    assert labels["你妈死了，废物"] == ("insult_defamation",)
    assert labels["今天的比赛真精彩，主队赢了"] == ()
    assert "ChineseHarm-bench:porn:1" in rows  # per-label files read too (ASCII ids)
    assert log.malformed["ChineseHarm-bench"] == 1


def test_telecom_reads_the_gb18030_file(raw_dir: Path) -> None:
    gb_file = raw_dir / telecom_fraud.NAME / "label04-last.csv"
    with pytest.raises(UnicodeDecodeError):
        gb_file.read_bytes().decode("utf-8")  # the fixture really is GB18030, like upstream
    rows, log = load(telecom_fraud, raw_dir)
    impersonation = rows["Telecom_Fraud_Texts_5:label04:0"]
    assert impersonation.text.startswith("我是祝桥光明学校的李老师")
    assert impersonation.labels == ("other_illegal",)
    assert impersonation.meta["fraud_type"] == "冒充领导、熟人类"
    assert rows["Telecom_Fraud_Texts_5:label00:0"].labels == ()
    assert not log.malformed and not log.warnings  # label02/03 are absent: not an error


def test_sophonplus_is_all_normal_and_empty_review_is_malformed(raw_dir: Path) -> None:
    rows, log = load(sophonplus, raw_dir)
    assert len(rows) == 3 and all(r.labels == () for r in rows.values())
    assert rows["SophonPlus_ChineseNlpCorpus:waimai:1"].meta["sentiment"] == 0
    assert log.malformed["SophonPlus_ChineseNlpCorpus"] == 1


@pytest.mark.parametrize("spec", PUBLIC_SOURCES, ids=lambda s: s.name)
def test_loader_on_an_empty_folder_warns_with_the_source_name(spec, tmp_path: Path) -> None:
    log = IssueLog()
    assert list(spec.load(tmp_path, log)) == []
    assert len(log.warnings) == 1 and spec.name in log.warnings[0]


def test_unparseable_json_file_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "bench.json").write_text('[{"文本": "半截', encoding="utf-8")
    log = IssueLog()
    assert list(chineseharm.load(tmp_path, log)) == []
    assert "bench.json is not valid JSON" in log.warnings[0]


def test_seed_loader_validates_rows(seed_dir: Path) -> None:
    log = IssueLog()
    rows = {r.id: r for r in jsonl.load_seed(seed_dir, log)}
    assert rows["seed_synthetic:ns-p-1"].labels == ("national_security",)
    assert rows["seed_synthetic:ns-p-1"].meta["kind"] == "positive"
    assert rows["seed_synthetic:ns-n-1"].labels == ()
    assert "seed_synthetic:ns-x-1" not in rows  # bad kind
    assert rows["seed_synthetic:ns-p-1"].text.startswith("我手里有一份绝密文件")  # first of the duplicate ids
    assert log.malformed["seed_synthetic"] == 3  # bad kind, duplicate id, broken JSON line


def test_extra_rows_keep_their_source_unless_it_names_a_public_source(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "1", "text": "你真是个废物", "labels": ["insult_defamation"], "source": "COLD"}\n'
                    '{"id": "review:2", "text": "正常的一句话", "labels": [], "source": "review"}\n', encoding="utf-8")
    log = IssueLog()
    rows = list(jsonl.load_extra(path, log, {"COLD"}))
    assert [(r.id, r.source) for r in rows] == [("extra:COLD:1", "extra:COLD"), ("review:2", "review")]
    assert all(r.meta["origin"] == "extra" for r in rows)


def test_record_rejects_unknown_slug() -> None:
    with pytest.raises(ValueError, match="unknown category"):
        Record("x:1", "文本", ("spam",), "x")


def test_csv_rows_with_wrong_column_count_or_oversized_field_are_malformed(tmp_path: Path) -> None:
    folder = tmp_path / "SWSR"
    folder.mkdir()
    (folder / "SexComment.csv").write_text(
        "index,weibo_id,comment_text,gender,location,like,date,label,category,target\n"
        "0,a,女生学理工科也很厉害,女,北京,3,23/08/2018 13:11,0,,\n"
        "1,b,少了好几列\n"
        "2,c,多了一列,女,北京,3,23/08/2018 13:11,0,,,extra\n"
        f'3,d,"{"长" * 140_000}",女,北京,3,23/08/2018 13:11,0,,\n'  # over csv.field_size_limit()
        "4,e,男生学文科也很好,男,上海,1,23/08/2018 13:12,0,,\n", encoding="utf-8")
    log = IssueLog()
    rows = list(swsr.load(tmp_path, log))
    assert [r.id for r in rows] == ["SWSR:0", "SWSR:4"]
    assert log.malformed["SWSR"] == 3
