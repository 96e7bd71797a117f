"""Assemble ``metrics.json`` from an evaluation set and one model's scores."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

from .data import EvalSet
from .metrics import (
    BINARY_THRESHOLD,
    BLOCK,
    DECISION_NAMES,
    LENGTH_BUCKETS,
    N_CALIBRATION_BINS,
    REVIEW,
    SLICE_DECISION_KEYS,
    binary_metrics,
    decide,
    decision_metrics,
    decisions_at_prevalence,
    flat_metrics,
    label_confusion,
    length_bucket,
    nan_to_none,
    ones_weights,
    operating_curve,
    reliability,
)
from .scoring import Scored
from .sources import block_precision_section, harmless_review_section

SCHEMA_VERSION = 1
WORST_ERRORS = 15


def _point(flat: dict[str, np.ndarray], prefix: str) -> dict[str, float | None]:
    return {k.removeprefix(prefix): nan_to_none(v[0]) for k, v in flat.items() if k.startswith(prefix)}


def binary_block(y_true: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None,
                 decisions: np.ndarray | None = None) -> dict[str, Any]:
    """Binary metrics (point estimates) with counts, optionally on a slice; with ``decisions``
    also the slice's review / block shares and its missed harmful share."""
    n = len(y_true)
    W = ones_weights(n) if mask is None else mask.astype(float)[None, :]
    keep = np.ones(n, dtype=bool) if mask is None else mask
    out: dict[str, Any] = {
        "n": int(keep.sum()),
        "harmful": int(y_true[keep].any(axis=1).sum()),
        "predicted_harmful": int((scores[keep].max(axis=1) >= BINARY_THRESHOLD).sum()),
    }
    out.update({k: nan_to_none(v[0]) for k, v in binary_metrics(y_true, scores, W).items()})
    if decisions is not None:
        d = decision_metrics(y_true, decisions, W)
        out.update({k: nan_to_none(d[k][0]) for k in SLICE_DECISION_KEYS})
    return out


def _worst_errors(data: EvalSet, run: Scored) -> dict[str, list[dict[str, Any]]]:
    harmful = data.y_true.any(axis=1)
    top = run.scores.max(axis=1)
    pred = top >= BINARY_THRESHOLD

    def row(i: int) -> dict[str, Any]:
        j = int(run.scores[i].argmax())
        return {
            "row": i,  # 0-based position in the evaluated texts
            "id": data.ids[i],
            "text": data.texts[i],
            "labels": [s for s, t in zip(CATEGORY_SLUGS, data.y_true[i], strict=True) if t],
            "source": data.sources[i],
            "top_category": CATEGORY_SLUGS[j],
            "score": float(top[i]),
            "decision": DECISION_NAMES[int(run.decisions[i])],
        }

    fp = np.flatnonzero(~harmful & pred)
    fn = np.flatnonzero(harmful & ~pred)
    fp = fp[np.argsort(-top[fp], kind="stable")][:WORST_ERRORS]
    fn = fn[np.argsort(top[fn], kind="stable")][:WORST_ERRORS]
    return {"false_positives": [row(int(i)) for i in fp], "false_negatives": [row(int(i)) for i in fn]}


def slice_masks(data: EvalSet) -> dict[str, np.ndarray]:
    """``by_length.<bucket>`` and ``by_source.<source>`` -> bool mask over the texts."""
    buckets = np.array([length_bucket(len(t)) for t in data.texts])
    masks = {f"by_length.{label}": buckets == label for _, _, label in LENGTH_BUCKETS}
    if data.has_sources:
        src = np.array([x if x is not None else "(none)" for x in data.sources])
        masks.update({f"by_source.{name}": src == name for name in sorted(set(src.tolist()))})
    return masks


