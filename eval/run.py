"""The `shenhe eval` pipeline: read data, score, measure, compare, perturb, write the two files."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .compare import compare_runs
from .data import EvalSet, read_eval_file
from .errors import EvalDataError
from .evaluate import baseline_section, evaluate, slice_masks
from .perturb import PERTURBATIONS, perturb_texts, robustness_section
from .report import ReportInputs, write_report
from .scoring import PredictorLike, Scored, bundle_model_sha256, load_predictor, score_texts


@dataclass(frozen=True)
class EvalConfig:
    data: Path
    out: Path
    bundle: Path | None = None  # None: $SHENHE_BUNDLE, else models/default
    policy: Path | None = None  # an operator policy instead of the bundle's
    compare: Path | None = None
    baseline: Path | None = None
    perturb: bool = False
    perturb_kinds: tuple[str, ...] = tuple(PERTURBATIONS)
    perturb_sample: int = 2000
    bootstrap: int = 1000
    prevalence: float | None = None
    daily_volume: int | None = None
    reviews_per_reviewer: int = 800
    limit: int | None = None
    batch_size: int = 32
    threads: int | None = None
    seed: int = 0
    show_progress: bool = True


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    metrics_path: Path
    report_path: Path
    timings: dict[str, float] = field(default_factory=dict)


PredictorFactory = Callable[[Path | None, Path | None, int | None], PredictorLike]


def _default_factory(bundle: Path | None, policy: Path | None, threads: int | None) -> PredictorLike:
    try:
        return load_predictor(bundle, policy, threads)
    except ImportError as e:  # models.predictor not installed/available
        raise EvalDataError(f"cannot load the predictor: {e}") from None


def _to_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _validate(cfg: EvalConfig) -> None:
    if cfg.prevalence is not None and not 0 < cfg.prevalence < 1:
        raise EvalDataError(f"--prevalence must be between 0 and 1 (exclusive), got {cfg.prevalence}")
    if cfg.bootstrap < 100:
        raise EvalDataError(f"--bootstrap must be at least 100, got {cfg.bootstrap}")
    unknown = [k for k in cfg.perturb_kinds if k not in PERTURBATIONS]
    if unknown:
        raise EvalDataError(f"unknown perturbation {unknown[0]!r}; expected one of {', '.join(PERTURBATIONS)}")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise EvalDataError(f"--out {cfg.out}: exists and is not a directory")


def _perturbed_runs(predictor: PredictorLike, data: EvalSet, cfg: EvalConfig, label: str) -> dict[str, Any]:
    runs = {}
    for kind in cfg.perturb_kinds:
        texts = perturb_texts(data.texts, kind, seed=cfg.seed)
        changed = np.array([a != b for a, b in zip(texts, data.texts, strict=True)])
        runs[kind] = (changed, score_texts(predictor, texts, description=f"{label}: {kind}",
                                           batch_size=cfg.batch_size, show_progress=cfg.show_progress))
    return runs


def run_eval(cfg: EvalConfig, factory: PredictorFactory | None = None,
             baseline_loader: Callable[[Path], Any] | None = None) -> EvalResult:
    """Everything `shenhe eval` does. ``factory(bundle, policy, threads)`` makes a predictor
    (default: the bundle's onnxruntime Predictor); ``baseline_loader(run_dir)`` a TF-IDF scorer."""
    _validate(cfg)
    factory = factory or _default_factory
    timings: dict[str, float] = {}
    data = read_eval_file(cfg.data)  # bad data fails before any model loads
    population = data.n
    if cfg.limit is not None and cfg.limit < data.n:
        rng = np.random.default_rng(cfg.seed)
        data = data.subset(np.sort(rng.choice(data.n, size=cfg.limit, replace=False)))

    t0 = time.perf_counter()
    predictor = factory(cfg.bundle, cfg.policy, cfg.threads)
    timings["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    this = score_texts(predictor, data.texts, description=f"scoring {data.n} texts",
                       batch_size=cfg.batch_size, show_progress=cfg.show_progress)
    timings["score_s"] = time.perf_counter() - t0
    metrics = evaluate(data, this, bundle_dir=None if cfg.bundle is None else str(cfg.bundle),
                       prevalence=cfg.prevalence)
    # `shenhe card --eval` attaches a report only to the bundle whose model it measured.
    metrics["bundle"]["model_sha256"] = bundle_model_sha256(predictor)
    metrics["data"]["population"] = population
    metrics["data"]["sampled"] = data.n != population
    metrics["texts_per_second"] = data.n / timings["score_s"] if timings["score_s"] > 0 else None

    if cfg.baseline is not None:
        t1 = time.perf_counter()
        if baseline_loader is None:
            from shenhe.models.baseline import load_baseline

            baseline_loader = load_baseline
        try:
            scorer = baseline_loader(cfg.baseline)
        except (FileNotFoundError, ValueError) as e:
            raise EvalDataError(f"--baseline {cfg.baseline}: {str(e).splitlines()[0] if str(e) else e}") from None
        base_scores = np.asarray(scorer.score(data.texts), dtype=float)
        metrics["baseline"] = baseline_section(data, getattr(scorer, "name", cfg.baseline.name), str(cfg.baseline),
                                               base_scores)
        timings["baseline_s"] = time.perf_counter() - t1

    other: Scored | None = None
    other_metrics: dict[str, Any] | None = None
    other_predictor: PredictorLike | None = None
    if cfg.compare is not None:
        other_predictor = factory(cfg.compare, cfg.policy, cfg.threads)
        other = score_texts(other_predictor, data.texts, description="scoring (compare)",
                            batch_size=cfg.batch_size, show_progress=cfg.show_progress)
        other_metrics = evaluate(data, other, bundle_dir=str(cfg.compare), prevalence=cfg.prevalence)
        t1 = time.perf_counter()
        metrics["compare"] = compare_runs(data.y_true, this, other, n_boot=cfg.bootstrap, seed=cfg.seed,
                                          slices=slice_masks(data))
        metrics["compare"]["other"]["path"] = str(cfg.compare)
        timings["bootstrap_s"] = time.perf_counter() - t1

    if cfg.perturb:
        t1 = time.perf_counter()
        idx = np.arange(data.n)
        if data.n > cfg.perturb_sample:
            idx = np.sort(np.random.default_rng(cfg.seed + 1).choice(data.n, cfg.perturb_sample, replace=False))
        sample = data.subset(idx)
        metrics["robustness"] = robustness_section(
            sample.y_true, this.subset(idx), _perturbed_runs(predictor, sample, cfg, "perturbed"),
            seed=cfg.seed, population=data.n, sources=sample.sources if sample.has_sources else None)
        if other_predictor is not None and other is not None:
            metrics["compare_robustness"] = robustness_section(
                sample.y_true, other.subset(idx), _perturbed_runs(other_predictor, sample, cfg, "perturbed (compare)"),
                seed=cfg.seed, population=data.n)
        timings["perturb_s"] = time.perf_counter() - t1

    cfg.out.mkdir(parents=True, exist_ok=True)
    metrics = _to_json(metrics)
    metrics_path = cfg.out / "metrics.json"
    report_path = cfg.out / "report.html"
    t1 = time.perf_counter()
    write_report(ReportInputs(data=data, this=this, metrics=metrics, policy=predictor.policy, other=other,
                              other_metrics=_to_json(other_metrics) if other_metrics else None,
                              daily_volume=cfg.daily_volume, reviews_per_reviewer=cfg.reviews_per_reviewer),
                 report_path)
    timings["report_s"] = time.perf_counter() - t1
    metrics_path.write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return EvalResult(metrics=metrics, metrics_path=metrics_path, report_path=report_path, timings=timings)
