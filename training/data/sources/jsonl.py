"""Labelled JSONL in the corpus format: the synthetic seed set and extra files (--extra).

Seed lines: {"id", "text", "labels": [slug] | [], "kind": "positive" | "hard_negative", "topic"}.
Extra lines (e.g. reviewer labels exported by the review queue): {"id", "text", "labels", "source"}."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import convert_rows, read_text
from shenhe.training.data.sources.spec import SourceSpec

SEED = "seed_synthetic"
SEED_KINDS = ("positive", "hard_negative")
EXTRA_ORIGIN = "extra"


def _lines(path: Path, log: IssueLog, source: str) -> list[tuple[int, str]]:
    text = read_text(path, log, source)
    if text is None:
        return []
    return [(n + 1, line) for n, line in enumerate(text.splitlines()) if line.strip()]


def _labels(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRow(f"labels {value!r} is not a list of slugs")
    unknown = [v for v in value if v not in CATEGORY_SLUGS]
    if unknown:
        raise MalformedRow(f"unknown category slug(s) {unknown}")
    return value


def _object(line: str) -> dict:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise MalformedRow("line is not a JSON object")
    return obj


def load_seed(seed_dir: Path, log: IssueLog) -> Iterator[Record]:
    """Every ``*.jsonl`` in ``seed_dir`` (sorted), as source ``seed_synthetic``."""
    files = sorted(seed_dir.glob("*.jsonl")) if seed_dir.is_dir() else []
    if not files:
        log.warn(f"{SEED}: no *.jsonl seed files in {seed_dir}; skipped")
        return
    seen: set[str] = set()
    for path in files:

        def convert(where: object, line: str, path: Path = path) -> Record:
            obj = _object(line)
            labels = _labels(obj.get("labels"))
            kind = obj.get("kind")
            if kind not in SEED_KINDS:
                raise MalformedRow(f"kind {kind!r} not in {list(SEED_KINDS)}")
            if (kind == "hard_negative") != (not labels):
                raise MalformedRow(f"{kind} row must have {'no' if kind == 'hard_negative' else 'a'} label")
            local_id = str(obj.get("id") or "").strip()
            if not local_id:
                raise MalformedRow("missing id")
            if local_id in seen:
                raise MalformedRow(f"duplicate id {local_id!r}")
            seen.add(local_id)
            return make_record(SEED, local_id, obj.get("text"), labels, kind=kind,
                               topic=obj.get("topic"), file=path.name, origin=SEED)

        yield from convert_rows(SEED, path, _lines(path, log, SEED), convert, log)


def load_extra(path: Path, log: IssueLog, reserved: set[str]) -> Iterator[Record]:
    """Rows of one --extra file. Their ``source`` is kept (default: ``extra``); a name that clashes
    with a public source or the seed set is prefixed ``extra:`` so the reports stay unambiguous."""
    if not path.is_file():
        log.warn(f"extra file {path} not found; skipped")
        return

    def convert(where: object, line: str) -> Record:
        obj = _object(line)
        labels = _labels(obj.get("labels"))
        source = str(obj.get("source") or EXTRA_ORIGIN).strip()
        if source in reserved:
            source = f"{EXTRA_ORIGIN}:{source}"
        local_id = str(obj.get("id") or f"{path.stem}:{where}").strip()
        local_id = local_id.removeprefix(f"{source}:")
        return make_record(source, local_id, obj.get("text"), labels, origin=EXTRA_ORIGIN, file=path.name)

    yield from convert_rows(EXTRA_ORIGIN, path, _lines(path, log, EXTRA_ORIGIN), convert, log)


SEED_SPEC = SourceSpec(
    name=SEED,
    title="shenhe synthetic seed set (cold-start categories and hard negatives)",
    url="training/data/seed/ in this repository",
    licence="Apache-2.0 (written for this project)",
    commercial=True,
    citation="shenhe project, training/data/seed/*.jsonl",
    official_splits="",
    load=load_seed,
)
