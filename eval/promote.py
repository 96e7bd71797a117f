"""`shenhe promote`: replace the serving bundle with a candidate only when it is no worse on a fixed set.

The fixed set is one or more labelled files (e.g. the corpus test split and the held-apart rows of
``data/build/holdout.jsonl``, whose COLD part no threshold was fit on). Both bundles score every file,
and each file is judged on its own; the candidate must pass on every file:

1. its macro-F1 (eval's definition: calibrated score >= 0.5, categories with support in the file) is at
   least the current bundle's minus ``macro_f1_tolerance`` (default 0: no worse);
2. no category's average precision is significantly worse (paired bootstrap, 95% interval of the
   difference entirely below 0);
3. the share of harmful texts it lets pass is not significantly higher (same test) *at the current
   bundle's operating point*: when the candidate passes more harmful texts but also flags fewer harmless
   ones (a stricter review-load cap in its policy, say), its thresholds are scaled together until it flags
   the same share of harmless texts as the current bundle, and it is refused only if it still lets
   significantly more harmful texts pass there. Otherwise the difference is the operating point, which is
   policy (reported under ``passed_harmful_matched``), not a worse model.

With ``perturb_kinds``, a seeded sample of the first file's rows is also rewritten by each obfuscation
(``eval/perturb.py``, the same copies for both bundles) and, per kind, the candidate must not have a
significantly lower harmful-vs-not accuracy of its decisions (review or block = flagged: what serving
does, with each bundle's own thresholds; not eval's score >= 0.5 accuracy) nor a significantly higher
share of harmless texts flagged, than the current bundle on the same copies.

Per source (files with ``source``): for each category the candidate may auto-block, block precision on
every source with at least ``MIN_POSITIVES`` positives of it, candidate vs current, paired bootstrap.
This is reported, not applied, unless ``forbid_block_precision_regressions`` is set, because as a gate it
is too strict to be useful: test.jsonl + holdout.jsonl have about 20 such (category, source) cells, and each
test calls an equally good candidate "significantly worse" 2.5% of the time, so about 40% of such candidates
(1 - 0.975^20, were the cells independent) would be refused by chance; and a candidate whose new thresholds
trade a little block precision for much more blocked harm, still above the policy's target, is not worse.

The swap is atomic: the candidate is copied next to the target, the target is renamed to
``<target>.previous`` and the copy renamed into place; every verdict, promoted or not, is appended to
a JSONL record so there is an audit trail of what served when and why. The record keeps the one-file
fields (``data``, ``checks``, ``macro_f1`` of the first file) and adds ``sets`` (one entry per file) and
``perturbation``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import load_bundle
from shenhe.models.policy import CATEGORY_SLUGS

from .compare import bootstrap_weights, compare_runs, paired_difference
from .data import EvalSet, read_eval_file
from .errors import EvalDataError
from .metrics import PASS, nan_to_none, ones_weights
from .perturb import PERTURBATIONS, perturb_texts
from .scoring import Scored, load_predictor, score_texts
from .sources import MIN_POSITIVES


@dataclass(frozen=True)
class PromotionRule:
    macro_f1_tolerance: float = 0.0  # the candidate may be at most this much lower (0: no worse)
    forbid_category_regressions: bool = True  # any significantly worse average precision blocks promotion
    forbid_more_harmful_passed: bool = True  # a significantly higher share of harmful texts passed blocks it
    n_bootstrap: int = 1000
    seed: int = 0
    # Reported, not applied, by default: see the module docstring for why.
    forbid_block_precision_regressions: bool = False
    perturb_kinds: tuple[str, ...] = ()  # obfuscations judged on copies of the first file (none: no check)
    perturb_sample: int = 3000  # rows of the first file copied per obfuscation (seeded sample)


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]  # why not (empty when promoted)
    candidate: dict[str, Any]
    current: dict[str, Any]
    data: dict[str, Any]
    rule: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)  # the first file's, as in one-file records
    sets: list[dict[str, Any]] = field(default_factory=list)  # per file: data, promote, reasons, checks
    perturbation: dict[str, Any] | None = None  # per obfuscation kind, with perturb_kinds

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
    matched = None
    if passed and passed["better"] == "other":
        matched = passed_harmful_matched(y_true, candidate, current, rule)
    if rule.forbid_more_harmful_passed and matched is not None and matched["better"] == "other":
        reasons.append(f"lets more harmful texts pass ({passed['this']:.2%} vs {passed['other']:.2%}; "
                       f"{matched['this']:.2%} vs {matched['other']:.2%} at the current bundle's harmless flag rate)")
    checks = {
        "macro_f1": macro,
        "passed_harmful": passed,
        "passed_harmful_matched": matched,
        "per_category": {
            slug: {"average_precision": m[f"category.{slug}.average_precision"],
                   "f1": m[f"category.{slug}.f1"], "verdict": cmp["per_category_verdict"][slug]}
            for slug in CATEGORY_SLUGS if cmp["per_category_verdict"][slug] is not None
        },
        "n_bootstrap": cmp["n_bootstrap"],
        "confidence": cmp["confidence"],
    }
    return not reasons, reasons, checks


def flag_margin(run: Scored) -> np.ndarray:
    """Per text, its highest score over the threshold that would flag it (review, or block where the
    category may block): >= 1 means the scores flag it. A text flagged by a word-list match is +inf (it
    stays flagged whatever the thresholds)."""
    th = run.thresholds
    flag_at = np.where(th.reviewable, th.review, np.inf)
    flag_at = np.where(th.can_block, np.minimum(flag_at, th.block), flag_at)
    usable = np.isfinite(flag_at) & (flag_at > 0)
    margin = np.zeros(len(run.scores))
    if usable.any():
        margin = (run.scores[:, usable] / flag_at[usable]).max(axis=1)
    return np.where(run.term_review, np.inf, margin)


def passed_harmful_matched(y_true: np.ndarray, candidate: Scored, current: Scored,
                           rule: PromotionRule) -> dict[str, Any]:
    """The share of passed texts that are harmful, the candidate's with all its flag thresholds scaled by
    one factor so that it flags the same share of harmless texts as the current bundle does with its own,
    against the current bundle's; paired bootstrap with the factor fixed (``scale``: the factor)."""
    harmful = y_true.any(axis=1)
    current_rate = float((current.decisions[~harmful] != PASS).mean()) if (~harmful).any() else 0.0
    margin = flag_margin(candidate)
    harmless_margin = np.sort(margin[~harmful])
    # the smallest scale that flags at most current_rate of the harmless texts (inf: only word-list matches)
    n, k = len(harmless_margin), int(np.floor(current_rate * len(harmless_margin)))
    if n == 0:
        scale = 1.0
    elif k >= n:
        scale = float(harmless_margin[0])
    else:
        scale = float(np.nextafter(harmless_margin[-k - 1], np.inf))
    passed = [margin < scale, current.decisions == PASS]
    W = bootstrap_weights(len(y_true), rule.n_bootstrap, rule.seed)
    one = ones_weights(len(y_true))
    values = [(_ratio(one @ (p & harmful), one @ p)[0], _ratio(W @ (p & harmful), W @ p)) for p in passed]
    cell = paired_difference(values[0][0], values[1][0], values[0][1], values[1][1], -1)
    return {**cell, "scale": scale if np.isfinite(scale) else None, "harmless_flagged": current_rate}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _source_names(sources: Sequence[str | None]) -> np.ndarray:
    return np.array([s if s is not None else "(none)" for s in sources])


