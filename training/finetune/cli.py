"""`shenhe train`, `shenhe distill`, `shenhe export` and `shenhe card`. Light imports only: torch, transformers and sklearn load inside commands."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from shenhe.models.bundle import EVALUATION_FILE, BundleError
from shenhe.models.errors import UserError, cli_errors
from shenhe.models.policy import PolicyError
from shenhe.training.data import BUILD_DIR
from shenhe.training.finetune.args import (
    LAYER_MAPS,
    RUN_OPTIONS,
    ZERO_MEANS_OFF,
    DistillArguments,
    ExportOptions,
    TrainingArguments,
    default_help,
    given,
)
from shenhe.training.finetune.errors import CardError

DEFAULT_BASE = "~/.cache/shenhe/encoders/me5-small-zh"


def _default_base() -> str:
    try:
        from shenhe.training.encoder.base import default_encoder_dir
    except ImportError:
        return DEFAULT_BASE
    return str(default_encoder_dir())


def _passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin (must happen before torch loads).

    On a shared 2-core machine spinning threads burn the cores other processes need: measured here,
    2 threads with the default policy used 2.4x the CPU time of 1 thread per training step under load;
    with PASSIVE the same as 1 thread, at twice its speed. Set OMP_WAIT_POLICY yourself to override."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _expected_errors() -> tuple[type[BaseException], ...]:
    from shenhe.training.finetune.dataset import DataError
    from shenhe.training.finetune.errors import ExportError, TrainError

    found: list[type[BaseException]] = [TrainError, DataError, ExportError, BundleError, PolicyError]
    try:
        from shenhe.training.encoder.base import BaseEncoderError

        found.append(BaseEncoderError)
    except ImportError:
        pass
    return tuple(found)


# With --resume, only these may change; every other setting is the run's own (run.json).
RESUMABLE = ("epochs", "max_steps", "time_budget_minutes", "threads", "early_stopping_patience",
             "snapshot_every_steps", "average_last")


def _pairs(values: list[str] | None, option: str) -> dict[str, float]:
    """``NAME=NUMBER`` items (repeated options or comma-separated) as a dict; a bad item is a UserError."""
    out: dict[str, float] = {}
    for item in (part.strip() for v in values or () for part in v.split(",")):
        if not item:
            continue
        name, sep, number = item.rpartition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(number)
        except ValueError:
            raise UserError(f"{option}: expected NAME=NUMBER, not {item!r}") from None
    return out


def _augment_default() -> float:
    from shenhe.training.finetune.args import AugmentConfig

    return AugmentConfig().share


# ---- the options `shenhe train` and `shenhe distill` share, declared once ------------------------------


def _shared_default(name: str) -> str:
    """``[default: X]`` of a field both commands take; if DistillArguments ever gets its own default, one shared
    help text would lie about it, so importing this module fails until the option gets a per-command help."""
    text = default_help(TrainingArguments, name)
    if default_help(DistillArguments, name) != text:
        raise AssertionError(f"{name}: train and distill defaults differ; declare the option per command")
    return text


Data = Annotated[Path, typer.Option("--data", help="Folder with train.jsonl, dev.jsonl and (optional) test.jsonl.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
Epochs = Annotated[int | None, typer.Option("--epochs", help=f"Epochs. {_shared_default('epochs')}")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help=_shared_default("batch_size"))]
WarmupRatio = Annotated[float | None, typer.Option("--warmup-ratio", help=_shared_default("warmup_ratio"))]
Seed = Annotated[int | None, typer.Option("--seed", help=_shared_default("seed"))]
FreezeEmbeddings = Annotated[bool | None, typer.Option(
    "--freeze-embeddings/--train-embeddings", help="Default: frozen on CPU, trained on GPU.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimiser steps.")]
TimeBudget = Annotated[float | None, typer.Option(
    "--time-budget-minutes", help="Stop training after this many minutes (over all resumes), then evaluate.")]
MaxTrainSamples = Annotated[int | None, typer.Option(
    "--max-train-samples", help="Deterministic subsample of train; rare-category positives are always kept.")]
MaxPerSource = Annotated[int | None, typer.Option(
    "--max-per-source", help="Cap train rows per source (the rows over the cap are dropped).")]
EvalEvery = Annotated[int | None, typer.Option(
    "--eval-every-steps", help=f"Dev evaluation every N steps (0: epochs only). {_shared_default('eval_every_steps')}")]
EvalSamples = Annotated[int | None, typer.Option(
    "--eval-samples", help=f"Dev subsample during training (0: all). {_shared_default('eval_samples')}")]
SaveEvery = Annotated[int | None, typer.Option(
    "--save-every-steps", help=f"Checkpoint every N steps. {_shared_default('save_every_steps')}")]
Patience = Annotated[int | None, typer.Option(
    "--patience", min=1, help="Early stopping: evaluations without dev macro-F1 improvement (with --resume, replaces "
                              f"the run's value). {_shared_default('early_stopping_patience')}")]
SnapshotEvery = Annotated[int | None, typer.Option(
    "--snapshot-every-steps", min=1, help="Keep the trainable weights every N steps in snapshots/ (for --average-last).")]
AverageLast = Annotated[int | None, typer.Option(
    "--average-last", min=0, help="At the end, average the last K snapshots; the average is the final model when it "
                                  "scores at least as well on the dev subsample as the best checkpoint (0: off). "
                                  f"{_shared_default('average_last')}")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: cores available).")]
Calibration = Annotated[str | None, typer.Option(
    "--calibration", help=f"platt or isotonic. {_shared_default('calibration')}")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


# Options whose help depends on the command (another default, or the teacher's say).
TEACHERS = "\\[default: the teacher's]"


def _lr_option(cls: type[TrainingArguments]) -> Any:
    return typer.Option("--lr", help=f"Encoder learning rate. {default_help(cls, 'learning_rate')}")


def _head_lr_option(cls: type[TrainingArguments], note: str = "") -> Any:
    return typer.Option("--head-lr", help=f"Head learning rate{note}. {default_help(cls, 'head_learning_rate')}")


def _max_length_option(default: str) -> Any:
    return typer.Option("--max-length", help=f"Tokens per window. {default}")


def _stride_option(default: str) -> Any:
    return typer.Option("--stride", help=f"Tokens shared by consecutive windows of a long text. {default}")


def _device_option(cls: type[TrainingArguments], note: str = "") -> Any:
    return typer.Option("--device", help=f"auto, cpu or cuda{note}. {default_help(cls, 'device')}")


def _overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The dataclass fields a command's parameters (its ``locals()``) set (args.RUN_OPTIONS); an option not given
    (None) keeps the dataclass default, and 0 for --eval-every-steps / --eval-samples means off (None)."""
    out = given(**{field: params[param] for flag, field in RUN_OPTIONS.items()
                   if (param := flag.removeprefix("--").replace("-", "_")) in params})
    for name in ZERO_MEANS_OFF:
        if out.get(name) == 0:
            out[name] = None
    return out


