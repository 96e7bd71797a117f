"""`shenhe export`: a finished run -> a verified model bundle (see models/bundle.py for the format).

Steps: torch model -> fp32 ONNX -> INT8 ONNX; score dev (and test) with the INT8 model that ships;
fit calibration and thresholds on those dev scores (so the thresholds are the shipped model's). ``dev.jsonl``
is the *fit* part of dev: ``shenhe data build`` moves the held-apart half of each large source's dev rows to
``holdout.jsonl``. Thresholds and calibration are never fit on it; export reads it for one yes/no per category:
auto-block stays on only where the block precision holds in every held-apart source (thresholds.gate_blocks);
check parity (fp32 ONNX vs torch, INT8 vs fp32); write metrics, policy, model card and hashes.
The bundle is assembled in a temporary sibling directory and moved into place at the end.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import (
    CARD_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    POLICY_FILE,
    TOKENIZER_FILE,
    BundleManifest,
    file_hashes,
    load_bundle,
    write_manifest,
)
from shenhe.models.cores import default_threads
from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.models.windowing import WindowTokenizer
from shenhe.training.finetune.calibrate import apply_calibration
from shenhe.training.finetune.dataset import Split, read_split, read_splits
from shenhe.training.finetune.errors import ExportError
from shenhe.training.finetune.fit import gate_on_heldout, judge
from shenhe.training.finetune.quality import quality_drops, quality_failures, worst_drop
from shenhe.training.finetune.sources import describe_sources
from shenhe.training.finetune.thresholds import decisions, points_as_dicts

# Acceptance limits checked at export: fp32 ONNX must reproduce torch; a quantised model may lose at most half
# a point of macro-F1 and of each trained category's average precision against fp32, on dev and on test.
MAX_FP32_PROB_DIFF = 1e-4
MAX_QUALITY_DROP = 0.005
PARITY_TEXTS = 256
DEFAULT_DATA = Path("data/build")


@dataclass
class ExportOptions:
    run: Path
    out: Path
    name: str | None = None
    version: str | None = None
    data: Path | None = None  # default: the run's --data
    policy: Path | None = None  # base policy (targets, word lists); default: the shipped policy
    baseline: Path | None = None  # a `shenhe train --arch tfidf` run to compare with in the card
    calibration: str | None = None  # platt | isotonic; default: the run's choice
    threads: int | None = None
    batch_size: int = 64
    allow_parity_failure: bool = False
    show_progress: bool = True
    quantization: str = "auto"  # auto (the fastest scheme whose quality holds) or one of QUANT_SCHEMES
    base: str | None = None  # the encoder a bundle was trained from (needed to re-export a bundle)


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
    """The distilled student's teacher timed like the student (:func:`_throughput`), when it is a bundle that is
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
        run_dir = recover_run(opts.run, opts.base, opts.data or DEFAULT_DATA, scratch)
    try:
        return _export(opts, run_dir)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file() and (path / MODEL_FILE).is_file()


