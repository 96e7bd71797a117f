"""Offline Predictor speed: texts/s by batch size, single-text latency, and the INT8 batch effect.

    .venv/bin/python bench/predictor_speed.py [--bundle models/default] [--texts data/build/test.jsonl]
                                               [--n 1000] [--threads N]

Prints measured numbers only (no assertions). The batch effect: INT8 dynamic quantisation takes
activation ranges per batch, so a text's score moves slightly with its batch neighbours; we report the
largest score change and how many decisions differ between batch 32 and one-at-a-time scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.predictor import Predictor, default_threads  # noqa: E402


def read_texts(path: Path, n: int) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    default_texts = ROOT / "data" / "build" / "test.jsonl"
    if not default_texts.is_file():
        default_texts = ROOT / "tests" / "training" / "data" / "dev.jsonl"
    ap.add_argument("--texts", type=Path, default=default_texts)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    pred = Predictor(args.bundle, intra_op_threads=args.threads)
    texts = read_texts(args.texts, args.n)
    lengths = [len(t) for t in texts]
    print(f"bundle {pred.info.name} {pred.info.version}; {len(texts)} texts from {args.texts} "
          f"(median {statistics.median(lengths):.0f} chars); onnxruntime threads {pred.intra_op_threads} "
          f"(cores available {default_threads()}, os.cpu_count {os.cpu_count()})")
    pred.predict(texts[:64], batch_size=32)  # warm-up

    singles = texts[: min(200, len(texts))]
    lat = []
    for t in singles:
        t0 = time.perf_counter()
        pred.predict([t], batch_size=1)
        lat.append(1000 * (time.perf_counter() - t0))
    lat.sort()
    print(f"single text: p50 {lat[len(lat) // 2]:.1f} ms, p95 {lat[int(len(lat) * 0.95)]:.1f} ms "
          f"({len(singles)} texts, predict() incl. normalisation and tokenisation)")

    print("batch  texts/s")
    for bs in (1, 8, 32, 64):
        sample = texts if bs > 1 else texts[:200]
        t0 = time.perf_counter()
        pred.predict(sample, batch_size=bs)
        print(f"{bs:>5}  {len(sample) / (time.perf_counter() - t0):8.1f}")

    import numpy as np

    sample = texts[:300]
    batched = pred.predict(sample, batch_size=32)
    alone = [pred.predict([t], batch_size=1)[0] for t in sample]
    diff = max(abs(a.scores[s] - b.scores[s]) for a, b in zip(batched, alone, strict=True) for s in a.scores)
    flips = sum(a.decision != b.decision for a, b in zip(batched, alone, strict=True))
    print(f"INT8 batch effect over {len(sample)} texts: max |score(batch 32) - score(alone)| = {diff:.2e}; "
          f"decisions differing: {flips} ({100 * flips / len(sample):.2f}%)")
    dist = {d: sum(p.decision == d for p in batched) for d in ("pass", "review", "block")}
    print(f"decisions at batch 32: {dist}; mean score {np.mean([max(p.scores.values()) for p in batched]):.3f}")


if __name__ == "__main__":
    main()
