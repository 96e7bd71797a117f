"""`shenhe export`: a finished run -> a verified model bundle (see models/bundle.py for the format).

:func:`export_bundle` runs these steps (:func:`_export` reads as the list):

1. ``_prepare``: the run, its data (``dev.jsonl`` is the *fit* part of dev: ``shenhe data build`` moves the
   held-apart half of each large source's dev rows to ``holdout.jsonl``), the base policy and the torch model.
2. ``_fp32_reference``: fp32 ONNX, its parity windows against torch, its scores judged (``_judge``:
   calibration, thresholds and metrics fit on a model's own dev scores, training/finetune/fit.py).
3. ``_choose_quantization``: each INT8 scheme, fastest first (``_try_scheme``), scored and judged the same
   way and compared with fp32; the first that holds ships (``_keep_model``).
4. ``_gate_blocks``: thresholds and calibration are never fit on ``holdout.jsonl``; export reads it for one
   yes/no per category: auto-block stays on only where the block precision holds in every held-apart source
   (thresholds.gate_blocks).
5. ``_bundle_metrics``, ``_write_bundle``: metrics.json (parity, speed, the run's hyperparameters, how to rebuild
   the bundle (training/finetune/rebuild.py), framework versions), policy, model card and hashes; the bundle is
   loaded back as the predictor will load it.
6. ``_publish``: the bundle, assembled in a temporary sibling directory (``_staging``), moves into place.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    POLICY_FILE,
    TOKENIZER_FILE,
    BundleManifest,
    file_hashes,
    write_manifest,
)
from shenhe.models.cores import default_threads
from shenhe.models.policy import CATEGORY_SLUGS, Policy, load_policy
from shenhe.models.windowing import WindowTokenizer
from shenhe.training.data import BUILD_DIR
from shenhe.training.data.holdout import HOLDOUT_SPLIT
from shenhe.training.finetune.args import ExportOptions
from shenhe.training.finetune.calibrate import apply_calibration
from shenhe.training.finetune.dataset import Split, read_split, read_splits
from shenhe.training.finetune.errors import ExportError
from shenhe.training.finetune.fit import Judged, gate_on_heldout, judge
from shenhe.training.finetune.quality import quality_drops, quality_failures, worst_drop
from shenhe.training.finetune.rebuild import REBUILD_KEY, export_record, rebuild_record
from shenhe.training.finetune.sources import describe_sources
from shenhe.training.finetune.thresholds import decisions, points_as_dicts

# Acceptance limits checked at export: fp32 ONNX must reproduce torch; a quantised model may lose at most half
# a point of macro-F1 and of each trained category's average precision against fp32, on dev and on test
# (quality.MAX_DROP).
MAX_FP32_PROB_DIFF = 1e-4
PARITY_TEXTS = 256
# Run arguments that name files on the training machine, not hyperparameters.
RUN_PATH_ARGS = ("base", "data", "out", "init_from", "extra", "teacher", "teacher_cache", "unlabelled")
FRAMEWORKS = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "scikit-learn")


def _read_run(run: Path) -> dict[str, Any]:
    run_file = run / "run.json"
    if not run_file.is_file():
        raise ExportError(f"{run}: not a training run (run.json missing)")
    info = json.loads(run_file.read_text(encoding="utf-8"))
    if info.get("arch") != "bert":
        raise ExportError(f"{run}: a {info.get('arch')!r} run; only BERT runs export to a bundle")
    if info.get("status") != "done" or not (run / "model").is_dir():
        raise ExportError(f"{run}: the run has not finished (continue it with `shenhe train --resume --out {run}`)")
    return info


def _throughput(session: Any, windower: WindowTokenizer, texts: list[str]) -> dict[str, float]:
    """Measured offline texts/s of the INT8 model on real dev texts (batch 32) and single-text latency."""
    from shenhe.training.finetune.backend import onnx_window_logits

    sample = texts[:512]
    if not sample:
        return {}
    onnx_window_logits(session, windower, sample[:32], 32)  # warm-up
    t0 = time.perf_counter()
    onnx_window_logits(session, windower, sample, 32)
    batch_tps = len(sample) / (time.perf_counter() - t0)
    singles = sample[:64]
    t0 = time.perf_counter()
    for t in singles:
        onnx_window_logits(session, windower, [t], 1)
    single_ms = 1000 * (time.perf_counter() - t0) / len(singles)
    return {"texts_per_second_batch32": round(batch_tps, 1), "single_text_ms": round(single_ms, 2),
            "texts_measured": len(sample), "cpu": platform.processor() or platform.machine(),
            "threads": session.get_session_options().intra_op_num_threads,
            # Other processes on the machine slow this down; the 1-minute load average says how busy it was.
            "load_average_1min": round(os.getloadavg()[0], 2), "cores": default_threads()}


def _teacher_speed(distillation: dict[str, Any], windower: WindowTokenizer, texts: list[str],
                   threads: int) -> dict[str, Any]:
    """A distilled student's teacher timed like the student (:func:`_throughput`), when it is a bundle that is
    still there, unchanged; otherwise why not."""
    from shenhe.models.bundle import sha256_file
    from shenhe.training.finetune.backend import ort_session

    teacher = distillation.get("teacher") or {}
    if teacher.get("kind") != "bundle":
        return {"note": "the teacher is a training run (no served model to time)"}
    path = Path(teacher["path"]) / MODEL_FILE
    if not path.is_file() or sha256_file(path) != teacher.get("model_sha256"):
        return {"note": f"{path} is missing or no longer the teacher's model"}
    return _throughput(ort_session(path, threads), windower, texts)


def describe_base(base: str) -> str:
    """A readable base-encoder name: the checkpoint folder and, for an imported one, where it came from."""
    path = Path(base).expanduser()
    meta_file = path / "shenhe_encoder.json"
    if not path.is_dir():
        return base
    try:
        source = json.loads(meta_file.read_text(encoding="utf-8")).get("source", {}) if meta_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        source = {}
    upstream = source.get("upstream_model")
    licence = source.get("upstream_licence")
    return f"{path.name} ({upstream}{', ' + licence if licence else ''})" if upstream else path.name


def export_bundle(opts: ExportOptions) -> Path:
    """Export a finished run, or re-export a bundle (its weights read back, see training/finetune/recover.py)."""
    from shenhe.training.finetune.backend import QUANT_SCHEMES

    if opts.quantization != "auto" and opts.quantization not in QUANT_SCHEMES:
        raise ExportError(f"--quantization must be auto or one of {', '.join(QUANT_SCHEMES)}, not {opts.quantization!r}")
    scratch: Path | None = None
    run_dir = opts.run
    if _is_bundle(opts.run):
        from shenhe.training.finetune.recover import recover_run

        if not opts.base:
            raise ExportError(f"{opts.run} is a bundle: re-exporting it needs --base, the encoder it was trained from")
        scratch = Path(tempfile.mkdtemp(prefix="shenhe-recovered-"))
        run_dir = recover_run(opts.run, opts.base, opts.data or BUILD_DIR, scratch)
    try:
        return _export(opts, run_dir)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file() and (path / MODEL_FILE).is_file()


def _export(opts: ExportOptions, run_dir: Path) -> Path:
    """The steps, in order; the bundle is assembled in ``stage`` and moved to ``opts.out`` only at the end."""
    job, model = _prepare(opts, run_dir)
    with _staging(opts.out) as stage:
        ref = _fp32_reference(job, model, stage)
        chosen, attempts = _choose_quantization(job, ref, stage)
        _keep_model(stage, ref, chosen, attempts)
        judged = _gate_blocks(job, chosen)
        metrics = _bundle_metrics(job, ref, chosen, judged, attempts)
        _write_bundle(job, stage, judged.policy, judged.calibration, metrics)
        _publish(stage, opts.out)
    return opts.out


# ---- the steps -------------------------------------------------------------------------------------


@dataclass
class _Job:
    """What the options and the run fix before any model is exported."""

    opts: ExportOptions
    run_dir: Path
    info: dict[str, Any]  # run.json
    args: dict[str, Any]  # the run's TrainingArguments (run.json "args")
    threads: int
    data_dir: Path
    dev: Split
    test: Split | None
    base_policy: Policy
    trained: np.ndarray  # (9,) bool
    name: str
    version: str
    calibration_method: str
    tokenizer: Any  # the run's transformers tokenizer
    windower: WindowTokenizer  # the windowing the bundle will use
    pad_id: int
    text_prefix: str

    @property
    def policy_version_tag(self) -> str:
        return f"{self.name}.{self.version}"


@dataclass
class _Reference:
    """The fp32 ONNX model: the quality every quantised scheme is judged against, and the parity windows."""

    path: Path
    torch_windows: np.ndarray  # torch logits of the parity texts' windows
    fp32_windows: np.ndarray  # fp32 ONNX logits of the same windows
    dev_logits: np.ndarray
    judged: Judged


@dataclass
class _Candidate:
    """One quantisation scheme, scored and judged."""

    attempt: dict[str, Any]  # what metrics.json records for it
    path: Path
    session: Any  # its onnxruntime session
    judged: Judged


def _prepare(opts: ExportOptions, run_dir: Path) -> tuple[_Job, Any]:
    """The run, its data, the base policy, and the run's torch model with the windowing the bundle will use."""
    import torch

    from shenhe.training.finetune.model import load_model

    info = _read_run(run_dir)
    args = info["args"]
    threads = opts.threads or default_threads()
    torch.set_num_threads(threads)
    data_dir = opts.data or Path(args["data"])
    splits = read_splits(data_dir)
    base_policy = load_policy(opts.policy) if opts.policy else load_policy()
    # Eager attention: its export is what onnxruntime's optimizer recognises and fuses into Attention.
    model, tokenizer, meta = load_model(run_dir / "model", attn_implementation="eager")
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    prefix = str(meta.get("text_prefix", ""))
    windower = WindowTokenizer(tokenizer.backend_tokenizer, int(args["max_length"]), int(args["window_stride"]), pad_id,
                               text_prefix=prefix)
    job = _Job(
        opts=opts, run_dir=run_dir, info=info, args=args, threads=threads, data_dir=data_dir, dev=splits["dev"],
        test=splits.get("test"), base_policy=base_policy,
        trained=np.array([s in info["summary"]["trained_categories"] for s in CATEGORY_SLUGS]),
        name=opts.name or opts.out.name, version=opts.version or datetime.now(UTC).strftime("%Y.%m.%d"),
        calibration_method=opts.calibration or args.get("calibration", "platt"),
        tokenizer=tokenizer, windower=windower, pad_id=pad_id, text_prefix=prefix,
    )
    return job, model


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to assemble the bundle in; removed unless :func:`_publish` moved it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _judge(job: _Job, dev_logits: np.ndarray, test_logits: np.ndarray | None) -> Judged:
    """Calibration, thresholds and quality fit on one model's own dev scores (the way it would ship)."""
    return judge(dev_logits, test_logits, job.dev, job.test, job.trained, job.calibration_method, job.base_policy, job.policy_version_tag)


