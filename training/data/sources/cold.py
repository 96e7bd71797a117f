"""COLD (thu-coai/COLDataset): Zhihu/Weibo comments on race, region and gender, offensive or not.

Mapping (departs from SOURCE.md for `region`, see data_cards/COLD.md): offensive `race` and
`region` comments -> ethnic_hatred (the policy puts attacks on regional groups there), offensive
`gender` comments -> insult_defamation; safe -> normal. Official splits are kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import as_int, convert_rows, read_csv
from shenhe.training.data.sources.spec import SourceSpec

NAME = "COLD"
FILES = (("train.csv", "train"), ("dev.csv", "dev"), ("test.csv", "test"))  # test.csv: holdout only
TOPIC_LABEL = {"race": "ethnic_hatred", "region": "ethnic_hatred", "gender": "insult_defamation"}


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    present = [(name, split) for name, split in FILES if (root / name).is_file()]
    if not present:
        log.warn(f"{NAME}: none of {', '.join(n for n, _ in FILES)} found in {root}; skipped")
        return
    for name, split in present:
        path = root / name

        def convert(where: object, row: dict[str, str], split: str = split) -> Record:
            topic = (row.get("topic") or "").strip()
            if topic not in TOPIC_LABEL:
                raise MalformedRow(f"unknown topic {topic!r}")
            offensive = as_int(row["label"], (0, 1))
            row_id = (row.get("") or "").strip() or str(where)
            fine = row.get("fine-grained-label")
            return make_record(NAME, f"{split}:{row_id}", row["TEXT"],
                               [TOPIC_LABEL[topic]] if offensive else [],
                               split=split, topic=topic, fine_grained=fine or None)

        yield from convert_rows(NAME, path, read_csv(path, log, NAME), convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="COLD — Chinese Offensive Language Dataset",
    url="https://github.com/thu-coai/COLDataset",
    licence="Apache-2.0 (repository LICENSE; no separate data licence)",
    commercial=True,
    citation=("Deng, Zhou, Sun, Mi, Huang. COLD: A Benchmark for Chinese Offensive Language Detection. "
              "EMNLP 2022, pp. 11580-11599. https://aclanthology.org/2022.emnlp-main.796"),
    official_splits="train, dev (official test is in the hold-out, not in ../shared/data)",
    load=load,
)