RunArgs = TypeVar("RunArgs", bound=TrainingArguments)


def _resumed(out: Path, overrides: dict[str, Any], cls: type[RunArgs], kind: str) -> RunArgs:
    """The run's own arguments (run.json) with the RESUMABLE options given now, checked like a new run's."""
    from shenhe.training.finetune.trainer import load_run_args

    args = load_run_args(out, cls, kind=kind)
    for name in RESUMABLE:
        if name in overrides:
            setattr(args, name, overrides[name])
    try:
        args.__post_init__()
    except ValueError as e:
        raise UserError(str(e)) from None
    return args


def _interrupted(kind: str, out: Path) -> UserError:
    return UserError(f"interrupted; continue from the last checkpoint with: shenhe {kind} --resume --out {out}",
                     exit_code=130)


def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, logs, final model, metrics).")],
    base: Annotated[str | None, typer.Option(
        "--base", help="Encoder: local directory or hub id (default: the imported me5-small-zh in ~/.cache/shenhe).")] = None,
    data: Data = BUILD_DIR,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="Warm start from a run, its model/ folder or a bundle fine-tuned from --base "
                            "(e.g. models/default when retraining on reviewer labels).")] = None,
    arch: Annotated[str, typer.Option("--arch", help="bert (fine-tune the encoder) or tfidf (baseline).")] = "bert",
    resume: Resume = False,
    epochs: Epochs = None,
    lr: Annotated[float | None, _lr_option(TrainingArguments)] = None,
    head_lr: Annotated[float | None, _head_lr_option(TrainingArguments)] = None,
    batch_size: BatchSize = None,
    max_length: Annotated[int | None, _max_length_option(default_help(TrainingArguments, "max_length"))] = None,
    stride: Annotated[int | None, _stride_option(default_help(TrainingArguments, "window_stride"))] = None,
    warmup_ratio: WarmupRatio = None,
    seed: Seed = None,
    freeze_embeddings: FreezeEmbeddings = None,
    freeze_layers: Annotated[int | None, typer.Option(
        "--freeze-layers", help=f"Freeze the bottom N transformer layers. {default_help(TrainingArguments, 'freeze_layers')}")] = None,
    max_steps: MaxSteps = None,
    time_budget_minutes: TimeBudget = None,
    max_train_samples: MaxTrainSamples = None,
    max_per_source: MaxPerSource = None,
    eval_every_steps: EvalEvery = None,
    eval_samples: EvalSamples = None,
    save_every_steps: SaveEvery = None,
    patience: Patience = None,
    snapshot_every_steps: SnapshotEvery = None,
    average_last: AverageLast = None,
    threads: Threads = None,
    device: Annotated[str | None, _device_option(TrainingArguments)] = None,
    calibration: Calibration = None,
    min_train_positives: Annotated[int | None, typer.Option(
        "--min-train-positives", help="Categories with fewer training positives are untrained (masked). "
                                      f"{default_help(TrainingArguments, 'min_train_positives')}")] = None,
    oversample_rare: Annotated[int | None, typer.Option(
        "--oversample-rare", help="Draw the positives of categories expected fewer than N times per epoch (after "
                                  "--source-power/--source-share) more often, up to about N (at most 8x; 0: off). "
                                  f"{default_help(TrainingArguments, 'oversample_rare')}")] = None,
    source_power: Annotated[float | None, typer.Option(
        "--source-power", min=0.0, max=1.0,
        help="Balance sources by sampling weights instead of caps: each source's share of an epoch is proportional "
             "to rows ** P (1: natural, 0.5: square root, 0: equal); no row is dropped (default: off).")] = None,
    source_share: Annotated[list[str] | None, typer.Option(
        "--source-share", help="SOURCE=SHARE: a fixed share of each epoch for a source (repeatable); the other "
                               "sources share the rest by --source-power.")] = None,
    harmless_boost: Annotated[list[str] | None, typer.Option(
        "--harmless-boost", help="SOURCE=FACTOR: weight of the source's harmless rows against its harmful ones, "
                                 "within its share (repeatable), e.g. COLD=1.5.")] = None,
    augment_share: Annotated[float | None, typer.Option(
        "--augment-share", min=0.0, max=1.0,
        show_default="AugmentConfig.share, 0: off",
        help="Share of training texts rewritten each epoch with disguises (homophones, look-alikes/emoji, inserted "
             "symbols/spaces, traditional characters), harmful and harmless alike (e.g. 0.3).")] = None,
    augment_kinds: Annotated[str | None, typer.Option(
        "--augment-kinds", help="KIND=WEIGHT,... relative weights of homophone, lookalike, insert, traditional "
                                "(unnamed kinds keep their default weight; 0 turns one off).")] = None,
    quiet: Quiet = False,
) -> None:
    """Fine-tune an encoder (or fit the TF-IDF baseline) on the built corpus; calibrate and pick thresholds on dev."""

    overrides = _overrides(locals())
    _passive_openmp()

    @cli_errors(*_expected_errors(), OSError)
    def run() -> None:
        if arch == "tfidf":
            from shenhe.training.finetune.tfidf import TfidfArguments, train_tfidf

            tfidf_fields = {f.name for f in dataclasses.fields(TfidfArguments)}
            info = train_tfidf(TfidfArguments(data=data, out=out, **{k: v for k, v in overrides.items() if k in tfidf_fields}))
            print(json.dumps({k: info[k] for k in ("train_rows", "features", "fit_seconds", "dev_macro_f1",
                                                   "test_macro_f1")}, ensure_ascii=False))
            return
        if arch != "bert":
            raise UserError(f"--arch must be bert or tfidf, not {arch!r}")
        from shenhe.training.finetune.args import AugmentConfig, SamplingConfig
        from shenhe.training.finetune.trainer import train

        if resume:
            args = _resumed(out, overrides, TrainingArguments, "train")
        else:
            chosen = base or _default_base()
            base_path = Path(chosen).expanduser()
            try:
                weights = {**AugmentConfig().weights, **_pairs([augment_kinds] if augment_kinds else None,
                                                              "--augment-kinds")}
                augment = AugmentConfig(share=_augment_default() if augment_share is None else augment_share,
                                        weights=weights)
                sampling = SamplingConfig(source_power=source_power,
                                          source_shares=_pairs(source_share, "--source-share"),
                                          harmless_boost=_pairs(harmless_boost, "--harmless-boost"))
                args = TrainingArguments(base=str(base_path) if base_path.exists() else chosen, data=data, out=out,
                                         init_from=str(init_from) if init_from else None, sampling=sampling,
                                         augment=augment, **overrides)
            except ValueError as e:
                raise UserError(str(e)) from None
        try:
            info = train(args, resume=resume, show_progress=not quiet)
        except KeyboardInterrupt:
            raise _interrupted("train", out) from None
        print(json.dumps({"run": str(out), "steps": info["state"]["global_step"],
                          "stop_reason": info["state"]["stop_reason"],
                          "train_samples_per_second": info["train_samples_per_second"],
                          "dev_macro_f1": info["dev_macro_f1"], "test_macro_f1": info["test_macro_f1"]}))

    run()


