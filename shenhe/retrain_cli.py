"""`shenhe retrain`: reviewer labels to a candidate model and the promotion gate's verdict, in one command.

It needs every layer (the review queue, training, export and the gate), so it lives in the CLI layer; the
pieces are where they belong: reading and resolving reviewer decisions in ``serving/reviews.py``, the
training folder in ``training/data/retrain.py``, sample weights in ``training/finetune``, the gate in
``eval/promote.py``. Light imports only at top level: torch loads inside the command, after a check that
names what is missing and how to install it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from shenhe.models.errors import UserError, cli_errors
from shenhe.models.jsonl import atomic_jsonl, iter_values
from shenhe.training.finetune.args import ExportOptions, TrainingArguments, default_help, given

# What training and export import (the `train` extra); checked before anything else happens.
TRAINING_PACKAGES = {"torch": "torch", "transformers": "transformers", "safetensors": "safetensors",
                     "onnx": "onnx", "sklearn": "scikit-learn"}
INSTALL_TRAIN = "pip install 'shenhe[train]' (in a checkout: make install-dev)"
DEFAULT_REPLAY = Path("data/build")
HELD_APART_FILE = "reviewed_held_apart.jsonl"


def missing_training_packages() -> list[str]:
    """The training packages that cannot be imported here (their pip names)."""
    missing = []
    for module, pip_name in TRAINING_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent that fails to import, or a module set to None
            found = False
        if not found:
            missing.append(pip_name)
    return missing


def _say(message: str) -> None:
    print(f"retrain: {message}", file=sys.stderr, flush=True)


def _expected() -> tuple[type[BaseException], ...]:
    from shenhe.eval.errors import EvalDataError
    from shenhe.models.bundle import BundleError
    from shenhe.models.policy import PolicyError
    from shenhe.serving.reviews import ReviewSourceError
    from shenhe.training.data.retrain import RetrainDataError
    from shenhe.training.finetune.dataset import DataError
    from shenhe.training.finetune.errors import ExportError, TrainError

    return (ReviewSourceError, RetrainDataError, DataError, TrainError, ExportError, BundleError, PolicyError,
            EvalDataError)


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def retrain_cmd(
    from_reviews: Annotated[str, typer.Option(
        "--from-reviews", help="The review queue's database URL (sqlite:///var/shenhe.db, postgresql+psycopg://...) "
                               "or a `shenhe review export` file.")],
    out: Annotated[Path, typer.Option("--out", help="New run folder: data/, run/ (training), bundle/ (the candidate), "
                                                    "gate.jsonl, dropped.jsonl, retrain.json.")],
    base_bundle: Annotated[Path, typer.Option("--base-bundle", help="The bundle to continue from (usually the one "
                                                                    "serving).")] = Path("models/default"),
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="A built corpus (shenhe data build) to merge the reviewed items into. Without it: continue "
                         "on the reviewed items plus a replay sample of what the bundle was trained on.")] = None,
    replay: Annotated[Path, typer.Option(
        "--replay", help="Without --corpus: where the bundle's training data is (train.jsonl; its dev.jsonl and "
                         "test.jsonl serve as dev and fixed evaluation set); used if present.")] = DEFAULT_REPLAY,
    replay_rows: Annotated[int, typer.Option("--replay-rows", min=0, help="Rows of replay sample.")] = 5000,
    eval_data: Annotated[Path | None, typer.Option(
        "--eval-data", help="The fixed evaluation set of the gate (default: test.jsonl of --corpus, else of --replay); "
                            "the held-apart reviewed items are added to it.")] = None,
    holdout_share: Annotated[float, typer.Option(
        "--holdout-share", min=0.0, max=0.9, help="Share of reviewed items (by a hash of their id) held apart for the "
                                                  "gate and never trained on.")] = 0.2,
    review_weight: Annotated[float, typer.Option(
        "--review-weight", min=0.01, max=1000.0, help="Sample weight of a reviewer's label (public rows: 1).")] = 3.0,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only items decided at or after this ISO 8601 time (database URL only).")] = None,
    send_back: Annotated[bool, typer.Option(
        "--send-back/--no-send-back", help="Put items whose reviewers disagree back in the queue for another "
                                           "opinion (database URL only).")] = True,
    base: Annotated[str | None, typer.Option(
        "--base", help="The encoder the bundle was fine-tuned from (default: the imported me5-small-zh).")] = None,
    time_budget: Annotated[float, typer.Option(
        "--time-budget-minutes", min=0.1, help="Training time budget.")] = 30.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after N optimiser steps.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 2,
    lr: Annotated[float | None, typer.Option(
        "--lr", help=f"Encoder learning rate. {default_help(TrainingArguments, 'learning_rate')}")] = None,
    head_lr: Annotated[float | None, typer.Option(
        "--head-lr", help=f"Head learning rate. {default_help(TrainingArguments, 'head_learning_rate')}")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help=default_help(TrainingArguments, "batch_size"))] = None,
    eval_every: Annotated[int | None, typer.Option(
        "--eval-every-steps", min=0, help="Dev evaluation every N steps (0: epochs only). "
                                          f"{default_help(TrainingArguments, 'eval_every_steps')}")] = None,
    min_train_positives: Annotated[int | None, typer.Option(
        "--min-train-positives", min=1, help="Categories with fewer training positives are untrained. "
                                             f"{default_help(TrainingArguments, 'min_train_positives')}")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads.")] = None,
    target: Annotated[Path | None, typer.Option(
        "--target", help="The serving bundle the candidate replaces if the gate passes (default: --base-bundle).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Candidate name (default: the base bundle's).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Candidate version (default: UTC time).")] = None,
    quantization: Annotated[str | None, typer.Option(
        "--quantization", help=f"As for shenhe export. {default_help(ExportOptions, 'quantization')}")] = None,
    allow_parity_failure: Annotated[bool, typer.Option(
        "--allow-parity-failure", help="Write the candidate even if an export parity check fails.")] = False,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, max=1.0, help="Macro-F1 the candidate may lose at the gate (0: no worse).")] = 0.0,
    allow_category_regressions: Annotated[bool, typer.Option(
        "--allow-category-regressions", help="Do not block on a significantly worse category.")] = False,
    allow_more_harmful_passed: Annotated[bool, typer.Option(
        "--allow-more-harmful-passed", help="Do not block on significantly more harmful texts passed.")] = False,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=100, help="Bootstrap resamples at the gate.")] = 1000,
    record: Annotated[Path, typer.Option("--record", help="Append the gate's verdict to this JSONL audit file.")] = Path(
        "var/promotions.jsonl"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Judge, but do not replace --target.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Retrain on reviewer labels: read decided reviews, continue training from the bundle, export, and
    promote the candidate only if the gate finds it no worse (exit 0 promoted, 1 not promoted, 2 error)."""
    opts = dict(locals())
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see `shenhe train`

    @cli_errors()
    def check() -> None:
        missing = missing_training_packages()
        if missing:
            raise UserError(f"shenhe retrain needs the training packages ({', '.join(missing)} missing here); "
                            f"install them with: {INSTALL_TRAIN}")

    check()

    @cli_errors(*_expected(), OSError)
    def run() -> int:
        return _retrain(opts)

    code = run()
    if code:
        raise typer.Exit(code)


