#!/usr/bin/env python3
"""Encoder alone vs encoder + character n-gram ensemble: decide with data whether to keep it (issue 16, step 4).

    shenhe train --arch tfidf --data data/build --out runs/tfidf          # the n-gram model, if not there yet
    python scripts/ensemble_eval.py --bundle models/default --tfidf runs/tfidf --data data/build \\
        --cache runs/ensemble-cache --out runs/ensemble-bundle

Scores dev, holdout and test (and test with homophone and emoji perturbations) once with the bundle's encoder
(raw logits cached as .npy under --cache, so a rerun only redoes the cheap parts) and with the TF-IDF run
converted to the numpy component (training/finetune/ngram.py, capped at --max-features n-grams). The blend is fit
on dev (the fit part; never holdout or test); every model then gets its own calibration and thresholds on dev
and the held-apart auto-block gate, as `shenhe export` does. Prints, for the encoder, the n-gram model and the
ensemble: test macro-F1, per-category F1 and AP, held-apart per-source block precision, the harmless review
share, and the perturbation accuracy drop; writes them as JSON (--report). --out writes the ensemble bundle.
--limit N scores a deterministic N-row sample of each split (positives of every category kept): a smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.eval.perturb import perturb_texts
from shenhe.models.bundle import MODEL_FILE, TOKENIZER_FILE
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.models.predictor import Predictor
from shenhe.training.data.holdout import HOLDOUT_SPLIT
from shenhe.training.finetune.dataset import Split, eval_subsample, read_split
from shenhe.training.finetune.ensemble import (
    Scored,
    Splits,
    compare,
    encoder_logits,
    ensemble_logits,
    fit_blend,
    write_ensemble_bundle,
)
from shenhe.training.finetune.ngram import convert_tfidf_run

PERTURBATIONS = ("homophones", "emoji")
MODELS = ("encoder", "ngram", "ensemble")


@dataclass
class EnsembleConfig:
    bundle: Path
    tfidf: Path
    data: Path
    cache: Path
    out: Path | None = None  # write the ensemble bundle here
    report: Path | None = None  # default: <cache>/report.json
    max_features: int | None = 100_000  # n-grams kept in the component (None: all)
    limit: int | None = None  # rows per split (a smoke run)
    calibration: str | None = None  # default: the bundle's own method
    policy: Path | None = None  # base policy (default: the shipped models/policy.yaml, as export uses)
    seed: int = 0  # perturbations and --limit sampling
    threads: int | None = None
    batch_size: int = 32
    name: str | None = None  # the ensemble bundle's name (default: the --out folder's name)
    version: str | None = None  # its version (default: the encoder bundle's version + "+ngram")


def _split(cfg: EnsembleConfig, name: str, required: bool = True) -> Split | None:
    path = cfg.data / f"{name}.jsonl"
    if not path.is_file():
        if required:
            raise SystemExit(f"{path}: missing")
        return None
    return eval_subsample(read_split(path, name), cfg.limit, cfg.seed)


def _calibration_method(predictor: Predictor) -> str:
    methods = {predictor.manifest.calibration[s].method for s in predictor.manifest.trained_categories}
    return methods.pop() if len(methods) == 1 else "platt"


def run(cfg: EnsembleConfig, log: Any = print) -> dict[str, Any]:
    dev, test = _split(cfg, "dev"), _split(cfg, "test")
    assert dev is not None and test is not None
    splits = Splits(dev, test, _split(cfg, HOLDOUT_SPLIT, required=False))
    predictor = Predictor(cfg.bundle, intra_op_threads=cfg.threads)
    if predictor.manifest.ngram is not None:
        log(f"{cfg.bundle} already blends an n-gram model: its encoder's raw logits are used, the blend is refit")
    trained = predictor.manifest.trained_mask
    log(f"converting {cfg.tfidf} (max {cfg.max_features} n-grams)")
    component = convert_tfidf_run(cfg.tfidf, cfg.max_features)
    cfg.cache.mkdir(parents=True, exist_ok=True)
    component_path = cfg.cache / f"ngram-{cfg.tfidf.name}-{cfg.max_features or 'all'}.npz"
    component.save(component_path)
    size = component_path.stat().st_size
    encoder_files = sum((cfg.bundle / f).stat().st_size for f in (MODEL_FILE, TOKENIZER_FILE))

    texts: dict[str, list[str]] = {"dev": dev.normalized, "test": test.normalized}
    if splits.holdout is not None:
        texts["holdout"] = splits.holdout.normalized
    for kind in PERTURBATIONS:
        texts[f"test+{kind}"] = [normalize_text(t) for t in perturb_texts(test.texts, kind, cfg.seed)]
    enc, ng = {}, {}
    for key, normalized in texts.items():
        log(f"scoring {key}: {len(normalized)} texts")
        enc[key] = encoder_logits(predictor, normalized, cfg.cache, cfg.batch_size)
        ng[key] = component.logits(normalized)

    fit = fit_blend(enc["dev"], ng["dev"], dev.labels, trained, component.categories)
    ens = {k: ensemble_logits(enc[k], ng[k], fit.blend) for k in texts}

    def scored(logits: dict[str, np.ndarray]) -> Scored:
        return Scored(logits["dev"], logits["test"], logits.get("holdout"),
                      {kind: logits[f"test+{kind}"] for kind in PERTURBATIONS})

    base_policy = load_policy(cfg.policy) if cfg.policy else load_policy()
    method = cfg.calibration or _calibration_method(predictor)
    name = cfg.name or (cfg.out.name if cfg.out else "ensemble")
    version = cfg.version or f"{predictor.manifest.version}+ngram"
    judged, reports = compare({"encoder": scored(enc), "ngram": scored(ng), "ensemble": scored(ens)}, splits,
                              trained, method, base_policy, f"{name}.{version}")
    result: dict[str, Any] = {
        "bundle": str(cfg.bundle), "tfidf": str(cfg.tfidf), "limit": cfg.limit, "calibration": method,
        "rows": {k: len(v) for k, v in texts.items()},
        "component": {"path": str(component_path), "size_bytes": size, "features": component.n_features,
                      "features_total": component.meta.get("features_total"),
                      "bundle_size_bytes_with_it": encoder_files + size},
        "blend": fit.as_dict(), "models": reports,
    }
    report_path = cfg.report or cfg.cache / "report.json"
    report_path.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"report: {report_path}")
    if cfg.out is not None:
        write_ensemble_bundle(cfg.bundle, cfg.out, component, fit, judged["ensemble"], dev, reports, name=name,
                              version=version)
        result["bundle_out"] = str(cfg.out)
        log(f"ensemble bundle: {cfg.out}")
    return result


def _f(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def render(result: dict[str, Any]) -> str:
    """The comparison as markdown tables."""
    m = result["models"]
    c = result["component"]
    lines = [f"n-gram component: {c['features']} of {c['features_total']} n-grams, {c['size_bytes'] / 1e6:.2f} MB "
             f"(encoder + tokenizer + component: {c['bundle_size_bytes_with_it'] / 1e6:.1f} MB); rows {result['rows']}",
             "", "| | " + " | ".join(MODELS) + " |", "|---|" + "---:|" * len(MODELS)]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("dev macro-F1", [_f(m[k]["dev_macro_f1"]) for k in MODELS])
    row("**test macro-F1**", [_f(m[k]["test_macro_f1"]) for k in MODELS])
    for slug in m["encoder"]["test_per_category"]:
        cells = []
        for k in MODELS:
            p = m[k]["test_per_category"].get(slug)
            if p is None or not p["support"]:
                cells.append("–" if p is None else "no positives")
            else:
                cells.append(f"{_f(p['f1'])} / {_f(p['ap'])}{'' if p['auto_block'] else ' (no block)'}")
        row(f"{slug} F1 / AP", cells)
    for split in ("test", "holdout"):
        if split in m["encoder"]["harmless"]:
            row(f"harmless sent to review, {split}", [_f(m[k]["harmless"][split]["review"]) for k in MODELS])
            row(f"harmless blocked, {split}", [_f(m[k]["harmless"][split]["block"]) for k in MODELS])
    row("flag accuracy, clean test", [_f(m[k]["perturbations"]["clean"]["flag_accuracy"]) for k in MODELS])
    for kind in PERTURBATIONS:
        row(f"{kind}: flag accuracy drop", [_f(m[k]["perturbations"][kind]["flag_accuracy_drop"]) for k in MODELS])
        row(f"{kind}: macro-F1 drop", [_f(m[k]["perturbations"][kind]["macro_f1_drop"]) for k in MODELS])
    gates = {k: (m[k]["block_gate"] or {}).get("categories", {}) for k in MODELS}
    slugs = sorted({s for g in gates.values() for s in g}, key=CATEGORY_SLUGS.index)
    if slugs:
        lines += ["", "Held-apart block precision per source (blocked texts), at each model's block threshold:", "",
                  "| category | source | " + " | ".join(MODELS) + " |", "|---|---|" + "---:|" * len(MODELS)]
        for slug in slugs:
            sources = sorted({s for k in MODELS for s in (gates[k].get(slug) or {}).get("sources", {})})
            for src in sources:
                cells = []
                for k in MODELS:
                    cell = ((gates[k].get(slug) or {}).get("sources") or {}).get(src)
                    cells.append("–" if cell is None else f"{_f(cell['precision'])} ({cell['blocked']})")
                lines.append(f"| {slug} | {src} | " + " | ".join(cells) + " |")
    blend = result["blend"]
    lines += ["", "Blend (fit on dev): " + ", ".join(
        f"{s}: {w['encoder']:.2f}·enc {w['ngram']:+.2f}·ngram {w['bias']:+.2f}" for s, w in blend["blend"].items())]
    lines += [f"encoder alone for {s}: {why}" for s, why in blend["encoder_alone"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bundle", type=Path, default=Path("models/default"))
    ap.add_argument("--tfidf", type=Path, required=True, help="a `shenhe train --arch tfidf` run directory")
    ap.add_argument("--data", type=Path, default=Path("data/build"))
    ap.add_argument("--cache", type=Path, default=Path("runs/ensemble-cache"))
    ap.add_argument("--out", type=Path, help="write the ensemble bundle here")
    ap.add_argument("--report", type=Path)
    ap.add_argument("--max-features", type=int, default=EnsembleConfig.max_features,
                    help="n-grams kept in the component, 0 = all")
    ap.add_argument("--limit", type=int, help="rows per split (a smoke run)")
    ap.add_argument("--calibration", choices=("platt", "isotonic"))
    ap.add_argument("--policy", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--name", help="the ensemble bundle's name (default: the --out folder's name)")
    ap.add_argument("--version", help="its version (default: the encoder bundle's version + '+ngram')")
    a = ap.parse_args(argv)
    cfg = EnsembleConfig(bundle=a.bundle, tfidf=a.tfidf, data=a.data, cache=a.cache, out=a.out, report=a.report,
                         max_features=a.max_features or None, limit=a.limit, calibration=a.calibration,
                         policy=a.policy, seed=a.seed, threads=a.threads, name=a.name, version=a.version)
    print(render(run(cfg, log=lambda msg: print(msg, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
