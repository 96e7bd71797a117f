"""ChineseHarm-Bench (zjunlp/ChineseHarm-bench): real moderation data from Tencent, six labels.

Reads `benchmark/bench.json` and the per-category files (supersets for some labels; the build's
deduplication merges the copies). Mapping: 不违规 -> normal; 低俗色情 (vulgar/porn) and 博彩
(gambling) -> obscene_violent; 谩骂引战 (abuse/flame-baiting) -> insult_defamation; 欺诈 (fraud) and
黑产广告 (black-market ads) -> other_illegal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shenhe.training.data.records import IssueLog, MalformedRow, Record, make_record
from shenhe.training.data.sources._io import convert_rows, read_json
from shenhe.training.data.sources.spec import SourceSpec

NAME = "ChineseHarm-bench"
BENCH_DIR = "benchmark"
LABEL_MAP = {
    "不违规": [],
    "低俗色情": ["obscene_violent"],
    "博彩": ["obscene_violent"],
    "谩骂引战": ["insult_defamation"],
    "欺诈": ["other_illegal"],
    "黑产广告": ["other_illegal"],
}
# ASCII names for ids (file stems are the Chinese label names).
FILE_ALIAS = {"bench": "bench", "不违规": "normal", "低俗色情": "porn", "博彩": "gambling",
              "欺诈": "fraud", "谩骂引战": "abuse", "黑产广告": "blackmarket"}


def load(root: Path, log: IssueLog) -> Iterator[Record]:
    folder = root / BENCH_DIR
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        log.warn(f"{NAME}: no {BENCH_DIR}/*.json in {root}; skipped")
        return
    for path in files:
        data = read_json(path, log, NAME)
        if data is None:
            continue
        if not isinstance(data, list):
            log.warn(f"{NAME}: {path} is not a JSON list; skipped")
            continue
        alias = FILE_ALIAS.get(path.stem, path.stem)

        def convert(where: object, item: dict, alias: str = alias) -> Record:
            label = item["标签"]
            if label not in LABEL_MAP:
                raise MalformedRow(f"unknown label {label!r}")
            return make_record(NAME, f"{alias}:{where}", item["文本"], LABEL_MAP[label], harm_label=label)

        yield from convert_rows(NAME, path, enumerate(data), convert, log)


SPEC = SourceSpec(
    name=NAME,
    title="ChineseHarm-Bench — Chinese harmful content detection benchmark (Tencent moderation data)",
    url="https://github.com/zjunlp/ChineseHarm-bench",
    licence="CC BY-NC 4.0 (README Ethics Statement; the repository's MIT LICENSE covers the code)",
    commercial=False,
    citation=("Liu, Cheng, Tian, Liang, Yin, Han, Zhang, Hooi, Chen, Deng. ChineseHarm-Bench: A Chinese "
              "Harmful Content Detection Benchmark. arXiv:2506.10960 (2025)"),
    official_splits="",
    load=load,
)
