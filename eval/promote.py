"""`shenhe promote`: replace the serving bundle with a candidate only when it is no worse on a fixed set.

Both bundles score the same labelled file (the team's fixed evaluation set, e.g. the corpus test split
plus a frozen sample of reviewer-labelled items). The candidate is promoted when all of these hold:

1. its macro-F1 (eval's definition: calibrated score >= 0.5, categories with support in the file) is at
   least the current bundle's minus ``macro_f1_tolerance`` (default 0: no worse);
2. no category's average precision is significantly worse (paired bootstrap, 95% interval of the
   difference entirely below 0);
3. the share of harmful texts it lets pass is not significantly higher (same test).

The swap is atomic: the candidate is copied next to the target, the target is renamed to
``<target>.previous`` and the copy renamed into place; every verdict, promoted or not, is appended to
a JSONL record so there is an audit trail of what served when and why.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import load_bundle
from shenhe.models.policy import CATEGORY_SLUGS

from .compare import compare_runs
from .data import read_eval_file
from .errors import EvalDataError
from .scoring import Scored, load_predictor, score_texts


@dataclass(frozen=True)
class PromotionRule:
    macro_f1_tolerance: float = 0.0  # the candidate may be at most this much lower (0: no worse)
    forbid_category_regressions: bool = True  # any significantly worse average precision blocks promotion
    forbid_more_harmful_passed: bool = True  # a significantly higher share of harmful texts passed blocks it
    n_bootstrap: int = 1000
    seed: int = 0


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]  # why not (empty when promoted)
    candidate: dict[str, Any]
    current: dict[str, Any]
    data: dict[str, Any]
    rule: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _model_summary(run: Scored, macro: dict[str, Any], bundle: Path) -> dict[str, Any]:
    return {"bundle": str(bundle), "name": run.name, "version": run.version, "policy_version": run.policy_version,
            "macro_f1": macro}


def judge(y_true: np.ndarray, candidate: Scored, current: Scored, rule: PromotionRule) -> tuple[bool, list[str], dict[str, Any]]:
    """The promotion decision on one labelled set: (promote, reasons against, the numbers behind it)."""
    if not y_true.any():
        raise EvalDataError("the evaluation set has no positive labels: it cannot show a model is no worse")
    cmp = compare_runs(y_true, candidate, current, n_boot=rule.n_bootstrap, seed=rule.seed)
    m = cmp["metrics"]
    reasons: list[str] = []
    macro = m["macro_f1"]
    if macro["this"] is None or macro["other"] is None:
        raise EvalDataError("macro-F1 is undefined on this evaluation set")
    if macro["this"] < macro["other"] - rule.macro_f1_tolerance:
        reasons.append(f"macro-F1 {macro['this']:.4f} < current {macro['other']:.4f}"
                       + (f" - tolerance {rule.macro_f1_tolerance:g}" if rule.macro_f1_tolerance else ""))
    worse = [s for s, v in cmp["per_category_verdict"].items() if v == "other"]
    if rule.forbid_category_regressions and worse:
        reasons.append("significantly lower average precision on " + ", ".join(worse))
    passed = m.get("decisions.passed_harmful")
    if rule.forbid_more_harmful_passed and passed and passed["better"] == "other":
        reasons.append(f"lets more harmful texts pass ({passed['this']:.2%} vs {passed['other']:.2%})")
    checks = {
        "macro_f1": macro,
        "passed_harmful": passed,
        "per_category": {
            slug: {"average_precision": m[f"category.{slug}.average_precision"],
                   "f1": m[f"category.{slug}.f1"], "verdict": cmp["per_category_verdict"][slug]}
            for slug in CATEGORY_SLUGS if cmp["per_category_verdict"][slug] is not None
        },
        "n_bootstrap": cmp["n_bootstrap"],
        "confidence": cmp["confidence"],
    }
    return not reasons, reasons, checks


def swap_in(candidate: Path, target: Path) -> Path:
    """Atomically make ``target`` a copy of ``candidate``; the old target is kept as ``<target>.previous``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.promote.", dir=target.parent))
    try:
        copy = stage / "bundle"
        shutil.copytree(candidate, copy)
        load_bundle(copy)  # hashes verified on the copy that will serve
        previous = target.with_name(target.name + ".previous")
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(target, previous)
        os.replace(copy, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def promote(candidate: Path, target: Path, data: Path, rule: PromotionRule | None = None,
            record: Path | None = None, dry_run: bool = False, threads: int | None = None,
            batch_size: int = 32, show_progress: bool = True) -> Verdict:
    """Score both bundles on ``data``, judge, append the verdict to ``record``, swap unless ``dry_run``."""
    rule = rule or PromotionRule()
    for label, path in (("candidate", candidate), ("current", target)):
        if not path.is_dir():
            raise EvalDataError(f"{label} bundle {path}: not a directory")
    if candidate.resolve() == target.resolve():
        raise EvalDataError(f"candidate and target are the same directory ({target})")
    evalset = read_eval_file(data)
    runs: dict[str, Scored] = {}
    for label, path in (("candidate", candidate), ("current", target)):
        predictor = load_predictor(path, None, threads)
        runs[label] = score_texts(predictor, evalset.texts, description=f"{label}: {evalset.n} texts",
                                  batch_size=batch_size, show_progress=show_progress)
    ok, reasons, checks = judge(evalset.y_true, runs["candidate"], runs["current"], rule)
    verdict = Verdict(
        promote=ok, reasons=reasons,
        candidate=_model_summary(runs["candidate"], checks["macro_f1"]["this"], candidate),
        current=_model_summary(runs["current"], checks["macro_f1"]["other"], target),
        data={"path": str(data), "n": evalset.n, "sha256": evalset.sha256},
        rule=asdict(rule), checks=checks,
    )
    if ok and not dry_run:
        swap_in(candidate, target)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "dry_run": dry_run,
                 "promoted": ok and not dry_run, **verdict.to_json()}
        with record.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return verdict