def distill_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run directory of the student (same shape as a `shenhe train` run).")],
    teacher: Annotated[Path | None, typer.Option(
        "--teacher", help="The teacher: a bundle (e.g. models/default) or a finished `shenhe train` run.")] = None,
    layers: Annotated[int | None, typer.Option(
        "--layers", min=1, help="K: encoder layers the student keeps (e.g. 6, 4 or 3 of the teacher's 12).")] = None,
    layer_map: Annotated[str | None, typer.Option(
        "--layer-map", help="Which teacher layers: spread (every n/K-th, ending at the top layer: 1,3,...,11 for "
                            "K=6), bottom (the first K), or a list such as 0,4,8,11. "
                            f"{default_help(DistillArguments, 'layer_map')}")] = None,
    data: Data = BUILD_DIR,
    unlabelled: Annotated[list[Path] | None, typer.Option(
        "--unlabelled", help="Texts without labels to learn the teacher's scores on (JSONL with \"text\", or one "
                             "text per line); repeatable. Texts in dev, test or holdout are dropped.")] = None,
    augment_copies: Annotated[int | None, typer.Option(
        "--augment-copies", min=0, help="Obfuscated copies of each training text (training/finetune/augment.py), "
                                        "fixed and scored by the teacher too. "
                                        f"{default_help(DistillArguments, 'augment_copies')}")] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", min=0.0, max=1.0, help="Weight of the teacher's soft scores; 1 - alpha on the gold labels. "
                                          f"{default_help(DistillArguments, 'alpha')}")] = None,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", min=0.01, help="Softens both logits in the teacher term. "
                                        f"{default_help(DistillArguments, 'temperature')}")] = None,
    base: Annotated[str | None, typer.Option(
        "--base", help="The encoder the teacher was fine-tuned from (default: a run's own; for a bundle, the "
                       "imported me5-small-zh).")] = None,
    teacher_cache: Annotated[Path | None, typer.Option(
        "--teacher-cache", help="Folder for the teacher's cached logits (default RUN/teacher); students of one "
                                "teacher on one corpus can share it.")] = None,
    resume: Resume = False,
    epochs: Epochs = None,
    lr: Annotated[float | None, _lr_option(DistillArguments)] = None,
    head_lr: Annotated[float | None, _head_lr_option(DistillArguments, " (the head is the teacher's)")] = None,
    batch_size: BatchSize = None,
    max_length: Annotated[int | None, _max_length_option(TEACHERS)] = None,
    stride: Annotated[int | None, _stride_option(TEACHERS)] = None,
    warmup_ratio: WarmupRatio = None,
    seed: Seed = None,
    freeze_embeddings: FreezeEmbeddings = None,
    max_steps: MaxSteps = None,
    time_budget_minutes: TimeBudget = None,
    max_train_samples: MaxTrainSamples = None,
    max_per_source: MaxPerSource = None,
    eval_every_steps: EvalEvery = None,
    eval_samples: EvalSamples = None,
    save_every_steps: SaveEvery = None,
    patience: Patience = None,
    snapshot_every_steps: SnapshotEvery = None,
    average_last: AverageLast = None,
    threads: Threads = None,
    device: Annotated[str | None, _device_option(DistillArguments, " (the teacher always runs on onnxruntime, CPU)")] = None,
    calibration: Calibration = None,
    quiet: Quiet = False,
) -> None:
    """Distil a teacher (bundle or run) into a student with K of its layers, trained on the teacher's cached window
    logits plus the gold labels; export it with `shenhe export --run`."""

    overrides = _overrides(locals())
    _passive_openmp()

    @cli_errors(*_expected_errors(), OSError)
    def run() -> None:
        from shenhe.training.finetune.distill import distill

        if resume:
            args = _resumed(out, overrides, DistillArguments, "distill")
        else:
            from shenhe.training.finetune.teacher import resolve_teacher

            if teacher is None:
                raise UserError("--teacher is needed (a bundle such as models/default, or a finished run)")
            if layers is None and overrides.get("layer_map", "spread") in LAYER_MAPS:
                raise UserError("--layers K is needed (or an explicit --layer-map such as 0,4,8,11)")
            found = resolve_teacher(teacher)
            chosen = base or found.base or _default_base()
            base_path = Path(chosen).expanduser()
            # The student's windows are the teacher's unless given.
            overrides.setdefault("max_length", found.max_length)
            overrides.setdefault("window_stride", found.window_stride)
            try:
                args = DistillArguments(
                    base=str(base_path) if base_path.exists() else chosen, data=data, out=out, teacher=str(teacher),
                    unlabelled=[str(p) for p in unlabelled or []],
                    teacher_cache=str(teacher_cache) if teacher_cache else None, **overrides)
            except ValueError as e:
                raise UserError(str(e)) from None
        try:
            info = distill(args, resume=resume, show_progress=not quiet)
        except KeyboardInterrupt:
            raise _interrupted("distill", out) from None
        d = info["summary"]["distillation"]
        print(json.dumps({"run": str(out), "teacher": d["teacher"]["name"], "layers": d["kept_layers"],
                          "steps": info["state"]["global_step"], "stop_reason": info["state"]["stop_reason"],
                          "train_samples_per_second": info["train_samples_per_second"],
                          "dev_macro_f1": info["dev_macro_f1"], "test_macro_f1": info["test_macro_f1"]},
                         ensure_ascii=False))

    run()


