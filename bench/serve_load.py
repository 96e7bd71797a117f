"""Load test of the running service: throughput, p50/p99 latency and errors at several concurrencies.

    # against a service that is already running (make serve / shenhe serve):
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:3000 [--api-key KEY]

    # or let the bench start `shenhe serve` in a child process (temporary SQLite queue):
    .venv/bin/python bench/serve_load.py --start --bundle models/default

Each concurrency level (default 1, 8, 32) runs for --duration seconds (default 30) after a short
warm-up; N client tasks each send one request at a time (--items texts per request, default 1),
from this process, over loopback. Texts come from --texts (JSONL with "text"; the default is the
test split; bench/speed.py compares the service with the Predictor and PyTorch in one run). With --offline the
same texts are also scored in-process by the Predictor for comparison. Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def default_texts() -> Path:
    built = ROOT / "data" / "build" / "test.jsonl"
    return built if built.is_file() else ROOT / "tests" / "training" / "data" / "dev.jsonl"


def read_texts(path: Path, n: int) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    if not texts:
        raise SystemExit(f"error: no texts in {path}")
    return texts


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    decisions: Counter[str] = field(default_factory=Counter)
    texts: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def row(self) -> dict[str, object]:
        ok = len(self.latencies_ms)
        return {
            "concurrency": self.concurrency, "seconds": round(self.seconds, 1), "requests_ok": ok,
            "requests_per_s": round(ok / self.seconds, 1), "texts_per_s": round(self.texts / self.seconds, 1),
            "p50_ms": round(self.percentile(0.50), 1), "p99_ms": round(self.percentile(0.99), 1),
            "errors": sum(self.errors.values()), "error_kinds": dict(self.errors),
            "review_share": round(self.decisions["review"] / max(1, sum(self.decisions.values())), 3),
        }


async def run_level(url: str, headers: dict[str, str], texts: list[str], items: int, concurrency: int,
                    duration: float, warmup: float) -> LevelResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        result = LevelResult(concurrency, duration)
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker(k: int) -> None:
            i = k * 7919
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                batch = [{"id": f"bench-{k}-{i}-{j}", "text": texts[(i + j) % len(texts)]} for j in range(items)]
                i += items
                t0 = time.perf_counter()
                decided: list[str] = []
                try:
                    r = await http.post("/v1/classify", json={"items": batch})
                    kind = None if r.status_code == 200 else f"http {r.status_code}"
                    if kind is None:
                        decided = [item["decision"] for item in r.json()["items"]]
                except httpx.HTTPError as e:
                    kind = type(e).__name__
                t1 = time.perf_counter()
                if t0 < measure_from or t1 > stop_at:
                    continue  # count only requests wholly inside the measured window
                if kind is None:
                    result.latencies_ms.append(1000 * (t1 - t0))
                    result.texts += items
                    result.decisions.update(decided)
                else:
                    result.errors[kind] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHENHE_")}
    env.update({"SHENHE_DB_URL": f"sqlite:///{tmp / 'bench.db'}", "BENTOML_DO_NOT_TRACK": "True"})
    cmd = [sys.executable, "-m", "shenhe.cli", "serve", "--port", str(port), "--workers", str(args.workers)]
    if args.bundle:
        cmd += ["--bundle", str(args.bundle)]
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: server exited ({proc.returncode}); log: {tmp / 'server.log'}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    raise SystemExit("error: server not ready after 180 s")


def offline_speed(bundle: Path | None, texts: list[str], items: int) -> float:
    """The Predictor in this process, same texts, same texts per call: texts/s."""
    from shenhe.models.predictor import Predictor

    pred = Predictor(bundle)
    pred.predict(texts[:32])
    sample = (texts * (1 + 600 // len(texts)))[:600]
    t0 = time.perf_counter()
    for k in range(0, len(sample), items):
        pred.predict(sample[k:k + items])
    return len(sample) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running service (default: http://127.0.0.1:3000)")
    ap.add_argument("--api-key", default=os.environ.get("SHENHE_API_KEY"))
    ap.add_argument("--start", action="store_true", help="start `shenhe serve` in a child process")
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--texts", type=Path, default=default_texts())
    ap.add_argument("--n", type=int, default=1000, help="texts to read")
    ap.add_argument("--items", type=int, default=1, help="texts per request")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--offline", action="store_true", help="also time the Predictor in-process on the same texts")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    from shenhe.models.cores import default_threads

    texts = read_texts(args.texts, args.n)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc = None
    with tempfile.TemporaryDirectory(prefix="shenhe-bench-") as tmpdir:
        try:
            if args.start:
                proc, url = start_server(args, Path(tmpdir))
            else:
                url = args.url or "http://127.0.0.1:3000"
            health = httpx.get(f"{url}/v1/classify", timeout=5)  # 405 = the API is there
            if health.status_code not in (401, 405):
                raise SystemExit(f"error: {url} does not look like a shenhe service (GET /v1/classify -> {health.status_code})")
            probe = httpx.post(f"{url}/v1/classify", json={"items": [{"text": texts[0]}]}, headers=headers, timeout=60)
            if probe.status_code != 200:
                raise SystemExit(f"error: probe request failed: HTTP {probe.status_code} {probe.text[:200]}")
            model = probe.json()["model"]
            print(f"service {url}: model {model['name']} {model['version']}; "
                  f"{len(texts)} texts from {args.texts} (median {statistics.median(len(t) for t in texts):.0f} chars); "
                  f"{args.items} text(s) per request; cores {default_threads()}")
            rows = []
            print(f"{'conc':>4} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'review':>7} {'errors':>7}")
            for c in (int(x) for x in args.concurrency.split(",")):
                res = asyncio.run(run_level(url, headers, texts, args.items, c, args.duration, args.warmup))
                row = res.row()
                rows.append(row)
                print(f"{c:>4} {row['requests_per_s']:>8} {row['texts_per_s']:>8} {row['p50_ms']:>8} "
                      f"{row['p99_ms']:>8} {row['review_share']:>7.0%} {row['errors']:>7} {row['error_kinds'] or ''}",
                      flush=True)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    offline = None
    if args.offline:
        offline = offline_speed(args.bundle, texts, args.items)
        print(f"offline Predictor, same texts, {args.items} per call: {offline:.1f} texts/s")
    if args.json:
        args.json.write_text(json.dumps({"url": url, "model": model, "items_per_request": args.items,
                                         "levels": rows, "offline_texts_per_s": offline}, indent=2) + "\n")


if __name__ == "__main__":
    main()
