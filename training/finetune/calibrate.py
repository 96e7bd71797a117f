"""Per-category calibration of raw logits, fitted on dev.

``platt``: a one-feature logistic regression on the logit, stored as temperature + bias
(``p = sigmoid(logit / T + b)``). ``isotonic``: a monotone step function, stored as points.
A category without both positives and negatives on dev keeps the identity (T = 1, b = 0).
"""

from __future__ import annotations

import numpy as np

from shenhe.models.bundle import CategoryCalibration
from shenhe.models.policy import CATEGORY_SLUGS

MAX_ISOTONIC_POINTS = 200


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> CategoryCalibration:
    from sklearn.linear_model import LogisticRegression

    y = labels.astype(int)
    if y.min() == y.max():
        return CategoryCalibration(method="platt")
    lr = LogisticRegression(C=1e4, max_iter=1000)  # ~unregularised: one slope, one intercept
    lr.fit(logits.reshape(-1, 1).astype(np.float64), y)
    slope = float(lr.coef_[0, 0])
    if slope <= 1e-6:  # the logit does not rank dev positives above negatives: keep the identity
        return CategoryCalibration(method="platt")
    return CategoryCalibration(method="platt", temperature=1.0 / slope, bias=float(lr.intercept_[0]))


def fit_isotonic(logits: np.ndarray, labels: np.ndarray) -> CategoryCalibration:
    from sklearn.isotonic import IsotonicRegression

    if labels.min() == labels.max():
        return CategoryCalibration(method="platt")
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(logits.astype(np.float64), labels.astype(np.float64))
    x, y = np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)
    if len(x) > MAX_ISOTONIC_POINTS:  # keep the bundle small; interpolation between kept points
        keep = np.unique(np.linspace(0, len(x) - 1, MAX_ISOTONIC_POINTS).round().astype(int))
        x, y = x[keep], y[keep]
    if len(x) < 2:
        return CategoryCalibration(method="platt")
    return CategoryCalibration(method="isotonic", x=tuple(map(float, x)), y=tuple(map(float, y)))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, trained: np.ndarray,
                    method: str = "platt") -> dict[str, CategoryCalibration]:
    """One calibration per trained category from text-level (max over windows) dev logits."""
    if method not in ("platt", "isotonic"):
        raise ValueError(f"calibration must be platt or isotonic, not {method!r}")
    fit = fit_isotonic if method == "isotonic" else fit_platt
    return {slug: fit(logits[:, c], labels[:, c]) for c, slug in enumerate(CATEGORY_SLUGS) if trained[c]}


def apply_calibration(logits: np.ndarray, calibration: dict[str, CategoryCalibration]) -> np.ndarray:
    """Calibrated probabilities [n, 9]; categories without calibration (untrained) are 0."""
    out = np.zeros(logits.shape, dtype=np.float64)
    for c, slug in enumerate(CATEGORY_SLUGS):
        if slug in calibration:
            out[:, c] = calibration[slug].apply(logits[:, c])
    return out
