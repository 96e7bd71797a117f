#!/usr/bin/env python3
"""Write the training augmenter's homophone candidate table (training/finetune/augment_tables/homophones.tsv).

    python scripts/augment_homophone_table.py data/build/train.jsonl

One line per toneless pinyin reading: the reading, then up to ``--per-reading`` candidate characters in
order of their frequency in the given corpus (Weibo-style training texts: what users actually type).
A candidate is a simplified character among the ``--top`` most frequent Chinese characters of the corpus
whose *isolated* reading (``pypinyin.lazy_pinyin``) is the line's reading, so a reader sees the intended
sound; characters in ``LOADED`` (insults, obscenities, death and violence) are never candidates, so a
harmless text never gains a loaded character. Only train.jsonl is read: dev, test and held-apart texts
do not shape the table. Deterministic: same corpus, same file.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "training" / "finetune" / "augment_tables" / "homophones.tsv"
# Never a replacement: a harmless text rewritten with these would no longer be plainly harmless.
LOADED = set("婊屎屌逼奸妓娼嫖尸死杀毒贱骚淫蠢傻猪狗鸡鸭蛆粪尿屁操艹肏滚鬼贼骗赌枪炸屠砍恨丑腐奴畜癌瘟疯残废妈爹爸娘尼黑")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path, help="train.jsonl of a `shenhe data build`")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--top", type=int, default=3500, help="candidates come from the N most frequent characters")
    ap.add_argument("--per-reading", type=int, default=8)
    args = ap.parse_args()

    import opencc
    from pypinyin import lazy_pinyin

    t2s = opencc.OpenCC("t2s")
    counts: Counter[str] = Counter()
    with args.corpus.open(encoding="utf-8") as f:
        for line in f:
            counts.update(ch for ch in json.loads(line)["text"] if "\u4e00" <= ch <= "\u9fff")
    groups: dict[str, list[str]] = defaultdict(list)
    for ch, _ in sorted(counts.most_common(args.top), key=lambda kv: (-kv[1], kv[0])):
        if ch in LOADED or t2s.convert(ch) != ch:
            continue
        reading = lazy_pinyin(ch)[0]
        if reading.isascii() and reading.isalpha() and len(groups[reading]) < args.per_reading:
            groups[reading].append(ch)
    lines = [f"{r}\t{''.join(chars)}" for r, chars in sorted(groups.items()) if len(chars) > 1]
    header = (f"# toneless pinyin -> candidates, most frequent first; top {args.top} characters of {args.corpus.name} "
              f"({sum(counts.values())} Chinese characters); scripts/augment_homophone_table.py")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(lines)} readings")


if __name__ == "__main__":
    main()
