"""CHECKED (cyang03/CHECKED): COVID-19 Weibo posts, fake or real per Weibo's fact-check.

Reads the authors' text-only split `baseline/data/new_{train,dev,test}.txt` (`text<TAB>label`);
official splits kept. Mapping: fake -> rumor, real -> normal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import convert_rows, read_text
from shenhe.training.data.sources.spec import SourceSpec

NAME = "CHECKED"
FILES = (("baseline/data/new_train.txt", "train"), ("baseline/data/new_dev.txt", "dev"),
         ("baseline/data/new_test.txt", "test"))
LABEL_MAP = {"fake": ["rumor"], "real": []}


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    present = [(rel, split) for rel, split in FILES if (root / rel).is_file()]
    if not present:
        log.warn(f"{NAME}: no baseline/data/new_*.txt in {root}; skipped")
        return
    for rel, split in present:
        path = root / rel
        text = read_text(path, log, NAME)
        if text is None:
            continue
        lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n")) if line.strip()]

        def convert(where: object, line: str, split: str = split) -> Record:
            if "\t" not in line:
                raise MalformedRow("no TAB before the label")
            body, label = line.rsplit("\t", 1)
            label = label.strip()
            if label not in LABEL_MAP:
                raise MalformedRow(f"unknown label {label!r}")
            return make_record(NAME, f"{split}:{where}", body, LABEL_MAP[label], split=split)

        yield from convert_rows(NAME, path, lines, convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="CHECKED — Chinese COVID-19 fake news dataset (Weibo)",
    url="https://github.com/cyang03/CHECKED",
    licence="none (no LICENSE file); README: 'use the CHECKED data only for academic research'",
    commercial=False,
    citation=("Chen Yang, Xinyi Zhou, Reza Zafarani. CHECKED: Chinese COVID-19 fake news dataset. "
              "Social Network Analysis and Mining 11, 58 (2021). arXiv:2010.09029"),
    official_splits="train, dev, test (time-ordered 70/10/20)",
    load=load,
)
