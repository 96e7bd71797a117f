"""Telecom_Fraud_Texts_5 (ChangMianRen/Telecom_Fraud_Texts_5): four telecom-fraud types and normal
SMS. `label04-last.csv` is GB18030-encoded upstream, the others UTF-8 (decoded per file).

Mapping: label 0 (normal SMS) -> normal; the four fraud classes -> other_illegal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import convert_rows, read_csv
from shenhe.training.data.sources.spec import SourceSpec

NAME = "Telecom_Fraud_Texts_5"
FILES = tuple(f"label0{i}-last.csv" for i in range(5))
FRAUD_TYPES = ("冒充公检法及政府机关类", "贷款、代办信用卡类", "冒充客服服务", "冒充领导、熟人类")


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    present = [name for name in FILES if (root / name).is_file()]
    if not present:
        log.warn(f"{NAME}: no label0*-last.csv in {root}; skipped")
        return
    for name in present:
        path = root / name
        stem = name.removesuffix("-last.csv")

        def convert(where: object, row: dict[str, str], stem: str = stem) -> Record:
            label = (row.get("label") or "").strip()
            if label == "0":
                labels: list[str] = []
            elif label in FRAUD_TYPES:
                labels = ["other_illegal"]
            else:
                raise MalformedRow(f"unknown label {label!r}")
            return make_record(NAME, f"{stem}:{where}", row["content"], labels, fraud_type=label)

        yield from convert_rows(NAME, path, read_csv(path, log, NAME), convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="Telecom_Fraud_Texts_5 — Chinese telecom-fraud texts (4 fraud types + normal SMS)",
    url="https://github.com/ChangMianRen/Telecom_Fraud_Texts_5",
    licence="GPL-3.0 LICENSE, but README data terms: research by universities/institutes only, "
            "commercial use forbidden",
    commercial=False,
    citation=("Li, Zhang, Jiang. Innovative Telecom Fraud Detection: A New Dataset and an Advanced Model with "
              "RoBERTa and Dual Loss Functions. Applied Sciences 2024, 14, 11628. doi:10.3390/app142411628"),
    official_splits="",
    load=load,
)
