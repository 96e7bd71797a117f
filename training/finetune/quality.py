"""How a quantised model is judged at export: its quality against fp32, each with its own calibration and
thresholds fit on its own dev scores (the way each would ship).

The gate: at most :data:`MAX_DROP` of macro-F1 and of each trained category's average precision lost
against fp32, on dev and on test (categories without positives in a split are skipped there).
"""

from __future__ import annotations

from shenhe.training.finetune.fit import Judged

MAX_DROP = 0.005


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
