"""Operating thresholds from dev, and the metrics reported for a model (numpy only).

Per trained category, on calibrated dev scores:
- ``block_threshold``: the lowest score at which dev precision is still >= the policy's block target
  (with at least ``min_block_support`` dev texts above it). None such: the category never auto-blocks.
- ``review_threshold``: the highest score at which dev recall reaches the review target.
Reported metrics use the same rules on any split: P/R/F1 at the block and review thresholds, and
F1 at a per-category threshold tuned for F1 on dev (``f1``: the number compared across models).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS, Policy

MIN_BLOCK_SUPPORT = 5
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

    def policy_update(self) -> dict[str, object]:
        if not self.trained:
            return {"trained": False}
        return {"trained": True, "block_threshold": self.block_threshold,
                "review_threshold": self.review_threshold, "auto_block": self.auto_block}


def _floor(x: float, digits: int = 6) -> float:
    """Round down, so a threshold read back from YAML still includes the dev score it came from."""
    q = 10 ** digits
    return math.floor(x * q) / q


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with true and false positives of ``score >= t``."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order] > 0
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # the last index of each run of equal scores
    return s[last], tp[last], fp[last]


def choose_operating_point(slug: str, scores: np.ndarray, labels: np.ndarray, block_precision: float,
                           review_recall: float, min_block_support: int = MIN_BLOCK_SUPPORT) -> OperatingPoint:
    positives = int((labels > 0).sum())
    if positives == 0:
        return OperatingPoint(slug, True, 0, UNREACHABLE_BLOCK, 0.5, False, 0.5,
                              "no dev positives: thresholds cannot be set, review only")
    thr, tp, fp = _curve(scores, labels)
    precision = tp / (tp + fp)
    recall = tp / positives
    ok = (precision >= block_precision) & ((tp + fp) >= min_block_support)
    note = ""
    if ok.any():
        block = _floor(float(thr[np.flatnonzero(ok)[-1]]))  # lowest qualifying threshold = most recall
        auto_block = True
    else:
        block, auto_block = UNREACHABLE_BLOCK, False
        note = f"dev precision never reaches {block_precision:.2f}: review only, never auto-blocks"
    reach = np.flatnonzero(recall >= review_recall)
    review = _floor(float(thr[reach[0]]))  # highest threshold reaching the recall target
    if review >= block:  # the block threshold already gives the recall: the review band is empty
        review = _floor(max(0.0, block - 1e-6))
        note = note or "block threshold already meets the review recall target"
    f1 = 2 * tp / (tp + fp + positives)
    f1_threshold = _floor(float(thr[int(np.argmax(f1))]))
    return OperatingPoint(slug, True, positives, block, review, auto_block, f1_threshold, note)


def choose_operating_points(probs: np.ndarray, labels: np.ndarray, trained: np.ndarray, policy: Policy,
                            min_block_support: int = MIN_BLOCK_SUPPORT) -> list[OperatingPoint]:
    t = policy.targets
    out: list[OperatingPoint] = []
    for c, slug in enumerate(CATEGORY_SLUGS):
        if not trained[c]:
            out.append(OperatingPoint(slug, False, int(labels[:, c].sum()), UNREACHABLE_BLOCK, 0.5, False, 0.5,
                                      "untrained: too few training rows; masked, never blocks"))
        else:
            out.append(choose_operating_point(slug, probs[:, c], labels[:, c], t.block_precision,
                                              t.review_recall, min_block_support))
    return out


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
    block_t = np.array([c.block_threshold for c in policy.categories])
    review_t = np.array([c.review_threshold for c in policy.categories])
    can_block = np.array([c.can_block for c in policy.categories]) & trained
    block = ((probs >= block_t) & can_block).any(axis=1)
    review = ((probs >= review_t) & trained).any(axis=1)
    return np.where(block, 2, np.where(review, 1, 0))
