"""SophonPlus/ChineseNlpCorpus: hotel (ChnSentiCorp_htl_all) and food-delivery (waimai_10k) reviews.

Everyday benign text: every row -> normal. The sentiment label is kept in meta only; negative
reviews are useful hard negatives (angry, complaining, but neither insulting nor illegal)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, Record, make_record
from shenhe.training.data.sources._io import as_int, convert_rows, read_csv
from shenhe.training.data.sources.spec import SourceSpec

NAME = "SophonPlus_ChineseNlpCorpus"
FILES = (("datasets/ChnSentiCorp_htl_all/ChnSentiCorp_htl_all.csv", "htl"),
         ("datasets/waimai_10k/waimai_10k.csv", "waimai"))


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    present = [(rel, alias) for rel, alias in FILES if (root / rel).is_file()]
    if not present:
        log.warn(f"{NAME}: neither review CSV found in {root}; skipped")
        return
    for rel, alias in present:
        path = root / rel

        def convert(where: object, row: dict[str, str], alias: str = alias) -> Record:
            sentiment = as_int(row["label"], (0, 1))
            return make_record(NAME, f"{alias}:{where}", row["review"], [], sentiment=sentiment)

        yield from convert_rows(NAME, path, read_csv(path, log, NAME), convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="SophonPlus ChineseNlpCorpus — hotel and food-delivery reviews (normal class)",
    url="https://github.com/SophonPlus/ChineseNlpCorpus",
    licence="none stated (no LICENSE file) — research use",
    commercial=False,
    citation="SophonPlus/ChineseNlpCorpus GitHub repository (no paper); ChnSentiCorp from Tan Songbo's corpus.",
    official_splits="",
    load=load,
)
