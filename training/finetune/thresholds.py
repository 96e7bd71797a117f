"""Operating thresholds from dev, and the metrics reported for a model (numpy only).

Per trained category, on calibrated dev scores (the fit part of dev; ``holdout.jsonl`` is held apart):
- ``block_threshold``: the lowest score at which precision is still >= the policy's block target overall
  (with at least ``min_block_support`` texts above it) AND in every source (:func:`source_checks`: one with
  ``targets.min_source_positives`` positives must reach the target; one with many blocks must not be
  significantly below it): the worst source decides. None such: the category never auto-blocks (review
  only). :func:`gate_blocks` then checks the same on held-apart rows.
- ``review_threshold``: the highest score at which recall reaches the review target, raised where needed so
  that at most ``targets.review_load_cap`` of harmless texts (no label at all) reach it: the cap wins, and
  the point records the recall it leaves.
No threshold is below ``targets.min_threshold``.
Reported metrics use the same rules on any split: P/R/F1 at the block and review thresholds, and F1 at a
per-category threshold tuned for F1 on dev (``f1``: the number compared across models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import numpy as np

from shenhe.models.decision import Thresholds
from shenhe.models.policy import CATEGORY_SLUGS, Policy, Targets
from shenhe.models.stats import wilson_bounds

MIN_BLOCK_SUPPORT = 5
MIN_SOURCE_BLOCKS = 10  # from this many blocks, a source whose precision is significantly low fails
UNREACHABLE_BLOCK = 1.0


@dataclass(frozen=True)
class OperatingPoint:
    slug: str
    trained: bool
    dev_positives: int
    block_threshold: float
    review_threshold: float
    auto_block: bool
    f1_threshold: float
    note: str = ""
    review_recall: float | None = None  # recall on the fit data at the review threshold
    harmless_review_rate: float | None = None  # share of harmless fit texts at or above the review threshold
    review_capped: bool = False  # the review-load cap, not the recall target, set the review threshold
    # Per source with enough positives: block precision at the block threshold on the fit data.
    block_precision_by_source: dict[str, float] = field(default_factory=dict)

    def policy_update(self) -> dict[str, object]:
        if not self.trained:
            return {"trained": False}
        return {"trained": True, "block_threshold": self.block_threshold,
                "review_threshold": self.review_threshold, "auto_block": self.auto_block}


def _floor(x: float, digits: int = 6) -> float:
    """Round down, so a threshold read back from YAML still includes the dev score it came from."""
    q = 10 ** digits
    return math.floor(x * q) / q


def _above(x: float, digits: int = 6) -> float:
    """The smallest 6-digit value strictly above ``x``: a threshold that excludes the score it came from."""
    q = 10 ** digits
    return (math.floor(x * q) + 1) / q


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with true and false positives of ``score >= t``."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order] > 0
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # the last index of each run of equal scores
    return s[last], tp[last], fp[last]


def _count_at_or_above(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="left")


@dataclass(frozen=True)
class SourceCheck:
    """One source's blocks at each candidate threshold."""

    positives: int
    precision: np.ndarray  # 1.0 where nothing is flagged: a source with no blocks loses nothing
    flagged: np.ndarray
    fails: np.ndarray  # bool: this source breaks the block-precision target at that threshold

    def checked(self, at: int, min_positives: int) -> bool:
        return self.positives >= min_positives or int(self.flagged[at]) >= MIN_SOURCE_BLOCKS


def source_checks(scores: np.ndarray, labels: np.ndarray, sources: np.ndarray, thresholds: np.ndarray,
                  targets: Targets) -> dict[str, SourceCheck]:
    """Per source, whether blocking at each threshold keeps the precision target there. A source fails
    where it has >= ``targets.min_source_positives`` positives and its precision is below the target, or
    where it has >= :data:`MIN_SOURCE_BLOCKS` blocks whose precision is *significantly* below the target
    (95% Wilson upper bound): a source with few positives but many wrong blocks (true news blocked as rumour)
    must not be averaged away."""
    out: dict[str, SourceCheck] = {}
    y = labels > 0
    for src in sorted(set(sources.tolist())):
        m = sources == src
        tp = _count_at_or_above(np.sort(scores[m & y]), thresholds)
        fp = _count_at_or_above(np.sort(scores[m & ~y]), thresholds)
        flagged = tp + fp
        precision = np.where(flagged > 0, tp / np.maximum(flagged, 1), 1.0)
        positives = int(y[m].sum())
        _, upper = wilson_bounds(tp, flagged)
        fails = ((positives >= targets.min_source_positives) & (precision < targets.block_precision)) | \
                ((flagged >= MIN_SOURCE_BLOCKS) & (upper < targets.block_precision))
        out[src] = SourceCheck(positives, precision, flagged, fails)
    return out


