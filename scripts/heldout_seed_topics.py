#!/usr/bin/env python3
"""Decisions on the held-apart hand-written seeds by topic, from `shenhe classify --input` output.

    grep '"hard_negative"' training/data/seed/heldout/heldout_seed.jsonl > reports/neg.jsonl
    shenhe classify --input reports/neg.jsonl --output reports/neg_pred.jsonl --quiet
    python scripts/heldout_seed_topics.py reports/neg_pred.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", type=Path)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        kind = "counter-speech" if r["topic"].startswith("counter_speech") else f"{r['kind']} (other)"
        for key in (kind, r["topic"]):
            groups[key][r["decision"]] += 1
    print("| group | texts | pass | review | block |\n|---|---:|---:|---:|---:|")
    for key in sorted(groups, key=lambda k: (k != "counter-speech" and not k.endswith("(other)"), k)):
        c = groups[key]
        print(f"| {key} | {sum(c.values())} | {c['pass']} | {c['review']} | {c['block']} |")
    blocked = [r for r in rows if r["decision"] == "block"]
    if blocked:
        print("\nBlocked:\n")
        for r in blocked:
            top = max(r["scores"], key=r["scores"].get)
            print(f"- `{r['text']}` ({r['topic']}): {', '.join(r['categories'])} {r['scores'][top]:.3f}")


if __name__ == "__main__":
    main()