def judge_block_precision(y_true: np.ndarray, sources: Sequence[str | None], candidate: Scored, current: Scored,
                          rule: PromotionRule) -> tuple[list[str], list[dict[str, Any]]]:
    """Per category the candidate may auto-block and per source with >= MIN_POSITIVES positives of it: block
    precision (texts its block threshold blocks that carry the category) of both bundles, paired bootstrap
    over the file's texts. Reasons only with ``rule.forbid_block_precision_regressions``."""
    src = _source_names(sources)
    W = bootstrap_weights(len(y_true), rule.n_bootstrap, rule.seed)
    one = ones_weights(len(y_true))
    reasons: list[str] = []
    rows: list[dict[str, Any]] = []
    for j, slug in enumerate(CATEGORY_SLUGS):
        if not candidate.thresholds.can_block[j]:
            continue
        truth = y_true[:, j]
        blocked = [(run.scores[:, j] >= run.thresholds.block[j]) & bool(run.thresholds.can_block[j])
                   for run in (candidate, current)]
        for name in sorted(set(src.tolist())):
            m = src == name
            positives = int((truth & m).sum())
            if positives < MIN_POSITIVES:
                continue
            hits = [b & m for b in blocked]
            prec = [(_ratio(one @ (h & truth), one @ h)[0], _ratio(W @ (h & truth), W @ h)) for h in hits]
            cell = paired_difference(prec[0][0], prec[1][0], prec[0][1], prec[1][1], 1)
            rows.append({"category": slug, "source": name, "positives": positives,
                         "blocked": {"candidate": int(hits[0].sum()), "current": int(hits[1].sum())}, **cell})
            if rule.forbid_block_precision_regressions and cell["better"] == "other":
                reasons.append(f"lower block precision for {slug} on source {name} "
                               f"({cell['this']:.2%} vs {cell['other']:.2%})")
    return reasons, rows


