"""SWSR (aggiejiang/SWSR): Weibo comments labelled sexist or not.

Mapping: sexist -> insult_defamation, not sexist -> normal. SexWeibo.csv (parent posts) carries no
label and is not used. The `SO` (sexual offence) sub-category is *not* mapped to obscene_violent:
those comments talk about sexual harassment or assault in a sexist way, they do not spread
obscene content (see data_cards/SWSR.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, Record, make_record
from shenhe.training.data.sources._io import as_int, convert_rows, read_csv
from shenhe.training.data.sources.spec import SourceSpec

NAME = "SWSR"
FILE = "SWSR/SexComment.csv"


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    path = root / FILE
    if not path.is_file():
        log.warn(f"{NAME}: {path} not found; skipped")
        return

    def convert(where: object, row: dict[str, str]) -> Record:
        sexist = as_int(row["label"], (0, 1))
        row_id = (row.get("index") or "").strip() or str(where)
        return make_record(NAME, row_id, row["comment_text"], ["insult_defamation"] if sexist else [],
                           category=row.get("category") or None, target=row.get("target") or None)

    yield from convert_rows(NAME, path, read_csv(path, log, NAME), convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="SWSR — Sina Weibo Sexism Review",
    url="https://github.com/aggiejiang/SWSR",
    licence="MIT (repository LICENSE, Copyright (c) 2022 Aiqi Jiang)",
    commercial=True,
    citation=("Jiang, Yang, Liu, Zubiaga. SWSR: A Chinese dataset and lexicon for online sexism detection. "
              "Online Social Networks and Media 27 (2022) 100182. doi:10.1016/j.osnem.2021.100182"),
    official_splits="",
    load=load,
)
