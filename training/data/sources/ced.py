"""CED (thunlp/Chinese_Rumor_Dataset): Weibo source posts judged rumour or not by Weibo's
misinformation platform.

Upstream has no label column: a post is a rumour iff a file of the same name exists in
`CED_Dataset/rumor-repost/`, non-rumour iff in `non-rumor-repost/`. The shared copy ships that
derivation as `CED_labels_derived.tsv`; with a full upstream checkout (repost folders present and
no TSV) the labels are derived from the layout here the same way.

Mapping: rumor -> rumor, non-rumor -> normal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import convert_rows, decode, read_text
from shenhe.training.data.sources.spec import SourceSpec

NAME = "CED_Chinese_Rumor"
LABELS_FILE = "CED_labels_derived.tsv"
POSTS_DIR = "CED_Dataset/original-microblog"
LAYOUT = (("CED_Dataset/rumor-repost", "rumor"), ("CED_Dataset/non-rumor-repost", "non-rumor"))
LABEL_MAP = {"rumor": ["rumor"], "non-rumor": []}


def _labels_from_tsv(path: Path, log: IssueLog) -> list[tuple[str, str]] | None:
    text = read_text(path, log, NAME)
    if text is None:
        return None
    pairs = []
    for line_no, line in enumerate(text.splitlines()):
        if line_no == 0 and line.startswith("file\t"):
            continue
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            log.bad_row(NAME, f"{path.name}#{line_no}", f"expected 2 tab-separated fields, got {len(parts)}")
            continue
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def _labels_from_layout(root: Path) -> list[tuple[str, str]] | None:
    if not all((root / folder).is_dir() for folder, _ in LAYOUT):
        return None
    pairs: list[tuple[str, str]] = []
    for folder, label in LAYOUT:
        pairs.extend((p.name, label) for p in sorted((root / folder).iterdir()) if p.suffix == ".json")
    return pairs


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    posts = root / POSTS_DIR
    if not posts.is_dir():
        log.warn(f"{NAME}: {posts} not found; skipped")
        return
    if (root / LABELS_FILE).is_file():
        pairs = _labels_from_tsv(root / LABELS_FILE, log)
    else:
        pairs = _labels_from_layout(root)
    if pairs is None:
        log.warn(f"{NAME}: no {LABELS_FILE} and no rumor-repost/non-rumor-repost folders in {root}; skipped")
        return

    def convert(where: object, pair: tuple[str, str]) -> Record:
        file_name, label = pair
        if label not in LABEL_MAP:
            raise MalformedRow(f"unknown label {label!r}")
        path = posts / file_name
        if path.parent != posts or not path.is_file():
            raise MalformedRow(f"post file {file_name!r} missing")
        post = json.loads(decode(path.read_bytes())[0])
        if not isinstance(post, dict):
            raise MalformedRow("post is not a JSON object")
        return make_record(NAME, Path(file_name).stem, post.get("text"), LABEL_MAP[label],
                           ced_label=label, time=post.get("time"))

    yield from convert_rows(NAME, root / LABELS_FILE, ((p[0], p) for p in pairs), convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="CED — Chinese Weibo rumour dataset (source microblogs)",
    url="https://github.com/thunlp/Chinese_Rumor_Dataset",
    licence="none stated (no LICENSE file; README asks to cite the papers) — research use",
    commercial=False,
    citation=("Song, Tu, Yang, Liu, Sun. CED: Credible Early Detection of Social Media Rumors. "
              "arXiv:1811.04175 (2018). Liu et al. 2015, 中文社交媒体谣言统计语义分析, "
              "Scientia Sinica Informationis 45(12)."),
    official_splits="",
    load=load,
)