def evaluate(data: EvalSet, run: Scored, *, bundle_dir: str | None = None,
             prevalence: float | None = None) -> dict[str, Any]:
    """Every point estimate of the report for one model (no bootstrap here)."""
    y, s, thr = data.y_true, run.scores, run.thresholds
    n = data.n
    flat = flat_metrics(y, s, ones_weights(n), decisions=run.decisions, thresholds=thr)
    support = y.sum(axis=0)

    per_category: dict[str, Any] = {}
    for j, slug in enumerate(CATEGORY_SLUGS):
        c = _point(flat, f"category.{slug}.")
        per_category[slug] = {
            "support": int(support[j]),
            "trained": bool(thr.trained[j]),
            "predicted": int((s[:, j] >= BINARY_THRESHOLD).sum()),
            "precision": c["precision"],
            "recall": c["recall"],
            "f1": c["f1"],
            "roc_auc": c["roc_auc"],
            "average_precision": c["average_precision"],
            "ece": c["ece"],
            "review": {
                "threshold": float(thr.review[j]),
                "flagged": int((s[:, j] >= thr.review[j]).sum()),
                "precision": c["review_precision"],
                "recall": c["review_recall"],
            },
            "block": {
                "threshold": float(thr.block[j]),
                "can_block": bool(thr.can_block[j]),
                "flagged": int((s[:, j] >= thr.block[j]).sum()),
                "precision": c["block_precision"],
                "recall": c["block_recall"],
            },
        }

    rule = decide(s, thr.review, thr.block, thr.can_block, run.term_review, thr.reviewable)
    decisions: dict[str, Any] = _point(flat, "decisions.")
    decisions["counts"] = {name: int((run.decisions == code).sum()) for code, name in enumerate(DECISION_NAMES)}
    # Share of texts where the vectorised rule (used for the operating curve) agrees with the Predictor.
    decisions["rule_agreement"] = float((rule == run.decisions).mean())

    if prevalence is not None:
        decisions["at_prevalence"] = decisions_at_prevalence(y, run.decisions, prevalence)

    by_length: dict[str, Any] = {}
    by_source: dict[str, Any] = {}
    for name, mask in slice_masks(data).items():
        family, _, key = name.partition(".")
        (by_length if family == "by_length" else by_source)[key] = binary_block(y, s, mask, run.decisions)

    curve = operating_curve(y, s, thr, run.term_review)
    harmful = y.any(axis=1)
    with_support = [slug for j, slug in enumerate(CATEGORY_SLUGS) if support[j] > 0]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": {
            "name": run.name,
            "version": run.version,
            "path": bundle_dir,
            "policy_name": run.policy_name,
            "policy_version": run.policy_version,
        },
        "data": {
            "path": str(data.path),
            "sha256": data.sha256,
            "n": n,
            "harmful": int(harmful.sum()),
            "sources": dict(sorted(Counter(x or "(none)" for x in data.sources).items())) if data.has_sources else {},
        },
        "n": n,
        "binary": {"threshold": BINARY_THRESHOLD, **binary_block(y, s)},
        "decisions": decisions,
        "per_category": per_category,
        "macro_f1": nan_to_none(flat["macro_f1"][0]),
        "macro_f1_categories": with_support,
        "macro_f1_excluded": [slug for slug in CATEGORY_SLUGS if slug not in with_support],
        "calibration": {
            "n_bins": N_CALIBRATION_BINS,
            "ece": {slug: per_category[slug]["ece"] for slug in CATEGORY_SLUGS},
            "reliability": {slug: reliability(y[:, j], s[:, j]) for j, slug in enumerate(CATEGORY_SLUGS)},
        },
        "by_source": by_source,
        "by_length": by_length,
        "length_buckets": "characters of the original text: " + ", ".join(b[2] for b in LENGTH_BUCKETS),
        "operating_curve": {
            "description": "one review threshold for all categories; block thresholds as in the policy",
            "points": curve,
            "policy_point": {
                "review_share": float((run.decisions == REVIEW).mean()),
                "block_share": float((run.decisions == BLOCK).mean()),
                "missed_share": decisions["harmful_missed"],
            },
        },
        "confusion": label_confusion(y, s),
        "worst_errors": _worst_errors(data, run),
        "block_precision": block_precision_section(y, s, thr, data.sources),
        "harmless_review": harmless_review_section(y, s, run.decisions, thr, data.sources),
    }


def baseline_section(data: EvalSet, name: str, run_dir: str, scores: np.ndarray) -> dict[str, Any]:
    """A TF-IDF baseline's numbers at the 0.5 threshold, next to the bundle's."""
    flat = flat_metrics(data.y_true, scores, ones_weights(data.n))
    per_category = {}
    for slug in CATEGORY_SLUGS:
        c = _point(flat, f"category.{slug}.")
        per_category[slug] = {k: c[k] for k in ("precision", "recall", "f1", "roc_auc", "average_precision", "ece")}
    return {
        "name": name,
        "run_dir": run_dir,
        "threshold": BINARY_THRESHOLD,
        "binary": {"threshold": BINARY_THRESHOLD, **binary_block(data.y_true, scores)},
        "per_category": per_category,
        "macro_f1": nan_to_none(flat["macro_f1"][0]),
    }
