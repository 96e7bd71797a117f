"""ToxiCN (DUT-lujunyu/ToxiCN): Zhihu/Tieba posts, toxic or not, with type and target group.

The authors' split (ToxiCN_ex train.json / test.json) is kept; ToxiCN_1.0.csv holds the same texts
and is read only for rows the JSON files lack (or when they are missing).

Mapping: non-toxic -> normal; general offensive (toxic_type 1) -> insult_defamation; hate speech
(toxic_type 2) -> ethnic_hatred for targets Racism/Region, insult_defamation for LGBTQ/Sexism/others
(a post may carry both)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import as_int, convert_rows, read_csv, read_json
from shenhe.training.data.sources.spec import SourceSpec

NAME = "ToxiCN"
JSON_SPLITS = (("ToxiCN_ex/ToxiCN/data/train.json", "train"), ("ToxiCN_ex/ToxiCN/data/test.json", "test"))
CSV_FILE = "ToxiCN_1.0.csv"
# `target` one-hot positions: LGBTQ, Region, Sexism, Racism, others (CSV adds a 6th: non-hate).
TARGET_LABELS = ("insult_defamation", "ethnic_hatred", "insult_defamation", "ethnic_hatred", "insult_defamation")


def map_labels(toxic: object, toxic_type: object, target: object) -> list[str]:
    if as_int(toxic, (0, 1)) == 0:
        return []
    kind = as_int(toxic_type, (0, 1, 2))
    if kind != 2:  # general offensive language (0 with toxic=1 does not occur; treat alike)
        return ["insult_defamation"]
    if isinstance(target, str):
        target = json.loads(target)
    if not isinstance(target, list) or len(target) < len(TARGET_LABELS):
        raise MalformedRow(f"target {target!r} is not a one-hot list")
    labels = {label for flag, label in zip(target, TARGET_LABELS, strict=False) if int(flag) == 1}
    return sorted(labels) or ["insult_defamation"]


def _convert(where: object, row: dict, split: str | None, prefix: str) -> Record:
    return make_record(NAME, f"{prefix}:{where}", row["content"],
                       map_labels(row["toxic"], row["toxic_type"], row["target"]),
                       split=split, topic=row.get("topic"), platform=row.get("platform"),
                       expression=row.get("expression"))


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    seen: set[str] = set()
    found = False
    for rel, split in JSON_SPLITS:
        path = root / rel
        if not path.is_file():
            continue
        found = True
        data = read_json(path, log, NAME)
        if data is None:
            continue
        if not isinstance(data, list):
            log.warn(f"{NAME}: {path} is not a JSON list; skipped")
            continue
        for record in convert_rows(NAME, path, enumerate(data),
                                   lambda w, r, s=split: _convert(w, r, s, s), log):  # type: ignore[misc]  # mypy cannot type a lambda's default
            seen.add(record.text)
            yield record
    csv_path = root / CSV_FILE
    if csv_path.is_file():
        found = True
        for record in convert_rows(NAME, csv_path, read_csv(csv_path, log, NAME),
                                   lambda w, r: _convert(w, r, None, "csv"), log):
            if record.text not in seen:  # same text as an official-split row: that one is used
                yield record
    if not found:
        log.warn(f"{NAME}: neither {CSV_FILE} nor ToxiCN_ex JSON files found in {root}; skipped")


SPEC = SourceSpec(
    name=NAME,
    title="ToxiCN — fine-grained Chinese toxic language",
    url="https://github.com/DUT-lujunyu/ToxiCN",
    licence="CC BY-NC-ND 4.0 (README); 'for scientific research only'",
    commercial=False,
    citation=("Lu, Xu, Zhang, Min, Yang, Lin. Facilitating Fine-grained Detection of Chinese Toxic Language: "
              "Hierarchical Taxonomy, Resources, and Benchmarks. ACL 2023. "
              "https://aclanthology.org/2023.acl-long.898/"),
    official_splits="train, test (ToxiCN_ex); dev carved from train by text hash",
    load=load,
    dev_from_train=True,
)