def _retrain(o: dict[str, Any]) -> int:
    from shenhe.models.bundle import POLICY_FILE, load_bundle
    from shenhe.serving.reviews import parse_since, read_reviews

    base_bundle: Path = o["base_bundle"]
    out: Path = o["out"]
    target: Path = o["target"] or base_bundle
    bundle = load_bundle(base_bundle)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} already exists and is not empty: choose a new run folder")
    if o["corpus"] is not None and not o["corpus"].is_dir():
        raise UserError(f"--corpus {o['corpus']}: not a folder (build one with `shenhe data build`)")
    replay: Path = o["replay"]
    replay_present = o["corpus"] is None and (replay / "train.jsonl").is_file()
    fixed = o["eval_data"]
    if fixed is None:
        for folder in (o["corpus"], replay):
            if folder is not None and _non_empty(folder / "test.jsonl"):
                fixed = folder / "test.jsonl"
                break
    if fixed is None:
        raise UserError("no fixed evaluation set for the gate: give --eval-data FILE (e.g. data/build/test.jsonl, "
                        "the same file every time)")
    if not fixed.is_file():
        raise UserError(f"--eval-data {fixed}: no such file")
    since = parse_since(o["since"]) if o["since"] is not None else None

    # 1. the reviewed items
    reviews = read_reviews(o["from_reviews"], since=since, send_back=o["send_back"])
    _say(f"read {reviews.items_read} decided item(s) from {reviews.source}"
         + (f" (decided since {since.isoformat()})" if since else "")
         + f": {len(reviews.rows)} to use, {len(reviews.dropped)} dropped"
         + (f", {len(reviews.sent_back)} sent back to the queue for another opinion" if reviews.sent_back else ""))
    for d in reviews.dropped:
        _say(f"  dropped {d.line()}")
    with atomic_jsonl(out / "dropped.jsonl") as dropped:
        for rec in reviews.dropped_records():
            dropped.write(rec)
    if not reviews.rows:
        raise UserError(f"no reviewed item to train on ({reviews.items_read} read, {len(reviews.dropped)} dropped; "
                        f"the reasons are listed above and in {out / 'dropped.jsonl'})")

    # 2. the training folder
    from shenhe.training.data.retrain import assemble

    data = assemble([r.record() for r in reviews.rows], out / "data", corpus=o["corpus"],
                    replay=replay if replay_present else None,
                    replay_sources=[s.name for s in bundle.manifest.data_sources], replay_rows=o["replay_rows"],
                    review_weight=o["review_weight"], holdout_share=o["holdout_share"], seed=o["seed"])
    held_note = f"{data.reviewed_held_apart} reviewed item(s) held apart for the gate (never trained on)"
    if data.mode == "corpus":
        _say(f"training data: corpus {data.corpus} merged with {data.reviewed_train} reviewed item(s) at weight "
             f"{data.review_weight:g} ({data.replaced_by_reviewers} corpus row(s) relabelled by reviewers); {held_note}")
    elif data.mode == "replay":
        _say(f"no --corpus: continuing from {base_bundle} on {data.reviewed_train} reviewed item(s) at weight "
             f"{data.review_weight:g} plus a replay sample of {data.replay_rows} row(s) of what it was trained on "
             f"({replay}/train.jsonl, sources {', '.join(data.replay_sources) or 'none'}); {held_note}")
    else:
        _say(f"no --corpus and no replay data ({replay}/train.jsonl not found): continuing from {base_bundle} on "
             f"the {data.reviewed_train} reviewed item(s) only; {held_note}")
    if data.note:
        _say(f"note: {data.note}")
    _say("splits: " + ", ".join(f"{k} {v}" for k, v in data.splits.items()))

    # 3. the time-budgeted continuation from the bundle
    from shenhe.training.finetune.cli import _default_base
    from shenhe.training.finetune.trainer import train

    chosen = o["base"] or _default_base()
    base_path = Path(chosen).expanduser()
    m = bundle.manifest
    overrides = given(learning_rate=o["lr"], head_learning_rate=o["head_lr"], batch_size=o["batch_size"],
                      min_train_positives=o["min_train_positives"], eval_every_steps=o["eval_every"])
    if overrides.get("eval_every_steps") == 0:  # 0 on the command line: epochs only
        overrides["eval_every_steps"] = None
    try:
        args = TrainingArguments(
            base=str(base_path) if base_path.exists() else chosen, data=data.folder, out=out / "run",
            init_from=str(base_bundle), epochs=o["epochs"], max_length=m.max_length, window_stride=m.window_stride,
            seed=o["seed"], max_steps=o["max_steps"], time_budget_minutes=o["time_budget"], threads=o["threads"],
            **overrides,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    args.save_every_steps = max(100, args.eval_every_steps or 100)  # a checkpoint at least every evaluation
    _say(f"training from {base_bundle} ({m.name} {m.version}), encoder {args.base}, budget "
         f"{o['time_budget']:g} min" + (f" or {o['max_steps']} steps" if o["max_steps"] else ""))
    info = train(args, show_progress=not o["quiet"])
    state = info["state"]
    _say(f"trained {state['global_step']} step(s) ({state['stop_reason']}); dev macro-F1 {info['dev_macro_f1']:.4f}")

    # 4. export the candidate
    from shenhe.training.finetune.export import export_bundle

    version = o["version"] or datetime.now(UTC).strftime("%Y.%m.%d.%H%M%S")
    candidate = export_bundle(ExportOptions(
        run=out / "run", out=out / "bundle", name=o["name"] or m.name, version=version, data=data.folder,
        policy=bundle.dir / POLICY_FILE, threads=o["threads"], allow_parity_failure=o["allow_parity_failure"],
        show_progress=not o["quiet"], **given(quantization=o["quantization"])))
    _say(f"candidate {o['name'] or m.name} {version}: {candidate}")

    # 5. the gate: the fixed evaluation set plus the held-apart reviewed items
    gate = out / "gate.jsonl"
    with atomic_jsonl(gate) as fh:
        for path in (fixed, data.held_apart_file):
            assert path is not None
            for _, record in iter_values(path):
                fh.write(record)
            if path == fixed:
                n_fixed = fh.written
    n_held = fh.written - n_fixed
    _say(f"gate: {fixed} ({n_fixed} texts) + {n_held} held-apart reviewed item(s) -> {gate}; "
         f"candidate vs {target}")
    from rich.console import Console

    from shenhe.eval.cli import print_verdict
    from shenhe.eval.promote import PromotionRule, promote

    rule = PromotionRule(macro_f1_tolerance=o["tolerance"],
                         forbid_category_regressions=not o["allow_category_regressions"],
                         forbid_more_harmful_passed=not o["allow_more_harmful_passed"],
                         n_bootstrap=o["bootstrap"], seed=o["seed"])
    verdict = promote(candidate, target, gate, rule=rule, record=o["record"], dry_run=o["dry_run"],
                      threads=o["threads"], show_progress=not o["quiet"])
    print_verdict(Console(stderr=True), verdict)
    summary = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"), "reviews": reviews.summary(),
        "sent_back": reviews.sent_back, "data": data.to_json(),
        "training": {"run": str(out / "run"), "steps": state["global_step"], "stop_reason": state["stop_reason"],
                     "dev_macro_f1": info["dev_macro_f1"], "init_from": str(base_bundle)},
        "candidate": {"bundle": str(candidate), "name": o["name"] or m.name, "version": version},
        "gate": {"file": str(gate), "fixed": str(fixed), "fixed_rows": n_fixed, "held_apart_reviewed": n_held,
                 "target": str(target), "promote": verdict.promote, "reasons": verdict.reasons,
                 "dry_run": o["dry_run"], "macro_f1": verdict.checks.get("macro_f1")},
    }
    (out / "retrain.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str) + "\n",
                                      encoding="utf-8")
    if verdict.promote:
        print(f"{'would promote' if o['dry_run'] else 'promoted'}: {candidate} -> {target}"
              + ("" if o["dry_run"] else f" (previous kept in {target.name}.previous)"))
        return 0
    print(f"not promoted: {'; '.join(verdict.reasons)} (the candidate stays in {candidate})")
    return 1


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain_cmd)