def _scores(job: _Job, session: Any, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Dev and test logits of one ONNX model (test None when the data has no test split)."""
    from shenhe.training.finetune.backend import onnx_window_logits

    o = job.opts
    dev, _ = onnx_window_logits(session, job.windower, job.dev.normalized, o.batch_size, o.show_progress,
                                f"dev {label}")
    test = (onnx_window_logits(session, job.windower, job.test.normalized, o.batch_size, o.show_progress,
                               f"test {label}")[0] if job.test is not None else None)
    return dev, test


def _fp32_reference(job: _Job, model: Any, stage: Path) -> _Reference:
    """Export fp32 ONNX; its parity windows against torch, on dev texts (longest first, so windowing is
    covered); its dev and test scores judged as a shipped model's would be."""
    from shenhe.training.finetune.backend import (
        export_onnx,
        onnx_window_logits,
        ort_session,
        torch_window_logits,
    )

    dev, windower, batch = job.dev, job.windower, job.opts.batch_size
    path = stage / "reference.fp32.onnx"
    export_onnx(model, path, job.pad_id)
    fp32 = ort_session(path, job.threads)
    by_len = sorted(range(len(dev)), key=lambda i: -len(dev.texts[i]))
    parity_idx = sorted(set(by_len[: PARITY_TEXTS // 4]) | set(range(0, len(dev), max(1, len(dev) // PARITY_TEXTS))))
    parity_texts = [dev.normalized[i] for i in parity_idx]
    torch_w = torch_window_logits(model, windower, parity_texts, batch)
    _, fp32_w = onnx_window_logits(fp32, windower, parity_texts, batch)
    dev_logits, test_logits = _scores(job, fp32, "fp32")
    return _Reference(path, torch_w, fp32_w, dev_logits, _judge(job, dev_logits, test_logits))


def _choose_quantization(job: _Job, ref: _Reference, stage: Path) -> tuple[_Candidate, list[dict[str, Any]]]:
    """Quality, per scheme (fastest first): each is scored and judged on its own, and compared with fp32
    treated the same way. The first scheme that holds ships; if none does, the least bad one (and the
    export fails unless --allow-parity-failure)."""
    from shenhe.training.finetune.backend import QUANT_SCHEMES

    schemes = list(QUANT_SCHEMES) if job.opts.quantization == "auto" else [job.opts.quantization]
    attempts: list[dict[str, Any]] = []
    chosen: _Candidate | None = None
    smoothed: dict[Any, Path] = {}
    rankings: dict[Path, list[tuple[str, float]]] = {}
    for scheme in schemes:
        current = _try_scheme(job, ref, stage, scheme, smoothed, rankings)
        attempts.append(current.attempt)
        if chosen is None or worst_drop(current.attempt["quality"]) < worst_drop(chosen.attempt["quality"]):
            chosen = current
        if current.attempt["passed"]:
            chosen = current
            break
    assert chosen is not None
    if not chosen.attempt["passed"] and not job.opts.allow_parity_failure:
        raise ExportError("quality check failed: " + "; ".join(f for a in attempts for f in a["failures"]))
    for extra in smoothed.values():
        extra.unlink(missing_ok=True)
    return chosen, attempts


def _try_scheme(job: _Job, ref: _Reference, stage: Path, scheme: str, smoothed: dict[Any, Path],
                rankings: dict[Path, list[tuple[str, float]]]) -> _Candidate:
    """Quantise with ``scheme`` (from the SmoothQuant-scaled fp32 model where the scheme asks for it; those are
    cached in ``smoothed``, and the FFN-out sensitivity ranking of each source in ``rankings``), score, judge,
    and check parity and quality against the reference."""
    from shenhe.training.finetune.backend import (
        QUANT_SCHEMES,
        SMOOTHING,
        WEIGHT_ONLY_FFN_OUT,
        ffn_out_sensitivity,
        max_prob_diff,
        ort_session,
        quantize_int8,
    )
    from shenhe.training.finetune.smooth import calibration_windows

    path = stage / f"model.{scheme}.onnx"
    smoothing = SMOOTHING[scheme]
    source = ref.path
    if smoothing is not None:  # SmoothQuant scaling: the same function in fp32, friendlier to INT8
        if smoothing not in smoothed:
            smoothed[smoothing] = _smoothed_fp32(job.run_dir, job.dev.normalized, job.windower, job.pad_id,
                                                 stage / f"smoothed{len(smoothed)}.fp32.onnx", smoothing)
        source = smoothed[smoothing]
    ranking: list[str] | None = None
    weight_only: list[tuple[str, float]] = []
    if scheme in WEIGHT_ONLY_FFN_OUT:
        if source not in rankings:
            sample = calibration_windows(job.windower.first_windows(job.dev.normalized), SMOOTH_CALIBRATION_TEXTS)
            rankings[source] = ffn_out_sensitivity(source, sample, job.pad_id)
        ranking = [name for name, _ in rankings[source]]
        weight_only = rankings[source][: WEIGHT_ONLY_FFN_OUT[scheme]]
    quantize_int8(source, path, scheme, ranking)
    session = ort_session(path, job.threads)
    judged = _judge(job, *_scores(job, session, scheme))
    cal_probs_torch = apply_calibration(ref.torch_windows, judged.calibration)
    cal_probs_fp32 = apply_calibration(ref.fp32_windows, judged.calibration)
    fp32_diff = max(max_prob_diff(ref.torch_windows, ref.fp32_windows),
                    float(np.max(np.abs(cal_probs_torch - cal_probs_fp32))))
    # Reported, not gated: how often this model decides as the (never served) fp32 model would under
    # this model's own policy.
    dev_probs_fp32 = apply_calibration(ref.dev_logits, judged.calibration)
    agree = float(np.mean(decisions(judged.dev_probs, judged.policy, job.trained)
                          == decisions(dev_probs_fp32, judged.policy, job.trained)))
    failures = []
    if fp32_diff > MAX_FP32_PROB_DIFF:
        failures.append(f"fp32 ONNX differs from torch by {fp32_diff:.2e} > {MAX_FP32_PROB_DIFF:g}")
    quality = quality_drops(ref.judged, judged)
    failures += [f"{scheme}: {f}" for f in quality_failures(quality)]
    attempt = {
        "scheme": scheme,
        "quantization": QUANT_SCHEMES[scheme],
        "size_bytes": path.stat().st_size,
        "fp32_vs_torch_max_abs_prob_diff": fp32_diff,
        "fp32_vs_torch_windows": len(ref.torch_windows),
        "int8_vs_fp32_decision_agreement": round(agree, 4),
        "int8_macro_f1_dev": judged.dev_metrics["macro_f1"],
        "fp32_macro_f1_dev": ref.judged.dev_metrics["macro_f1"],
        "int8_macro_f1_drop": round(ref.judged.dev_metrics["macro_f1"] - judged.dev_metrics["macro_f1"], 4),
        "quality": quality,
        "dev_texts": len(job.dev),
        **({"weight_only_ffn_out": [{"matmul": name, "relative_error": round(err, 6)} for name, err in weight_only]}
           if weight_only else {}),
        "passed": not failures,
        "failures": failures,
    }
    return _Candidate(attempt, path, session, judged)


def _keep_model(stage: Path, ref: _Reference, chosen: _Candidate, attempts: list[dict[str, Any]]) -> None:
    """The chosen scheme's file becomes the bundle's model; the other candidates and the fp32 reference go."""
    os.replace(chosen.path, stage / MODEL_FILE)
    for a in attempts:
        (stage / f"model.{a['scheme']}.onnx").unlink(missing_ok=True)
    ref.path.unlink()


def _gate_blocks(job: _Job, chosen: _Candidate) -> Judged:
    """The chosen model's judgement with auto-block kept only where every held-apart source keeps the block
    precision (as it is when the data has no held-apart file)."""
    from shenhe.training.finetune.backend import onnx_window_logits

    held = job.data_dir / f"{HOLDOUT_SPLIT}.jsonl"
    if not held.is_file():
        return chosen.judged
    heldout = read_split(held, HOLDOUT_SPLIT)
    held_logits, _ = onnx_window_logits(chosen.session, job.windower, heldout.normalized, job.opts.batch_size,
                                        job.opts.show_progress, "holdout")
    return gate_on_heldout(chosen.judged, held_logits, heldout, job.dev, job.test, job.base_policy, job.policy_version_tag)


def _bundle_metrics(job: _Job, ref: _Reference, chosen: _Candidate, judged: Judged,
                    attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json: quality on dev and test, the operating points, what the fit saw, the held-apart gate, the
    export checks, speed, the training run (hyperparameters included), the framework versions, the baseline."""
    from shenhe.training.finetune.backend import QUANT_SCHEMES

    parity = {k: v for k, v in chosen.attempt.items() if k != "failures"}
    parity["attempts"] = attempts
    parity["fp32_reference"] = ref.judged.summary()
    recovered: dict[str, Any] | None = job.info.get("recovered_from")
    if recovered is not None:
        parity["fp32_reference"]["note"] = ("weights recovered from the INT8 bundle "
                                            f"{recovered['name']} {recovered['version']} (dequantised)")
    metrics: dict[str, Any] = {
        "model": {"name": job.name, "version": job.version, "base_encoder": describe_base(str(job.args["base"])),
                  "quantization": QUANT_SCHEMES[chosen.attempt["scheme"]]},
        "dev": judged.dev_metrics,
    }
    if job.test is not None:
        metrics["test"] = judged.test_metrics
    metrics["operating_points"] = points_as_dicts(judged.points)
    held = job.data_dir / f"{HOLDOUT_SPLIT}.jsonl"
    metrics["fit"] = {  # what calibration and thresholds were fit on; holdout.jsonl only gates auto-block
        "split": "dev", "texts": len(job.dev), "sources": job.dev.source_counts(),
        "held_apart_file": str(held) if held.is_file() else None,
    }
    if judged.block_gate is not None:
        metrics["block_gate"] = judged.block_gate
    metrics["parity"] = parity
    metrics["speed"] = _throughput(chosen.session, job.windower, job.dev.texts)
    metrics["training"] = _training_summary(job.info)
    if metrics["training"]["distillation"]:  # a distilled student: time its teacher too, same texts, same run
        metrics["training"]["distillation"]["teacher_speed"] = _teacher_speed(
            metrics["training"]["distillation"], job.windower, job.dev.texts, job.threads)
    metrics["frameworks"] = framework_versions()
    # How to make this bundle again (the commands of every stage known, oldest first) and how long it trained.
    metrics[REBUILD_KEY] = rebuild_record(job.info, export_record(job.opts, job.name, job.version))
    if job.opts.baseline:
        metrics["baseline"] = _baseline_metrics(job.opts.baseline)
    return metrics


def _training_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The run, as metrics.json and the model card report it."""
    out: dict[str, Any] = {k: info.get(k) for k in ("train_samples_per_second", "dev_macro_f1", "test_macro_f1")}
    out.update({k: info["summary"].get(k) for k in
                ("device", "train_rows", "train_rows_available", "trained_categories", "untrained_categories",
                 "freeze_embeddings", "trainable_parameters", "warm_start", "averaging", "augmentation",
                 "distillation")})
    sampling = info["summary"].get("sampling") or {}
    out["sampling"] = None
    if sampling.get("source_power") is not None or sampling.get("harmless_boost") or sampling.get("rare_factors"):
        out["sampling"] = {k: sampling.get(k) for k in (
            "source_power", "fixed_source_shares", "harmless_boost", "rare_factors", "expected_rows_per_epoch")}
        out["sampling"]["epoch_share"] = {s: v["epoch_share"] for s, v in sampling.get("sources", {}).items()}
    out["steps"] = info.get("state", {}).get("global_step")
    out["stop_reason"] = info.get("state", {}).get("stop_reason")
    out["hyperparameters"] = {k: v for k, v in info["args"].items() if k not in RUN_PATH_ARGS}
    return out


def framework_versions() -> dict[str, str | None]:
    """The versions this export ran with (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    import shenhe

    out: dict[str, str | None] = {"python": platform.python_version(), "shenhe": shenhe.__version__}
    for name in FRAMEWORKS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _write_bundle(job: _Job, stage: Path, policy: Policy, calibration: dict[str, Any], metrics: dict[str, Any]) -> None:
    """tokenizer.json, policy.yaml, metrics.json, bundle.json (with every file's hash) and MODEL_CARD.md,
    then load the bundle exactly as the predictor will."""
    from shenhe.training.finetune.model_card import write_bundle_card

    (stage / TOKENIZER_FILE).write_text(job.tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    (stage / POLICY_FILE).write_text(
        "# Thresholds chosen on dev by `shenhe export` (see metrics.json: operating_points).\n" + policy.to_yaml(),
        encoding="utf-8")
    (stage / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    sources = describe_sources(job.data_dir, job.info["summary"].get("sources", {}))
    manifest_kwargs: dict[str, Any] = dict(
        name=job.name, version=job.version, created=datetime.now(UTC).isoformat(timespec="seconds"),
        base_encoder=describe_base(str(job.args["base"])), max_length=int(job.args["max_length"]),
        window_stride=int(job.args["window_stride"]), pad_token_id=job.pad_id, text_prefix=job.text_prefix,
        slugs=CATEGORY_SLUGS, trained_categories=tuple(s for s, t in zip(CATEGORY_SLUGS, job.trained, strict=True) if t),
        calibration=calibration, data_sources=tuple(sources), quantization=metrics["model"]["quantization"],
        metrics={"dev_macro_f1": metrics["dev"]["macro_f1"],
                 "test_macro_f1": metrics.get("test", {}).get("macro_f1"),
                 "baseline_test_macro_f1": metrics.get("baseline", {}).get("test_macro_f1"),
                 "int8_vs_fp32_decision_agreement": metrics["parity"]["int8_vs_fp32_decision_agreement"]},
    )
    files = file_hashes(stage, (MODEL_FILE, TOKENIZER_FILE, POLICY_FILE, METRICS_FILE))
    write_manifest(stage, BundleManifest(files=files, **manifest_kwargs))
    # The card is rendered from the bundle's own files, exactly as `shenhe card` renders it again later;
    # its hash joins bundle.json, and the bundle is loaded back as the predictor will load it.
    write_bundle_card(stage)


def _publish(stage: Path, out: Path) -> None:
    """Move the finished bundle into place (an existing one is replaced, never left half-written)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)


SMOOTH_CALIBRATION_TEXTS = 512


def _smoothed_fp32(run_dir: Path, normalized: list[str], windower: WindowTokenizer, pad_id: int, out: Path,
                   smoothing: Any) -> Path:
    """The run's model with SmoothQuant scaling (calibrated on dev windows), exported to fp32 ONNX."""
    from shenhe.training.finetune.backend import export_onnx
    from shenhe.training.finetune.model import load_model
    from shenhe.training.finetune.smooth import calibration_windows, smooth_for_int8

    model, _, _ = load_model(run_dir / "model", attn_implementation="eager")
    sample = calibration_windows(windower.first_windows(normalized), SMOOTH_CALIBRATION_TEXTS)
    smooth_for_int8(model, sample, pad_id, skip=smoothing.skip, alpha_ffn_out=smoothing.alpha_ffn_out)
    export_onnx(model, out, pad_id)
    return out


def _baseline_metrics(run: Path) -> dict[str, Any]:
    p = run / "metrics.json"
    if not p.is_file():
        raise ExportError(f"{run}: no metrics.json (train it with `shenhe train --arch tfidf --out {run}`)")
    m = json.loads(p.read_text(encoding="utf-8"))
    return {
        "run": str(run),
        "model": m.get("model", "tfidf"),
        "dev_macro_f1": m.get("dev", {}).get("macro_f1"),
        "test_macro_f1": m.get("test", {}).get("macro_f1"),
        "test_per_category": {k: (v.get("f1") or {}).get("f1") for k, v in m.get("test", {}).get("per_category", {}).items()
                              if v.get("trained")},
    }