def choose_operating_point(slug: str, scores: np.ndarray, labels: np.ndarray, targets: Targets,
                           harmless: np.ndarray | None = None, sources: Sequence[str] | None = None,
                           min_block_support: int = MIN_BLOCK_SUPPORT) -> OperatingPoint:
    positives = int((labels > 0).sum())
    if positives == 0:
        return OperatingPoint(slug, True, 0, UNREACHABLE_BLOCK, 0.5, False, 0.5,
                              "no dev positives: thresholds cannot be set, review only")
    thr, tp, fp = _curve(scores, labels)
    precision = tp / (tp + fp)
    recall = tp / positives
    floor = targets.min_threshold
    ok = (precision >= targets.block_precision) & ((tp + fp) >= min_block_support) & (thr >= floor)
    by_source = {} if sources is None else source_checks(scores, labels, np.asarray(sources), thr, targets)
    for check in by_source.values():
        ok &= ~check.fails
    notes: list[str] = []
    if ok.any():
        at = int(np.flatnonzero(ok)[-1])  # lowest qualifying threshold = most recall
        block, auto_block = _floor(float(thr[at])), True
        source_p = {src: round(float(c.precision[at]), 4) for src, c in by_source.items()
                    if c.checked(at, targets.min_source_positives)}
    else:
        block, auto_block, source_p = UNREACHABLE_BLOCK, False, {}
        worst = " in every source" if by_source else ""
        notes.append(f"dev precision never reaches {targets.block_precision:.2f}{worst}: review only, never auto-blocks")

    reach = np.flatnonzero(recall >= targets.review_recall)
    review = max(_floor(float(thr[reach[0]])), floor)  # highest threshold reaching the recall target
    capped = False
    rate: float | None = None
    if harmless is not None and harmless.any():
        hs = np.sort(scores[harmless])[::-1]
        allowed = int(math.floor(targets.review_load_cap * len(hs)))
        if allowed < len(hs) and hs[allowed] >= review:  # too many harmless texts would reach the threshold
            review, capped = _above(float(hs[allowed])), True
        rate = round(float(np.mean(hs >= review)), 4)
    if review >= block:  # the block threshold already gives the recall: the review band is empty
        review = _floor(max(0.0, block - 1e-6))
        if not notes:
            notes.append("block threshold already meets the review recall target")
    reached = round(float(((scores >= review) & (labels > 0)).sum() / positives), 4)
    if capped:
        notes.append(f"review-load cap {targets.review_load_cap:.0%} of harmless texts wins: review recall "
                     f"{reached:.3f} (target {targets.review_recall:.2f})")
    f1 = 2 * tp / (tp + fp + positives)
    f1_threshold = _floor(float(thr[int(np.argmax(f1))]))
    return OperatingPoint(slug, True, positives, block, review, auto_block, f1_threshold, "; ".join(notes),
                          reached, rate, capped, source_p)


def choose_operating_points(probs: np.ndarray, labels: np.ndarray, trained: np.ndarray, policy: Policy,
                            sources: Sequence[str] | None = None,
                            min_block_support: int = MIN_BLOCK_SUPPORT) -> list[OperatingPoint]:
    harmless = ~cast(np.ndarray, (labels > 0).any(axis=1))
    out: list[OperatingPoint] = []
    for c, slug in enumerate(CATEGORY_SLUGS):
        if not trained[c]:
            out.append(OperatingPoint(slug, False, int(labels[:, c].sum()), UNREACHABLE_BLOCK, 0.5, False, 0.5,
                                      "untrained: too few training rows; masked, never blocks"))
        else:
            out.append(choose_operating_point(slug, probs[:, c], labels[:, c], policy.targets, harmless, sources,
                                              min_block_support))
    return out


