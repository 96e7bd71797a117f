"""Speed side by side, in one run, on the same texts and the same threads:

  (a) the fine-tuned model in PyTorch eager fp32 through `transformers` (what a user would pick instead):
      same normalisation and windows, length-sorted batches, default attention;
  (b) `shenhe.Predictor` on the bundle: one text per call, and 32 texts per call;
  (c) the service (`shenhe serve` started here, temporary SQLite queue): one text per request at
      concurrency 1, 8 and 32, and 32-text requests at concurrency 4.

    .venv/bin/python bench/speed.py [--bundle models/default] [--torch-model runs/NAME/model] [--duration 20]

(a) needs the train extra. Its weights: --torch-model (a run's model/ folder), else they are read back from the
bundle (training/finetune/recover.py; needs the base encoder, `shenhe encoder import`). The texts: the
"short-text set", a seeded sample of 1,000 test-split comments (SWSR, ToxiCN, SophonPlus; 15-200 characters);
--texts FILE takes another JSONL. Also: a 20,000-character text through the Predictor (cost of the longest
allowed text). Prints texts/s, p50/p99 and the ratio to (a); --json writes them. Measured numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHORT_SOURCES = ("SWSR", "ToxiCN", "SophonPlus_ChineseNlpCorpus")


def short_text_set(path: Path, n: int = 1000, seed: int = 0) -> list[str]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    pool = [r["text"] for r in rows if r.get("source") in SHORT_SOURCES and 15 <= len(r["text"]) <= 200]
    if not pool:  # another file: take its texts as they are
        pool = [r["text"] for r in rows]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def long_text(path: Path, chars: int = 20_000) -> str:
    out: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            out.append(t)
            size += len(t)
            if size >= chars:
                break
    return "".join(out)[:chars]


def timed_calls(fn: Any, texts: list[str], per_call: int) -> dict[str, float]:
    """texts/s over all texts, and p50/p99 of one call, calling ``fn`` with ``per_call`` texts at a time."""
    fn(texts[:per_call])  # warm-up
    lat: list[float] = []
    t0 = time.perf_counter()
    for k in range(0, len(texts), per_call):
        s = time.perf_counter()
        fn(texts[k:k + per_call])
        lat.append(1000 * (time.perf_counter() - s))
    total = time.perf_counter() - t0
    lat.sort()
    return {"texts_per_s": round(len(texts) / total, 1), "p50_ms": round(lat[len(lat) // 2], 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)}


def torch_peer(model_dir: Path | None, bundle_dir: Path, threads: int) -> Any:
    """A function texts -> logits running the fine-tuned model in PyTorch eager fp32."""
    import torch

    from shenhe.models.bundle import load_bundle
    from shenhe.models.normalize import normalize
    from shenhe.models.windowing import WindowTokenizer, score_windows
    from shenhe.training.finetune.model import load_model

    torch.set_num_threads(threads)
    scratch = None
    if model_dir is None:
        from shenhe.training.finetune.cli import _default_base
        from shenhe.training.finetune.recover import recover_run

        scratch = tempfile.TemporaryDirectory(prefix="shenhe-bench-torch-")
        model_dir = recover_run(bundle_dir, _default_base(), ROOT / "data" / "build", Path(scratch.name)) / "model"
    model, tokenizer, meta = load_model(model_dir)  # default attention implementation, as a user loads it
    manifest = load_bundle(bundle_dir).manifest
    windower = WindowTokenizer(tokenizer.backend_tokenizer, manifest.max_length, manifest.window_stride,
                               manifest.pad_token_id, text_prefix=str(meta.get("text_prefix", "")))

    @torch.inference_mode()
    def run(ids: Any, mask: Any) -> Any:
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    def score(texts: list[str]) -> Any:
        windows = windower.windows([normalize(t).text for t in texts])
        return score_windows(windows, run, manifest.pad_token_id, 32, 9)

    score._keep = scratch  # type: ignore[attr-defined]  # the recovered weights live as long as the peer
    return score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--torch-model", type=Path, default=None)
    ap.add_argument("--texts", type=Path, default=ROOT / "data" / "build" / "test.jsonl")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per service level")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from shenhe.models.cores import default_threads
    from shenhe.models.predictor import Predictor

    threads = args.threads or default_threads()
    texts = short_text_set(args.texts, args.n)
    singles = texts[: min(300, len(texts))]
    print(f"{len(texts)} texts (median {statistics.median(len(t) for t in texts):.0f} characters) from {args.texts}; "
          f"{threads} threads; bundle {args.bundle}")
    results: dict[str, Any] = {"texts": len(texts), "median_chars": statistics.median(len(t) for t in texts),
                               "threads": threads}

    def show(name: str, r: dict[str, float], peer: dict[str, float] | None) -> None:
        ratio = f"{r['texts_per_s'] / peer['texts_per_s']:.2f}x" if peer else "–"
        print(f"{name:44s} {r['texts_per_s']:>8} texts/s  p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>7} ms  "
              f"vs torch {ratio}", flush=True)

    torch1 = torch32 = None
    if not args.skip_torch:
        peer = torch_peer(args.torch_model, args.bundle, threads)
        torch1 = timed_calls(peer, singles, 1)
        torch32 = timed_calls(peer, texts, 32)
        show("(a) torch eager fp32, 1 text per call", torch1, None)
        show("(a) torch eager fp32, 32 texts per call", torch32, None)
        results["torch"] = {"single": torch1, "batch32": torch32}
        del peer

    predictor = Predictor(args.bundle, intra_op_threads=threads)
    p1 = timed_calls(predictor.predict, singles, 1)
    p32 = timed_calls(predictor.predict, texts, 32)
    show(f"(b) Predictor {predictor.info.version}, 1 text per call", p1, torch1)
    show(f"(b) Predictor {predictor.info.version}, 32 texts per call", p32, torch32)
    results["predictor"] = {"single": p1, "batch32": p32, "model": predictor.info.version,
                            "quantization": predictor.manifest.quantization}
    long = long_text(args.texts)
    prepared = predictor.prepare([long])
    t0 = time.perf_counter()
    predictor.predict([long])
    long_s = time.perf_counter() - t0
    print(f"(b) one {len(long):,}-character text: {len(prepared.windows)} windows, {prepared.tokens:,} tokens, "
          f"{long_s:.2f} s")
    results["long_text"] = {"chars": len(long), "windows": len(prepared.windows), "tokens": prepared.tokens,
                            "seconds": round(long_s, 3)}
    del predictor

    if not args.skip_service:
        import serve_load

        server_args = argparse.Namespace(bundle=args.bundle, workers=1)
        levels = []
        with tempfile.TemporaryDirectory(prefix="shenhe-bench-") as tmp:
            proc, url = serve_load.start_server(server_args, Path(tmp))
            try:
                for items, concurrency in ((1, 1), (1, 8), (1, 32), (32, 4)):
                    res = asyncio.run(serve_load.run_level(url, {}, texts, items, concurrency, args.duration, 3.0))
                    row = res.row()
                    row["items"] = items
                    levels.append(row)
                    peer = torch32 if items > 1 else torch1
                    show(f"(c) service, {items} text(s)/request, c={concurrency}",
                         {"texts_per_s": row["texts_per_s"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"]}, peer)
                    if row["errors"]:
                        print(f"    errors: {row['error_kinds']}")
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        results["service"] = levels
    results["load_average_1min"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
