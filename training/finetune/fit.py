"""Calibrate → thresholds → metrics: the one step that turns a model's dev scores into a shippable policy.

Training (``shenhe train``, both architectures), the quantisation judge and ``shenhe export`` all go through
:func:`judge`; ``shenhe export`` then applies :func:`gate_on_heldout` with the held-apart rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS, Policy
from shenhe.training.finetune.calibrate import CategoryCalibration, apply_calibration, fit_calibration
from shenhe.training.finetune.dataset import Split
from shenhe.training.finetune.thresholds import (
    OperatingPoint,
    apply_operating_points,
    choose_operating_points,
    gate_blocks,
    split_metrics,
)


@dataclass
class Judged:
    """One model's scores turned into a shippable policy, and its quality on dev and test."""

    calibration: dict[str, CategoryCalibration]
    points: list[OperatingPoint]
    policy: Policy
    dev_probs: np.ndarray
    dev_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    ap: dict[str, dict[str, float]]  # split -> category -> average precision
    test_probs: np.ndarray | None = None
    block_gate: dict[str, Any] | None = None  # gate_on_heldout's measurements

    def summary(self) -> dict[str, Any]:
        return {"dev_macro_f1": self.dev_metrics["macro_f1"],
                "test_macro_f1": None if self.test_metrics is None else self.test_metrics["macro_f1"],
                "average_precision": self.ap}


def average_precision(probs: np.ndarray, labels: np.ndarray, trained: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    return {slug: round(float(average_precision_score(labels[:, c], probs[:, c])), 4)
            for c, slug in enumerate(CATEGORY_SLUGS) if trained[c] and labels[:, c].any()}


def _policy(base_policy: Policy, points: list[OperatingPoint], version_tag: str | None) -> Policy:
    return apply_operating_points(base_policy, points,
                                  version=None if version_tag is None else f"{base_policy.version}+{version_tag}")


def judge(dev_logits: np.ndarray, test_logits: np.ndarray | None, dev: Split, test: Split | None,
          trained: np.ndarray, method: str, base_policy: Policy, version_tag: str | None = None) -> Judged:
    """Fit calibration and thresholds on ``dev`` (per source, see thresholds.py) and measure dev and test."""
    calibration = fit_calibration(dev_logits, dev.labels, trained, method)
    dev_probs = apply_calibration(dev_logits, calibration)
    points = choose_operating_points(dev_probs, dev.labels, trained, base_policy, dev.sources)
    ap = {"dev": average_precision(dev_probs, dev.labels, trained)}
    test_metrics = test_probs = None
    if test is not None and test_logits is not None:
        test_probs = apply_calibration(test_logits, calibration)
        test_metrics = split_metrics(test_probs, test.labels, points)
        ap["test"] = average_precision(test_probs, test.labels, trained)
    return Judged(calibration, points, _policy(base_policy, points, version_tag), dev_probs,
                  split_metrics(dev_probs, dev.labels, points), test_metrics, ap, test_probs)


def gate_on_heldout(judged: Judged, heldout_logits: np.ndarray, heldout: Split, dev: Split, test: Split | None,
                    base_policy: Policy, version_tag: str | None = None) -> Judged:
    """Turn auto-block off for every category whose block precision fails on a held-apart source
    (:func:`~shenhe.training.finetune.thresholds.gate_blocks`); the metrics follow the new points."""
    probs = apply_calibration(heldout_logits, judged.calibration)
    points, measured = gate_blocks(judged.points, probs, heldout.labels, heldout.sources, base_policy.targets)
    test_metrics = judged.test_metrics
    if test is not None and judged.test_probs is not None:
        test_metrics = split_metrics(judged.test_probs, test.labels, points)
    return replace(judged, points=points, policy=_policy(base_policy, points, version_tag),
                   dev_metrics=split_metrics(judged.dev_probs, dev.labels, points), test_metrics=test_metrics,
                   block_gate={"split": heldout.name, "texts": len(heldout), "categories": measured})
