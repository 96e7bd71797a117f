"""How a quantised model is judged at export: its quality against fp32, each with its own calibration and
thresholds fit on its own dev scores (the way each would ship).

The gate: at most :data:`MAX_DROP` of macro-F1 and of each trained category's average precision lost
against fp32, on dev and on test (categories without positives in a split are skipped there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS, Policy
from shenhe.training.finetune.calibrate import apply_calibration, fit_calibration
from shenhe.training.finetune.dataset import Split
from shenhe.training.finetune.thresholds import (
    OperatingPoint,
    apply_operating_points,
    choose_operating_points,
    split_metrics,
)

MAX_DROP = 0.005


@dataclass
class Judged:
    """One model's scores turned into a shippable policy, and its quality on dev and test."""

    calibration: dict[str, Any]
    points: list[OperatingPoint]
    policy: Policy
    dev_probs: np.ndarray
    dev_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    ap: dict[str, dict[str, float]]  # split -> category -> average precision

    def summary(self) -> dict[str, Any]:
        return {"dev_macro_f1": self.dev_metrics["macro_f1"],
                "test_macro_f1": None if self.test_metrics is None else self.test_metrics["macro_f1"],
                "average_precision": self.ap}


def average_precision(probs: np.ndarray, labels: np.ndarray, trained: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    return {slug: round(float(average_precision_score(labels[:, c], probs[:, c])), 4)
            for c, slug in enumerate(CATEGORY_SLUGS) if trained[c] and labels[:, c].any()}


def judge(dev_logits: np.ndarray, test_logits: np.ndarray | None, dev: Split, test: Split | None,
          trained: np.ndarray, method: str, base_policy: Policy, version_tag: str) -> Judged:
    calibration = fit_calibration(dev_logits, dev.labels, trained, method)
    dev_probs = apply_calibration(dev_logits, calibration)
    points = choose_operating_points(dev_probs, dev.labels, trained, base_policy)
    policy = apply_operating_points(base_policy, points, version=f"{base_policy.version}+{version_tag}")
    ap = {"dev": average_precision(dev_probs, dev.labels, trained)}
    test_metrics = None
    if test is not None and test_logits is not None:
        test_probs = apply_calibration(test_logits, calibration)
        test_metrics = split_metrics(test_probs, test.labels, points)
        ap["test"] = average_precision(test_probs, test.labels, trained)
    return Judged(calibration, points, policy, dev_probs, split_metrics(dev_probs, dev.labels, points), test_metrics, ap)


def quality_drops(reference: Judged, candidate: Judged) -> dict[str, dict[str, float]]:
    """Per split, how much the candidate loses against the reference (positive = worse), rounded to 1e-4."""
    out: dict[str, dict[str, float]] = {}
    for split, ref_metrics, cand_metrics in (("dev", reference.dev_metrics, candidate.dev_metrics),
                                             ("test", reference.test_metrics, candidate.test_metrics)):
        if ref_metrics is None or cand_metrics is None:
            continue
        drops = {"macro_f1": round(ref_metrics["macro_f1"] - cand_metrics["macro_f1"], 4)}
        for slug, ap in reference.ap.get(split, {}).items():
            drops[f"ap_{slug}"] = round(ap - candidate.ap[split][slug], 4)
        out[split] = drops
    return out


def quality_failures(drops: dict[str, dict[str, float]], limit: float = MAX_DROP) -> list[str]:
    return [f"{split} {what.replace('ap_', 'average precision of ')} drops {100 * d:.2f} points "
            f"> {100 * limit:g} against fp32"
            for split, per in drops.items() for what, d in per.items() if d > limit]


def worst_drop(drops: dict[str, dict[str, float]]) -> float:
    return max((d for per in drops.values() for d in per.values()), default=0.0)
