"""Evaluation metrics on plain arrays (numpy only).

Inputs: ``y_true`` (n, 9) bool, ``scores`` (n, 9) calibrated probabilities, per-text decisions
(0 pass, 1 review, 2 block) and the policy thresholds. Every metric takes a weight matrix ``W``
of shape (B, n) and returns one value per row: the point estimate is ``W = ones((1, n))``, a slice
is a 0/1 mask, and a bootstrap resample is a row of multinomial counts. One implementation serves
the report, the slices and the paired bootstrap, so the intervals are intervals of exactly the
numbers shown.

Conventions: an undefined ratio (precision with no predicted positives, recall with no support,
ROC-AUC with one class only) is NaN, written as ``null`` in metrics.json. ROC-AUC and average
precision follow scikit-learn's definitions (tied scores handled the same way); the tests check
them against scikit-learn with sample weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

# The decision rule itself lives in shenhe.models.decision (the Predictor uses it too); re-exported here
# because the evaluation modules speak in these names.
from shenhe.models.decision import BLOCK as BLOCK
from shenhe.models.decision import DECISION_NAMES as DECISION_NAMES
from shenhe.models.decision import PASS as PASS
from shenhe.models.decision import REVIEW as REVIEW
from shenhe.models.decision import Thresholds as Thresholds
from shenhe.models.decision import decide as decide
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.stats import Z95, wilson

DECISION_CODES = {name: code for code, name in enumerate(DECISION_NAMES)}

SLICE_DECISION_KEYS = ("review", "block", "harmful_missed")  # decision numbers shown per slice
BINARY_THRESHOLD = 0.5  # harmful = highest calibrated category score >= 0.5
N_CALIBRATION_BINS = 10  # equal-width bins [0, .1), [.1, .2), ..., [.9, 1.0]
# Character length of the original text: (low, high inclusive or None, label).
LENGTH_BUCKETS: tuple[tuple[int, int | None, str], ...] = (
    (0, 20, "<=20"),
    (21, 50, "21-50"),
    (51, 100, "51-100"),
    (101, 200, "101-200"),
    (201, None, ">200"),
)
_CHUNK = 64  # bootstrap rows processed at once (bounds memory to ~64 x n floats per array)


# --------------------------------------------------------------------------- weighted primitives


def ones_weights(n: int) -> np.ndarray:
    return np.ones((1, n), dtype=float)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def counts(y: np.ndarray, pred: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, ...]:
    """Weighted (tp, fp, fn, tn), each of shape (B,)."""
    y = y.astype(bool)
    pred = pred.astype(bool)
    tp = W @ (y & pred)
    fp = W @ (~y & pred)
    fn = W @ (y & ~pred)
    tn = W @ (~y & ~pred)
    return tp, fp, fn, tn


def precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    return _div(tp, tp + fp), _div(tp, tp + fn), _div(2 * tp, 2 * tp + fp + fn)


def _chunked(fn: Callable[[np.ndarray], np.ndarray], W: np.ndarray) -> np.ndarray:
    if W.shape[0] <= _CHUNK:
        return fn(W)
    return np.concatenate([fn(W[i : i + _CHUNK]) for i in range(0, W.shape[0], _CHUNK)])


def _grouped(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positives and negatives per distinct score, highest score first: (B, G) each."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    yo = y[order].astype(bool)
    Wo = W[:, order]
    wp = np.add.reduceat(np.where(yo, Wo, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(yo, 0.0, Wo), starts, axis=1)
    return wp, wn


def ranking_metrics(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC-AUC and average precision per row of W, from one sort.

    ROC-AUC counts tied positive/negative pairs as one half and is NaN when a row has one class
    only; average precision is scikit-learn's step-wise sum over distinct scores of
    (recall increase) x (precision at that score), NaN without positives."""

    if len(s) == 0:
        nan = np.full(W.shape[0], np.nan)
        return nan, nan.copy()

    def one(Wc: np.ndarray) -> np.ndarray:
        wp, wn = _grouped(y, s, Wc)
        pos, neg = wp.sum(axis=1), wn.sum(axis=1)
        tp, fp = np.cumsum(wp, axis=1), np.cumsum(wn, axis=1)
        auc = _div((wn * (tp - 0.5 * wp)).sum(axis=1), pos * neg)  # tp - wp = positives strictly above
        prec = np.nan_to_num(_div(tp, tp + fp))
        ap = _div((wp * prec).sum(axis=1), pos)
        return np.stack([auc, ap], axis=1)

    both = _chunked(one, W)
    return both[:, 0], both[:, 1]