def gate_blocks(points: list[OperatingPoint], probs: np.ndarray, labels: np.ndarray, sources: Sequence[str],
                targets: Targets) -> tuple[list[OperatingPoint], dict[str, Any]]:
    """A category keeps auto-block only if, on held-apart rows, its block threshold keeps the block precision
    in every source with >= ``targets.min_source_positives`` positives there, and at least one source has
    that many (no evidence: review only). Returns the points (review-only
    where it fails) and what was measured, per category and source."""
    src = np.asarray(sources)
    report: dict[str, Any] = {}
    out: list[OperatingPoint] = []
    for c, p in enumerate(points):
        if not (p.trained and p.auto_block):
            out.append(p)
            continue
        checks = source_checks(probs[:, c], labels[:, c], src, np.array([p.block_threshold]), targets)
        rows = {s: {"precision": round(float(k.precision[0]), 4), "blocked": int(k.flagged[0]),
                    "positives": k.positives} for s, k in checks.items() if k.checked(0, targets.min_source_positives)}
        failed = sorted(s for s, k in checks.items() if k.fails[0])
        # No source with enough positives: nothing shows the block precision holds on new data, so the
        # category does not auto-block (principle 6: a wrong block is the most expensive error).
        unproven = not rows
        report[p.slug] = {"sources": rows, "auto_block": not failed and not unproven}
        if unproven:
            note = (f"no held-apart source with >= {targets.min_source_positives} positives to check its block "
                    "precision: review only, never auto-blocks")
            out.append(replace(p, auto_block=False, note="; ".join(filter(None, [p.note, note]))))
        elif failed:
            worst = min(failed, key=lambda s: rows[s]["precision"])
            note = (f"held-apart block precision {rows[worst]['precision']:.3f} < {targets.block_precision:.2f} "
                    f"on {worst}: review only, never auto-blocks")
            out.append(replace(p, auto_block=False, note="; ".join(filter(None, [p.note, note]))))
        else:
            out.append(p)
    return out, report


def apply_operating_points(policy: Policy, points: list[OperatingPoint], version: str | None = None) -> Policy:
    return policy.with_updates({p.slug: p.policy_update() for p in points}, version=version)


# -- metrics ---------------------------------------------------------------------------------------------


def prf(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    y = labels > 0
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "rate": round(float(pred.mean()), 4)}


def split_metrics(probs: np.ndarray, labels: np.ndarray, points: list[OperatingPoint]) -> dict[str, Any]:
    """Per-category P/R/F1 at the F1, block and review thresholds; macro averages over trained categories."""
    per: dict[str, Any] = {}
    trained = [p for p in points if p.trained]
    for c, p in enumerate(points):
        if not p.trained:
            per[p.slug] = {"trained": False, "support": int(labels[:, c].sum())}
            continue
        s = probs[:, c]
        per[p.slug] = {
            "trained": True,
            "support": int(labels[:, c].sum()),
            "f1": prf(s >= p.f1_threshold, labels[:, c]),
            "block": prf(s >= p.block_threshold, labels[:, c]) if p.auto_block else None,
            "review": prf(s >= p.review_threshold, labels[:, c]),
        }

    # F1 is undefined for a category with no positives in this split: such categories are left out of
    # the macro average (and listed), rather than counted as 0.
    scored = [p for p in trained if per[p.slug]["support"] > 0]

    def macro(key: str) -> float:
        vals = [per[p.slug][key]["f1"] if per[p.slug][key] else 0.0 for p in scored]
        return round(float(np.mean(vals)), 4) if vals else 0.0

    return {
        "n": int(len(labels)),
        "macro_f1": macro("f1"),
        "macro_f1_review": macro("review"),
        "macro_over": [p.slug for p in scored],
        "no_positives": [p.slug for p in trained if per[p.slug]["support"] == 0],
        "per_category": per,
    }


def best_f1_macro(logits: np.ndarray, labels: np.ndarray, trained: np.ndarray) -> float:
    """Macro-F1 over trained categories at each category's best threshold (model selection in training)."""
    vals = []
    for c in range(len(CATEGORY_SLUGS)):
        if not trained[c]:
            continue
        positives = int(labels[:, c].sum())
        if positives == 0:
            continue
        _, tp, fp = _curve(logits[:, c], labels[:, c])
        vals.append(float(np.max(2 * tp / (tp + fp + positives))))
    return float(np.mean(vals)) if vals else 0.0


def points_as_dicts(points: list[OperatingPoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def decisions(probs: np.ndarray, policy: Policy, trained: np.ndarray) -> np.ndarray:
    """The model-only decision per text (0 pass, 1 review, 2 block), as the predictor takes it."""
    return Thresholds.from_policy(policy, trained).decide(probs)