def _export(opts: ExportOptions, run_dir: Path) -> Path:
    import torch

    from shenhe.training.finetune.backend import (
        QUANT_SCHEMES,
        SMOOTHING,
        export_onnx,
        max_prob_diff,
        onnx_window_logits,
        ort_session,
        quantize_int8,
        torch_window_logits,
    )
    from shenhe.training.finetune.model import load_model
    from shenhe.training.finetune.model_card import render_model_card

    info = _read_run(run_dir)
    recovered: dict[str, Any] | None = info.get("recovered_from")
    args = info["args"]
    threads = opts.threads or default_threads()
    torch.set_num_threads(threads)
    data_dir = opts.data or Path(args["data"])
    splits = read_splits(data_dir)
    dev: Split = splits["dev"]
    test: Split | None = splits.get("test")
    base_policy = load_policy(opts.policy) if opts.policy else load_policy()
    trained = np.array([s in info["summary"]["trained_categories"] for s in CATEGORY_SLUGS])
    name = opts.name or opts.out.name
    version = opts.version or datetime.now(UTC).strftime("%Y.%m.%d")
    method = opts.calibration or args.get("calibration", "platt")

    # Eager attention: its export is what onnxruntime's optimizer recognises and fuses into Attention.
    model, tokenizer, meta = load_model(run_dir / "model", attn_implementation="eager")
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    prefix = str(meta.get("text_prefix", ""))
    windower = WindowTokenizer(tokenizer.backend_tokenizer, int(args["max_length"]), int(args["window_stride"]), pad_id,
                               text_prefix=prefix)

    opts.out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.", dir=opts.out.parent))
    try:
        fp32_path = stage / "reference.fp32.onnx"
        export_onnx(model, fp32_path, pad_id)
        fp32 = ort_session(fp32_path, threads)

        # Parity 1: fp32 ONNX vs torch, window by window, on dev texts (longest first, so windowing is covered).
        by_len = sorted(range(len(dev)), key=lambda i: -len(dev.texts[i]))
        parity_idx = sorted(set(by_len[: PARITY_TEXTS // 4]) | set(range(0, len(dev), max(1, len(dev) // PARITY_TEXTS))))
        parity_texts = [dev.normalized[i] for i in parity_idx]
        torch_w = torch_window_logits(model, windower, parity_texts, opts.batch_size)
        _, fp32_w = onnx_window_logits(fp32, windower, parity_texts, opts.batch_size)
        dev_fp32, _ = onnx_window_logits(fp32, windower, dev.normalized, opts.batch_size, opts.show_progress, "dev fp32")
        test_fp32 = (onnx_window_logits(fp32, windower, test.normalized, opts.batch_size, opts.show_progress,
                                        "test fp32")[0] if test is not None else None)
        del fp32

        # Quality, per scheme (fastest first): score dev and test with it, fit calibration and thresholds on
        # its own dev scores (so a bundle's thresholds are always its own model's), and compare its quality
        # with fp32 treated the same way. The first scheme that holds is shipped.
        reference = judge(dev_fp32, test_fp32, dev, test, trained, method, base_policy, f"{name}.{version}")
        schemes = list(QUANT_SCHEMES) if opts.quantization == "auto" else [opts.quantization]
        attempts: list[dict[str, Any]] = []
        chosen: dict[str, Any] | None = None
        smoothed: dict[Any, Path] = {}
        for scheme in schemes:
            path = stage / f"model.{scheme}.onnx"
            smoothing = SMOOTHING[scheme]
            source = fp32_path
            if smoothing is not None:  # SmoothQuant scaling: the same function in fp32, friendlier to INT8
                if smoothing not in smoothed:
                    smoothed[smoothing] = _smoothed_fp32(run_dir, dev.normalized, windower, pad_id,
                                                         stage / f"smoothed{len(smoothed)}.fp32.onnx", smoothing)
                source = smoothed[smoothing]
            quantize_int8(source, path, scheme)
            session = ort_session(path, threads)
            dev_q, _ = onnx_window_logits(session, windower, dev.normalized, opts.batch_size, opts.show_progress,
                                          f"dev {scheme}")
            test_q = (onnx_window_logits(session, windower, test.normalized, opts.batch_size, opts.show_progress,
                                         f"test {scheme}")[0] if test is not None else None)
            judged = judge(dev_q, test_q, dev, test, trained, method, base_policy, f"{name}.{version}")
            cal_probs_torch = apply_calibration(torch_w, judged.calibration)
            cal_probs_fp32 = apply_calibration(fp32_w, judged.calibration)
            fp32_diff = max(max_prob_diff(torch_w, fp32_w), float(np.max(np.abs(cal_probs_torch - cal_probs_fp32))))
            # Reported, not gated: how often this model decides as the (never served) fp32 model would under
            # this model's own policy.
            dev_probs_fp32 = apply_calibration(dev_fp32, judged.calibration)
            agree = float(np.mean(decisions(judged.dev_probs, judged.policy, trained)
                                  == decisions(dev_probs_fp32, judged.policy, trained)))
            failures = []
            if fp32_diff > MAX_FP32_PROB_DIFF:
                failures.append(f"fp32 ONNX differs from torch by {fp32_diff:.2e} > {MAX_FP32_PROB_DIFF:g}")
            quality = quality_drops(reference, judged)
            failures += [f"{scheme}: {f}" for f in quality_failures(quality)]
            attempt = {
                "scheme": scheme,
                "quantization": QUANT_SCHEMES[scheme],
                "size_bytes": path.stat().st_size,
                "fp32_vs_torch_max_abs_prob_diff": fp32_diff,
                "fp32_vs_torch_windows": len(torch_w),
                "int8_vs_fp32_decision_agreement": round(agree, 4),
                "int8_macro_f1_dev": judged.dev_metrics["macro_f1"],
                "fp32_macro_f1_dev": reference.dev_metrics["macro_f1"],
                "int8_macro_f1_drop": round(reference.dev_metrics["macro_f1"] - judged.dev_metrics["macro_f1"], 4),
                "quality": quality,
                "dev_texts": len(dev),
                "passed": not failures,
                "failures": failures,
            }
            attempts.append(attempt)
            current = {"attempt": attempt, "path": path, "session": session, "judged": judged, "test_logits": test_q}
            if chosen is None or worst_drop(quality) < worst_drop(chosen["attempt"]["quality"]):
                chosen = current
            if not failures:
                chosen = current
                break
        assert chosen is not None
        if not chosen["attempt"]["passed"] and not opts.allow_parity_failure:
            raise ExportError("quality check failed: " + "; ".join(f for a in attempts for f in a["failures"]))
        for extra in smoothed.values():
            extra.unlink(missing_ok=True)
        os.replace(chosen["path"], stage / MODEL_FILE)
        for a in attempts:
            (stage / f"model.{a['scheme']}.onnx").unlink(missing_ok=True)
        int8: Any = chosen["session"]
        judged = chosen["judged"]
        held = data_dir / "holdout.jsonl"
        if held.is_file():  # auto-block only where every held-apart source keeps the block precision
            heldout = read_split(held, "holdout")
            held_logits, _ = onnx_window_logits(int8, windower, heldout.normalized, opts.batch_size,
                                                opts.show_progress, "holdout")
            judged = gate_on_heldout(judged, held_logits, heldout, dev, test, base_policy, f"{name}.{version}")
        calibration, points, policy = judged.calibration, judged.points, judged.policy
        parity = {k: v for k, v in chosen["attempt"].items() if k != "failures"}
        parity["attempts"] = attempts
        parity["fp32_reference"] = reference.summary()
        if recovered is not None:
            parity["fp32_reference"]["note"] = ("weights recovered from the INT8 bundle "
                                                f"{recovered['name']} {recovered['version']} (dequantised)")
        scheme_label = QUANT_SCHEMES[chosen["attempt"]["scheme"]]

        metrics: dict[str, Any] = {
            "model": {"name": name, "version": version, "base_encoder": describe_base(str(args["base"])),
                      "quantization": scheme_label},
            "dev": judged.dev_metrics,
        }
        if test is not None:
            metrics["test"] = judged.test_metrics
        metrics["operating_points"] = points_as_dicts(points)
        metrics["fit"] = {  # what calibration and thresholds were fit on; holdout.jsonl only gates auto-block
            "split": "dev", "texts": len(dev), "sources": dev.source_counts(),
            "held_apart_file": str(held) if held.is_file() else None,
        }
        if judged.block_gate is not None:
            metrics["block_gate"] = judged.block_gate
        metrics["parity"] = parity
        metrics["speed"] = _throughput(int8, windower, dev.texts)
        metrics["training"] = {k: info.get(k) for k in ("train_samples_per_second", "dev_macro_f1", "test_macro_f1")}
        metrics["training"].update({k: info["summary"].get(k) for k in
                                    ("device", "train_rows", "train_rows_available", "trained_categories",
                                     "untrained_categories", "freeze_embeddings", "trainable_parameters",
                                     "warm_start", "averaging", "distillation")})
        if metrics["training"]["distillation"]:  # a distilled student: time its teacher too, same texts, same run
            metrics["training"]["distillation"]["teacher_speed"] = _teacher_speed(
                metrics["training"]["distillation"], windower, dev.texts, threads)
        metrics["training"]["steps"] = info.get("state", {}).get("global_step")
        metrics["training"]["stop_reason"] = info.get("state", {}).get("stop_reason")
        if opts.baseline:
            metrics["baseline"] = _baseline_metrics(opts.baseline)

        fp32_path.unlink()
        (stage / TOKENIZER_FILE).write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
        (stage / POLICY_FILE).write_text(
            "# Thresholds chosen on dev by `shenhe export` (see metrics.json: operating_points).\n" + policy.to_yaml(),
            encoding="utf-8")
        (stage / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        sources = describe_sources(data_dir, info["summary"].get("sources", {}))
        manifest_kwargs = dict(
            name=name, version=version, created=datetime.now(UTC).isoformat(timespec="seconds"),
            base_encoder=describe_base(str(args["base"])), max_length=int(args["max_length"]),
            window_stride=int(args["window_stride"]), pad_token_id=pad_id, text_prefix=prefix, slugs=CATEGORY_SLUGS,
            trained_categories=tuple(s for s, t in zip(CATEGORY_SLUGS, trained, strict=True) if t),
            calibration=calibration, data_sources=tuple(sources), quantization=scheme_label,
            metrics={"dev_macro_f1": metrics["dev"]["macro_f1"],
                     "test_macro_f1": metrics.get("test", {}).get("macro_f1"),
                     "baseline_test_macro_f1": metrics.get("baseline", {}).get("test_macro_f1"),
                     "int8_vs_fp32_decision_agreement": parity["int8_vs_fp32_decision_agreement"]},
        )
        card = render_model_card(manifest=BundleManifest(files={}, **manifest_kwargs), policy=policy,
                                 metrics=metrics, sources=sources)
        (stage / CARD_FILE).write_text(card, encoding="utf-8")
        files = file_hashes(stage, (MODEL_FILE, TOKENIZER_FILE, POLICY_FILE, METRICS_FILE, CARD_FILE))
        write_manifest(stage, BundleManifest(files=files, **manifest_kwargs))
        load_bundle(stage)  # the bundle must load exactly as the predictor will load it

        if opts.out.exists():
            old = opts.out.with_name(f".{opts.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(opts.out, old)
            os.replace(stage, opts.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, opts.out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return opts.out


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