def roc_auc(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    return ranking_metrics(y, s, W)[0]


def average_precision(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    return ranking_metrics(y, s, W)[1]


def calibration_bins(s: np.ndarray, n_bins: int = N_CALIBRATION_BINS) -> np.ndarray:
    """Bin index per score; the last bin is closed ([0.9, 1.0])."""
    return np.clip((np.asarray(s, dtype=float) * n_bins).astype(int), 0, n_bins - 1)


def expected_calibration_error(y: np.ndarray, s: np.ndarray, W: np.ndarray,
                               n_bins: int = N_CALIBRATION_BINS) -> np.ndarray:
    """ECE = sum over bins of (bin weight / total) * |observed positive rate - mean score|,
    which equals sum over bins |sum(y) - sum(score)| / total."""
    onehot = np.eye(n_bins)[calibration_bins(s, n_bins)]  # (n, bins)
    pos = W @ (onehot * y.astype(float)[:, None])
    conf = W @ (onehot * np.asarray(s, dtype=float)[:, None])
    return _div(np.abs(pos - conf).sum(axis=1), W.sum(axis=1))


def reliability(y: np.ndarray, s: np.ndarray, n_bins: int = N_CALIBRATION_BINS) -> list[dict[str, float | int | None]]:
    """Per calibration bin: count, mean score and observed positive rate (for the diagram)."""
    idx = calibration_bins(s, n_bins)
    out: list[dict[str, float | int | None]] = []
    for b in range(n_bins):
        m = idx == b
        k = int(m.sum())
        out.append({
            "low": b / n_bins,
            "high": (b + 1) / n_bins,
            "count": k,
            "mean_score": float(s[m].mean()) if k else None,
            "positive_rate": float(y[m].mean()) if k else None,
        })
    return out


# --------------------------------------------------------------------------- metric families


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Harmful (any label) vs. not; predicted harmful when the highest score >= 0.5."""
    harmful = y_true.any(axis=1)
    top = scores.max(axis=1)
    pred = top >= BINARY_THRESHOLD
    tp, fp, fn, tn = counts(harmful, pred, W)
    p, r, f1 = precision_recall_f1(tp, fp, fn)
    return {
        "accuracy": _div(tp + tn, tp + fp + fn + tn),
        "precision": p,
        "recall": r,
        "f1": f1,
        "roc_auc": roc_auc(harmful, top, W),
    }


def decision_metrics(y_true: np.ndarray, decisions: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Shares of traffic per decision, and what the blocked and passed shares contain."""
    harmful = y_true.any(axis=1)
    total = W.sum(axis=1)
    share = {name: _div(W @ (decisions == code), total) for code, name in enumerate(DECISION_NAMES)}
    blocked, passed = decisions == BLOCK, decisions == PASS
    return {
        **share,
        # Of the texts blocked, the share that is truly harmful (precision of automatic blocking).
        "blocked_harmful": _div(W @ (blocked & harmful), W @ blocked),
        # Of the texts passed, the share that is harmful (what slips through).
        "passed_harmful": _div(W @ (passed & harmful), W @ passed),
        # Of all harmful texts, the share that passed (missed: neither blocked nor reviewed).
        "harmful_missed": _div(W @ (passed & harmful), W @ harmful),
    }


def decisions_at_prevalence(y_true: np.ndarray, decisions: np.ndarray, prevalence: float) -> dict[str, float | None]:
    """Decision shares re-weighted to a traffic whose harmful share is ``prevalence``.

    Evaluation sets are usually enriched with harmful texts; the review load on real traffic is
    p * (review rate among harmful) + (1 - p) * (review rate among the rest)."""
    harmful = y_true.any(axis=1)
    if not harmful.any() or harmful.all():
        return {"prevalence": prevalence, **{name: None for name in DECISION_NAMES},
                "blocked_harmful": None, "passed_harmful": None}
    w = np.where(harmful, prevalence / harmful.sum(), (1 - prevalence) / (~harmful).sum())[None, :]
    d = decision_metrics(y_true, decisions, w)
    return {"prevalence": prevalence, **{k: nan_to_none(d[k][0]) for k in (*DECISION_NAMES, "blocked_harmful",
                                                                              "passed_harmful")}}


def category_metrics(y: np.ndarray, s: np.ndarray, W: np.ndarray, review: float | None = None,
                     block: float | None = None) -> dict[str, np.ndarray]:
    """One category: P/R/F1 at 0.5, ROC-AUC, AP, ECE, and P/R at the review and block thresholds."""
    tp, fp, fn, _ = counts(y, s >= BINARY_THRESHOLD, W)
    p, r, f1 = precision_recall_f1(tp, fp, fn)
    auc, ap = ranking_metrics(y, s, W)
    out = {
        "precision": p,
        "recall": r,
        "f1": f1,
        "roc_auc": auc,
        "average_precision": ap,
        "ece": expected_calibration_error(y, s, W),
    }
    for name, thr in (("review", review), ("block", block)):
        if thr is None:
            continue
        tp, fp, fn, _ = counts(y, s >= thr, W)
        out[f"{name}_precision"], out[f"{name}_recall"], _ = precision_recall_f1(tp, fp, fn)
    return out


def flat_metrics(y_true: np.ndarray, scores: np.ndarray, W: np.ndarray, decisions: np.ndarray | None = None,
                 thresholds: Thresholds | None = None, macro_over: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every bootstrappable number under a flat key (``binary.f1``, ``category.rumor.ece``, ...).

    ``macro_over``: bool (9,) of the categories averaged in ``macro_f1`` (default: those with
    support in the full data, so every resample averages the same categories)."""
    out: dict[str, np.ndarray] = {f"binary.{k}": v for k, v in binary_metrics(y_true, scores, W).items()}
    if decisions is not None:
        out.update({f"decisions.{k}": v for k, v in decision_metrics(y_true, decisions, W).items()})
    f1s = []
    for j, slug in enumerate(CATEGORY_SLUGS):
        review = None if thresholds is None else float(thresholds.review[j])
        block = None if thresholds is None else float(thresholds.block[j])
        cat = category_metrics(y_true[:, j], scores[:, j], W, review, block)
        out.update({f"category.{slug}.{k}": v for k, v in cat.items()})
        f1s.append(cat["f1"])
    if macro_over is None:
        macro_over = y_true.any(axis=0)
    if macro_over.any():
        with warnings.catch_warnings():  # a resample where all are NaN is a legitimate NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out["macro_f1"] = np.nanmean(np.stack(f1s, axis=1)[:, macro_over], axis=1)
    else:
        out["macro_f1"] = np.full(W.shape[0], np.nan)
    return out


# --------------------------------------------------------------------------- views for the report


def length_bucket(length: int) -> str:
    for low, high, label in LENGTH_BUCKETS:
        if length >= low and (high is None or length <= high):
            return label
    raise ValueError(length)


def operating_curve(y_true: np.ndarray, scores: np.ndarray, thresholds: Thresholds,
                    term_review: np.ndarray | None = None,
                    grid: np.ndarray | None = None) -> list[dict[str, float]]:
    """Review share vs. missed harmful share as one review threshold moves for all categories.

    Block thresholds stay at the policy's values; at each grid value ``t`` every category's review
    threshold is ``t``. Missed = harmful texts that pass (neither blocked nor reviewed)."""
    if grid is None:
        grid = np.round(np.arange(0.02, 1.0, 0.02), 2)
    harmful = y_true.any(axis=1)
    n_harmful = max(int(harmful.sum()), 1)
    points = []
    for t in grid:
        d = decide(scores, np.full(scores.shape[1], t), thresholds.block, thresholds.can_block, term_review,
                   thresholds.reviewable)
        points.append({
            "review_threshold": float(t),
            "review_share": float((d == REVIEW).mean()),
            "block_share": float((d == BLOCK).mean()),
            "missed_share": float(((d == PASS) & harmful).sum() / n_harmful),
        })
    return points


def label_confusion(y_true: np.ndarray, scores: np.ndarray) -> dict[str, object]:
    """Multi-label confusion: rows = true label (or none), columns = predicted label at 0.5 (or none).

    A text adds one to every (true, predicted) pair it has, so the diagonal counts hits and an
    off-diagonal cell shows which category the model confuses with which."""
    pred = scores >= BINARY_THRESHOLD
    t = np.concatenate([y_true, ~y_true.any(axis=1, keepdims=True)], axis=1).astype(int)
    p = np.concatenate([pred, ~pred.any(axis=1, keepdims=True)], axis=1).astype(int)
    labels = [*CATEGORY_SLUGS, "none"]
    return {
        "labels": labels,
        "matrix": (t.T @ p).tolist(),
        "true_cooccurrence": (y_true.astype(int).T @ y_true.astype(int)).tolist(),
    }


def nan_to_none(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval (95% by default) for ``successes / n``; None when n = 0."""
    return wilson(successes, n, z) if n > 0 else None