def export_cmd(
    run: Annotated[Path, typer.Option("--run", help="A finished `shenhe train` run directory, or a bundle to re-export "
                                                    "(its weights are read back from model.onnx; needs --base).")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write (replaced atomically).")],
    name: Annotated[str | None, typer.Option("--name", help="Bundle name (default: the --out folder name).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Bundle version (default: today's date).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Corpus folder (default: the run's).")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Base policy (targets, word lists).")] = None,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="TF-IDF run to compare with in the card.")] = None,
    calibration: Annotated[str | None, typer.Option("--calibration", help="platt or isotonic.")] = None,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    quantization: Annotated[str | None, typer.Option(
        "--quantization", help="auto (the fastest scheme that loses at most 0.5 point of macro-F1 and of each "
                               "category's average precision against fp32, on dev and test), dynamic, weight-only, "
                               f"weight-only-fp32 or fp32. {default_help(ExportOptions, 'quantization')}")] = None,
    base: Annotated[str | None, typer.Option(
        "--base", help="Re-exporting a bundle: the encoder it was trained from (default: the imported me5-small-zh).")] = None,
    allow_parity_failure: Annotated[bool, typer.Option(
        "--allow-parity-failure", help="Write the bundle even if a parity check fails (recorded in metrics.json).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Export a run to a bundle: ONNX + INT8, calibration and thresholds on dev, parity checks, model card."""

    _passive_openmp()

    @cli_errors(*_expected_errors(), OSError)
    def go() -> None:
        from shenhe.training.finetune.export import export_bundle

        try:
            opts = ExportOptions(
                run=run, out=out, allow_parity_failure=allow_parity_failure, show_progress=not quiet,
                base=base or (_default_base() if (run / "bundle.json").is_file() else None),
                **given(name=name, version=version, data=data, policy=policy, baseline=baseline,
                        calibration=calibration, threads=threads, quantization=quantization))
        except ValueError as e:
            raise UserError(str(e)) from None
        path = export_bundle(opts)
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        parity = {k: v for k, v in metrics["parity"].items() if k != "attempts"}
        print(json.dumps({"bundle": str(path), "dev_macro_f1": metrics["dev"]["macro_f1"],
                          "test_macro_f1": metrics.get("test", {}).get("macro_f1"),
                          "baseline_test_macro_f1": metrics.get("baseline", {}).get("test_macro_f1"),
                          "parity": parity,
                          "attempts": [{"scheme": a["scheme"], "passed": a["passed"], "quality_drop": a["quality"],
                                        "agreement_with_fp32": a["int8_vs_fp32_decision_agreement"]}
                                       for a in metrics["parity"]["attempts"]]}, ensure_ascii=False))

    go()


def card_cmd(
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle directory whose MODEL_CARD.md to render again.")],
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing; exit 1 when the card on disk differs from a fresh rendering.")] = False,
    evals: Annotated[list[Path] | None, typer.Option(
        "--eval", help="A `shenhe eval` report's metrics.json measured on this bundle (repeatable): its per-source "
                       "and perturbation numbers go into the bundle's evaluation.json and the card, replacing the "
                       "reports attached before. A report of another model or policy is refused.")] = None,
) -> None:
    """Render a bundle's MODEL_CARD.md again from its own files (bundle.json, policy.yaml, metrics.json,
    evaluation.json) with the current template, and record the card's new hash in bundle.json."""

    @cli_errors(BundleError, PolicyError, CardError, OSError)
    def go() -> None:
        from shenhe.training.finetune.evaluation import attach_evaluation
        from shenhe.training.finetune.model_card import write_bundle_card

        if evals and check:
            raise UserError("--check writes nothing and --eval attaches reports: give one of them")
        if evals:
            attached = attach_evaluation(bundle, evals)
            print(f"{bundle / EVALUATION_FILE}: {len(attached['reports'])} report(s) attached", file=sys.stderr)
        differs = write_bundle_card(bundle, check=check)
        card = bundle / "MODEL_CARD.md"
        if check and differs:
            raise UserError(f"{card} differs from a fresh rendering; update it with: shenhe card --bundle {bundle}",
                            exit_code=1)
        done = "rendered again; bundle.json updated" if differs else "up to date"
        print(f"{card}: {done}", file=sys.stderr)

    go()


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("distill")(distill_cmd)
    app.command("export")(export_cmd)
    app.command("card")(card_cmd)
