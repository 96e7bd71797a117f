"""Per-source block precision and review load: the numbers behind "thresholds that hold".

A block silences lawful speech when it is wrong, so for each category that may auto-block we show,
per source, how many texts its block threshold blocks, how many of those carry the category
(block precision) with a Wilson 95% interval, and whether the source has enough positives
(:data:`MIN_POSITIVES`) to take part in the rule "block precision >= :data:`TARGET_PRECISION` in
every such source; the worst source decides" (issue 16, step 3: measured here, not applied).

For harmless texts (no label) we show the share the policy sends to review (and blocks), overall,
per category (the texts that reach that category's review threshold) and per source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

from .metrics import BLOCK, REVIEW, Thresholds, wilson_interval

MIN_POSITIVES = 30  # a source takes part in the worst-source rule with at least this many positives
TARGET_PRECISION = 0.95
ALL = "(all)"


def _sources(sources: Sequence[str | None]) -> np.ndarray:
    return np.array([s if s is not None else "(none)" for s in sources])


def _precision_cell(blocked: np.ndarray, truth: np.ndarray, positives: int) -> dict[str, Any]:
    n = int(blocked.sum())
    k = int((blocked & truth).sum())
    ci = wilson_interval(k, n)
    return {
        "positives": positives,
        "blocked": n,
        "correct": k,
        "precision": k / n if n else None,
        "ci": list(ci) if ci else None,
        "in_rule": positives >= MIN_POSITIVES,
    }


def block_precision_section(y_true: np.ndarray, scores: np.ndarray, thr: Thresholds,
                            sources: Sequence[str | None]) -> dict[str, Any]:
    """Per category: block precision on all texts and per source, and the worst rule source."""
    src = _sources(sources)
    names = sorted(set(src.tolist()))
    out: dict[str, Any] = {}
    for j, slug in enumerate(CATEGORY_SLUGS):
        truth = y_true[:, j]
        blocked = (scores[:, j] >= thr.block[j]) & bool(thr.can_block[j])
        entry: dict[str, Any] = {
            "can_block": bool(thr.can_block[j]),
            "threshold": float(thr.block[j]),
            ALL: _precision_cell(blocked, truth, int(truth.sum())),
            "by_source": {},
        }
        for name in names:
            m = src == name
            cell = _precision_cell(blocked[m], truth[m], int(truth[m].sum()))
            if cell["positives"] or cell["blocked"]:
                entry["by_source"][name] = cell
        rule = {k: v for k, v in entry["by_source"].items() if v["in_rule"] and v["blocked"]}
        if rule and entry["can_block"]:
            worst = min(rule, key=lambda k: (rule[k]["precision"], k))
            entry["worst_source"] = worst
            entry["worst_precision"] = rule[worst]["precision"]
            entry["holds"] = rule[worst]["precision"] >= TARGET_PRECISION
        else:
            entry["worst_source"] = None
            entry["worst_precision"] = None
            entry["holds"] = None  # never blocks here, or no source with enough positives blocks
        out[slug] = entry
    return {"min_positives": MIN_POSITIVES, "target_precision": TARGET_PRECISION, "per_category": out}


def _share(mask: np.ndarray, within: np.ndarray) -> dict[str, Any]:
    n = int(within.sum())
    k = int((mask & within).sum())
    ci = wilson_interval(k, n)
    return {"count": k, "share": k / n if n else None, "ci": list(ci) if ci else None}


def harmless_review_section(y_true: np.ndarray, scores: np.ndarray, decisions: np.ndarray, thr: Thresholds,
                            sources: Sequence[str | None]) -> dict[str, Any]:
    """What the policy does with texts that carry no label: overall, per category and per source."""
    harmless = ~cast(np.ndarray, y_true.any(axis=1))
    src = _sources(sources)
    review, block = decisions == REVIEW, decisions == BLOCK

    def summary(within: np.ndarray) -> dict[str, Any]:
        return {"harmless": int(within.sum()), "review": _share(review, within), "block": _share(block, within),
                "flagged": _share(review | block, within)}

    per_category = {}
    for j, slug in enumerate(CATEGORY_SLUGS):
        reach = (scores[:, j] >= thr.review[j]) & bool(thr.reviewable[j])
        blocked = (scores[:, j] >= thr.block[j]) & bool(thr.can_block[j])
        per_category[slug] = {
            "review_threshold": float(thr.review[j]),
            # harmless texts at or above this category's review threshold (sent to review or blocked by it)
            "reached": _share(reach, harmless),
            "blocked": _share(blocked, harmless),
        }
    by_source = {name: summary(harmless & (src == name)) for name in sorted(set(src[harmless].tolist()))}
    return {"overall": summary(harmless), "per_category": per_category, "by_source": by_source}
