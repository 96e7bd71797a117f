"""`shenhe batch` (Ray Data) against the offline Predictor, in one run, on the same texts:

  (a) `models.predictor.Predictor` on the bundle, 256 texts per call (what `shenhe classify --input` does),
      with its default threads (the cores this process may use): texts/s of the model calls, load excluded;
  (b) `shenhe batch` as a user runs it (a subprocess writing Parquet): texts/s end to end (process start,
      Ray's startup, actor start and model loads, reading and writing included) and texts/s once Ray is up,
      with Ray's startup and the rest of the overhead in seconds, all measured.

Prints the ratio (b)/(a); the acceptance bar is 0.85. The texts: N (default 100,000) made from the test
split by repeating it with seeded perturbations (a suffix, an inserted space or full-width punctuation, a
doubled character, a dropped final character), split into --files JSONL files.

    .venv/bin/python bench/batch.py [--n 100000] [--texts data/build/test.jsonl] [--files 8] [--json out.json]

On two cores 100k texts take tens of minutes per side (the test split averages 69 characters, up to
3,778): run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PUNCT = "，。！？、；：“”（）"


def perturb(text: str, rng: random.Random, i: int) -> str:
    """A variant of ``text`` of about the same length (so the cost per text stays the test split's)."""
    kind = rng.randrange(5)
    if not text:
        return text
    k = rng.randrange(len(text) + 1)
    if kind == 0:
        return f"{text}（{i}）"
    if kind == 1:
        return text[:k] + " " + text[k:]
    if kind == 2:
        return text[:k] + rng.choice(PUNCT) + text[k:]
    if kind == 3 and k < len(text):
        return text[:k] + text[k] + text[k:]
    return text[:-1] if len(text) > 1 else text + "。"


def make_texts(path: Path, n: int, seed: int = 0) -> list[str]:
    base = [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]
    if not base:
        raise SystemExit(f"{path}: no texts")
    rng = random.Random(seed)
    return [base[i] if i < len(base) else perturb(base[i % len(base)], rng, i) for i in range(n)]


def write_inputs(texts: list[str], folder: Path, files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // files)
    for f in range(files):
        chunk = texts[f * per:(f + 1) * per]
        with (folder / f"part{f:03d}.jsonl").open("w", encoding="utf-8") as out:
            for j, t in enumerate(chunk):
                out.write(json.dumps({"id": f"bench-{f * per + j}", "text": t}, ensure_ascii=False) + "\n")


def predictor_rate(texts: list[str], bundle: Path | None, call: int) -> dict[str, float]:
    from shenhe.models.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor(bundle)
    load = time.perf_counter() - t0
    predictor.predict(texts[:call])  # warm-up (not counted)
    t0 = time.perf_counter()
    for k in range(0, len(texts), call):
        predictor.predict(texts[k:k + call])
    elapsed = time.perf_counter() - t0
    return {"texts_per_s": round(len(texts) / elapsed, 1), "seconds": round(elapsed, 1), "load_s": round(load, 2),
            "threads": predictor.intra_op_threads}


def batch_rate(inputs: Path, out: Path, n: int, bundle: Path | None, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "shenhe.cli", "batch", "--input", str(inputs), "--output", str(out), "--quiet",
           *(["--bundle", str(bundle)] if bundle else []), *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"shenhe batch failed ({run.returncode}):\n{run.stderr[-3000:]}")
    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    timing = summary["timing"]
    if summary["texts"] != n or timing["texts_scored"] != n:
        raise SystemExit(f"shenhe batch wrote {summary['texts']} texts, expected {n}")
    import pyarrow.dataset as ds

    rows = ds.dataset(out, format="parquet").count_rows()
    if rows != n:
        raise SystemExit(f"the Parquet parts hold {rows} rows, expected {n}")
    return {"texts_per_s": round(n / wall, 1), "seconds": round(wall, 1),
            "after_startup_texts_per_s": timing["texts_per_s"], "scoring_s": timing["scoring_s"],
            "ray_startup_s": timing["ray_startup_s"], "actors": timing["actors"],
            "threads_per_actor": timing["threads_per_actor"], "decisions": summary["decisions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="texts (default 100,000)")
    ap.add_argument("--texts", type=Path, default=ROOT / "data" / "build" / "test.jsonl")
    ap.add_argument("--files", type=int, default=8, help="input JSONL files for shenhe batch")
    ap.add_argument("--bundle", type=Path, default=None, help="default: models/default")
    ap.add_argument("--call", type=int, default=256, help="texts per Predictor call (shenhe batch's --batch-size)")
    ap.add_argument("--batch-args", default="", help="extra `shenhe batch` options, e.g. '--threads 2'")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the inputs and outputs in this folder")
    args = ap.parse_args()

    texts = make_texts(args.texts, args.n)
    chars = sorted(len(t) for t in texts)
    print(f"{len(texts)} texts from {args.texts} (median {chars[len(chars) // 2]} characters), "
          f"{os.cpu_count()} CPUs seen, {len(os.sched_getaffinity(0))} usable", flush=True)
    with tempfile.TemporaryDirectory(prefix="shenhe-bench-batch-") as tmp:
        work = args.keep or Path(tmp)
        write_inputs(texts, work / "in", args.files)
        print("(a) offline Predictor ...", flush=True)
        a = predictor_rate(texts, args.bundle, args.call)
        print(f"    {a['texts_per_s']} texts/s ({a['seconds']} s, {a['threads']} threads, load {a['load_s']} s)",
              flush=True)
        print("(b) shenhe batch ...", flush=True)
        out = work / "out"
        if out.exists():
            raise SystemExit(f"{out} exists: remove it or use another --keep folder")
        b = batch_rate(work / "in", out, len(texts), args.bundle,
                       ["--batch-size", str(args.call), *args.batch_args.split()])
    ideal = len(texts) / a["texts_per_s"]
    overhead = b["seconds"] - ideal
    rest = b["seconds"] - b["ray_startup_s"] - b["scoring_s"]
    print(f"    {b['texts_per_s']} texts/s end to end ({b['seconds']} s; {b['actors']} actors × "
          f"{b['threads_per_actor']} thread(s)); {b['after_startup_texts_per_s']} texts/s once Ray was up")
    print(f"    {b['seconds']} s = Ray startup {b['ray_startup_s']:.1f} s + pipeline {b['scoring_s']:.1f} s (actors' "
          f"start and model loads, reading, scoring, writing) + {rest:.1f} s (process start, input scan, summary)")
    print(f"    versus the Predictor's {ideal:.1f} s for the same texts: {overhead:+.1f} s "
          f"({100 * overhead / ideal:+.1f}%)")
    ratio = b["texts_per_s"] / a["texts_per_s"]
    steady = b["after_startup_texts_per_s"] / a["texts_per_s"]
    verdict = "within" if ratio >= 0.85 else "NOT within"
    print(f"ratio shenhe batch / Predictor: {ratio:.3f} end to end ({verdict} 15%), {steady:.3f} once Ray was up")
    if args.json:
        args.json.write_text(json.dumps({"n": len(texts), "predictor": a, "batch": b, "ratio": round(ratio, 4),
                                         "ratio_after_startup": round(steady, 4),
                                         "overhead_s": round(overhead, 1)}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