def _flag_metrics(y_true: np.ndarray, decisions: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Harmful-vs-not accuracy of the decisions (review or block = flagged) and the harmless flag rate."""
    harmful = y_true.any(axis=1)
    flagged = decisions != PASS
    return {"flag_accuracy": _ratio(W @ (flagged == harmful), W.sum(axis=1)),
            "harmless_flagged": _ratio(W @ (flagged & ~harmful), W @ ~harmful)}


def judge_perturbed(y_true: np.ndarray, candidate: Scored, current: Scored,
                    perturbed: dict[str, tuple[np.ndarray, Scored, Scored]],
                    rule: PromotionRule) -> tuple[list[str], dict[str, Any]]:
    """``candidate``/``current``: both bundles on the plain sample; ``perturbed``: kind -> (changed mask,
    candidate, current) on its copies. Per kind, the candidate must not have a significantly lower
    accuracy nor a significantly higher harmless flag rate on the copies (paired bootstrap over texts)."""
    n = len(y_true)
    W, one = bootstrap_weights(n, rule.n_bootstrap, rule.seed), ones_weights(n)
    plain = {label: _flag_metrics(y_true, run.decisions, one) for label, run in
             (("candidate", candidate), ("current", current))}
    reasons: list[str] = []
    kinds: dict[str, Any] = {}
    for kind, (changed, cand, cur) in perturbed.items():
        point = [_flag_metrics(y_true, r.decisions, one) for r in (cand, cur)]
        boot = [_flag_metrics(y_true, r.decisions, W) for r in (cand, cur)]
        entry: dict[str, Any] = {"description": PERTURBATIONS[kind].description,
                                 "changed_share": float(changed.mean())}
        for key, sign in (("flag_accuracy", 1), ("harmless_flagged", -1)):
            cmp = paired_difference(point[0][key][0], point[1][key][0], boot[0][key], boot[1][key], sign)
            entry[key] = {
                "plain": {label: nan_to_none(plain[label][key][0]) for label in plain},
                "perturbed": cmp,
            }
        acc, fp = entry["flag_accuracy"]["perturbed"], entry["harmless_flagged"]["perturbed"]
        if acc["better"] == "other":
            reasons.append(f"{kind} copies: harmful-vs-not accuracy {acc['this']:.2%} < current {acc['other']:.2%}")
        if fp["better"] == "other":
            reasons.append(f"{kind} copies: flags more harmless texts ({fp['this']:.2%} vs {fp['other']:.2%})")
        kinds[kind] = entry
    harmful = y_true.any(axis=1)
    return reasons, {"n": n, "harmful": int(harmful.sum()), "harmless": int((~harmful).sum()),
                     "n_bootstrap": rule.n_bootstrap, "kinds": kinds}


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


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    """The rows copied for the perturbation check (eval --perturb's seeded draw)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed + 1).choice(n, size, replace=False))


def _check_inputs(candidate: Path, target: Path, paths: list[Path], rule: PromotionRule) -> None:
    for label, path in (("candidate", candidate), ("current", target)):
        if not path.is_dir():
            raise EvalDataError(f"{label} bundle {path}: not a directory")
    if candidate.resolve() == target.resolve():
        raise EvalDataError(f"candidate and target are the same directory ({target})")
    if not paths:
        raise EvalDataError("no evaluation data: give --data at least once")
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise EvalDataError(f"--data {path} given twice")
        seen.add(path.resolve())
    unknown = [k for k in rule.perturb_kinds if k not in PERTURBATIONS]
    if unknown:
        raise EvalDataError(f"unknown perturbation {unknown[0]!r}; expected one of {', '.join(PERTURBATIONS)}")
    if rule.perturb_kinds and rule.perturb_sample < 1:
        raise EvalDataError(f"--perturb-sample must be at least 1, got {rule.perturb_sample}")


def promote(candidate: Path, target: Path, data: Path | Sequence[Path], rule: PromotionRule | None = None,
            record: Path | None = None, dry_run: bool = False, threads: int | None = None,
            batch_size: int = 32, show_progress: bool = True) -> Verdict:
    """Score both bundles on every file of ``data`` (and the perturbed copies), judge each, append the
    verdict to ``record``, swap unless ``dry_run``."""
    rule = rule or PromotionRule()
    paths = [Path(data)] if isinstance(data, str | Path) else [Path(p) for p in data]
    _check_inputs(candidate, target, paths, rule)
    evalsets = [read_eval_file(p) for p in paths]  # bad data fails before any model loads
    first = evalsets[0]
    idx = _sample(first.n, rule.perturb_sample, rule.seed)
    copies = {kind: perturb_texts([first.texts[i] for i in idx], kind, seed=rule.seed) for kind in rule.perturb_kinds}

    runs: dict[str, list[Scored]] = {}
    perturbed_runs: dict[str, dict[str, Scored]] = {}
    for label, path in (("candidate", candidate), ("current", target)):
        predictor = load_predictor(path, None, threads)
        runs[label] = [score_texts(predictor, es.texts, description=f"{label}: {es.path.name} ({es.n} texts)",
                                   batch_size=batch_size, show_progress=show_progress) for es in evalsets]
        perturbed_runs[label] = {
            kind: score_texts(predictor, texts, description=f"{label}: {kind} copies ({len(texts)} texts)",
                              batch_size=batch_size, show_progress=show_progress)
            for kind, texts in copies.items()}

    sets = [_judge_set(es, cand, cur, rule, prefix=len(evalsets) > 1)
            for es, cand, cur in zip(evalsets, runs["candidate"], runs["current"], strict=True)]
    reasons = [r for entry in sets for r in entry["reasons"]]
    perturbation: dict[str, Any] | None = None
    if copies:
        plain = first.subset(idx)
        changed = {kind: np.array([a != b for a, b in zip(texts, plain.texts, strict=True)])
                   for kind, texts in copies.items()}
        p_reasons, perturbation = judge_perturbed(
            plain.y_true, runs["candidate"][0].subset(idx), runs["current"][0].subset(idx),
            {kind: (changed[kind], perturbed_runs["candidate"][kind], perturbed_runs["current"][kind])
             for kind in copies}, rule)
        perturbation = {"data": str(first.path), "population": first.n, "seed": rule.seed, **perturbation}
        reasons += p_reasons
    ok = not reasons
    head = sets[0]
    verdict = Verdict(
        promote=ok, reasons=reasons,
        candidate=_model_summary(runs["candidate"][0], head["checks"]["macro_f1"]["this"], candidate),
        current=_model_summary(runs["current"][0], head["checks"]["macro_f1"]["other"], target),
        data=head["data"], rule=asdict(rule), checks=head["checks"], sets=sets, perturbation=perturbation,
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


def _judge_set(evalset: EvalSet, candidate: Scored, current: Scored, rule: PromotionRule,
               prefix: bool) -> dict[str, Any]:
    """One file's verdict; with ``prefix`` (several files) each reason starts with the file's path."""
    ok, reasons, checks = judge(evalset.y_true, candidate, current, rule)
    if evalset.has_sources:
        bp_reasons, checks["block_precision"] = judge_block_precision(
            evalset.y_true, evalset.sources, candidate, current, rule)
        reasons += bp_reasons
    if prefix:
        reasons = [f"{evalset.path}: {r}" for r in reasons]
    return {"data": {"path": str(evalset.path), "n": evalset.n, "sha256": evalset.sha256},
            "promote": not reasons, "reasons": reasons, "checks": checks}
