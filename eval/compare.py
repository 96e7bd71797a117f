"""Compare two models on the same texts with a paired bootstrap.

Each resample draws n texts with replacement (multinomial counts used as weights) and computes
every metric for both models on that same resample, so the interval of the difference accounts
for the texts being shared. The 95% interval is the 2.5th-97.5th percentile of the differences.
A difference whose interval excludes 0 is called significant; the per-category verdict uses
average precision (threshold-free, so it does not depend on each bundle's chosen thresholds).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

from .metrics import (
    SLICE_DECISION_KEYS,
    binary_metrics,
    decision_metrics,
    flat_metrics,
    nan_to_none,
    ones_weights,
)
from .scoring import Scored

CONFIDENCE = 0.95
VERDICT_METRIC = "average_precision"

# +1: higher is better, -1: lower is better, 0: a cost/volume share, no better or worse.
_LOWER_IS_BETTER = ("ece", "decisions.passed_harmful", "decisions.harmful_missed")
_NO_DIRECTION = ("decisions.pass", "decisions.review", "decisions.block")


def direction(key: str) -> int:
    if key in _NO_DIRECTION:
        return 0
    if key.endswith(".ece") or key in _LOWER_IS_BETTER:
        return -1
    return 1


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def _verdict(diff: float | None, lo: float | None, hi: float | None, sign: int) -> str | None:
    """'this', 'other' or 'no significant difference' (None for metrics without a direction)."""
    if sign == 0 or diff is None or lo is None or hi is None:
        return None
    if lo > 0 or hi < 0:
        return "this" if diff * sign > 0 else "other"
    return "no significant difference"


def paired_difference(this: float, other: float, boot_this: np.ndarray, boot_other: np.ndarray,
                      sign: int) -> dict[str, Any]:
    """One metric of two models: both point values, the difference (this - other), its 95% interval from
    the paired resamples (``boot_*``: one value per resample, NaN where undefined) and the verdict
    (``sign``: +1 higher is better, -1 lower is better, 0 no direction)."""
    a, b = nan_to_none(this), nan_to_none(other)
    d = boot_this - boot_other
    d = d[~np.isnan(d)]
    diff = None if a is None or b is None else a - b
    lo = hi = None
    if diff is not None and len(d) >= max(10, len(boot_this) // 2):  # too many undefined resamples: no interval
        alpha = (1 - CONFIDENCE) / 2
        lo, hi = (float(x) for x in np.quantile(d, [alpha, 1 - alpha]))
    return {"this": a, "other": b, "diff": diff, "ci": None if lo is None else [lo, hi],
            "better": _verdict(diff, lo, hi, sign)}


def compare_runs(y_true: np.ndarray, this: Scored, other: Scored, *, n_boot: int = 1000, seed: int = 0,
                 slices: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Both models' numbers, the difference (this - other) and its paired-bootstrap 95% interval.

    ``slices``: name -> bool mask; their binary metrics are compared under ``<name>.binary.<metric>``
    on the same resamples (a resample's slice is the slice's texts it drew)."""
    n = len(y_true)
    macro_over = cast(np.ndarray, y_true.any(axis=0))

    def flat(run: Scored, W: np.ndarray) -> dict[str, np.ndarray]:
        out = flat_metrics(y_true, run.scores, W, decisions=run.decisions, thresholds=run.thresholds,
                           macro_over=macro_over)
        for name, mask in (slices or {}).items():
            idx = np.flatnonzero(mask)
            part = binary_metrics(y_true[idx], run.scores[idx], W[:, idx])
            out.update({f"{name}.binary.{k}": v for k, v in part.items()})
            dec = decision_metrics(y_true[idx], run.decisions[idx], W[:, idx])
            out.update({f"{name}.decisions.{k}": dec[k] for k in SLICE_DECISION_KEYS})
        return out

    point_a, point_b = flat(this, ones_weights(n)), flat(other, ones_weights(n))
    W = bootstrap_weights(n, n_boot, seed)
    boot_a, boot_b = flat(this, W), flat(other, W)
    metrics = {key: paired_difference(point_a[key][0], point_b[key][0], boot_a[key], boot_b[key], direction(key))
               for key in point_a}
    verdicts = {slug: metrics[f"category.{slug}.{VERDICT_METRIC}"]["better"] for slug in CATEGORY_SLUGS}
    return {
        "this": {"name": this.name, "version": this.version, "policy_version": this.policy_version},
        "other": {"name": other.name, "version": other.version, "policy_version": other.policy_version},
        "n_bootstrap": n_boot,
        "seed": seed,
        "confidence": CONFIDENCE,
        "verdict_metric": VERDICT_METRIC,
        "per_category_verdict": verdicts,
        "metrics": metrics,
    }
