"""Live precision estimates from reviewer decisions: Wilson intervals, bands, flags, /metrics text."""

from __future__ import annotations

import math

import pytest

from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.models.stats import wilson
from shenhe.serving.live_precision import MIN_FLAG_SAMPLES, estimate, metrics_text
from shenhe.serving.queue import sampled


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and 0.69 < lo < 0.73
    assert not any(math.isnan(x) for x in wilson(0, 5))


def row(kind: str, decision: str, cats: list[str], labels: list[str]) -> dict:
    return {"kind": kind, "decision": decision, "categories": cats, "labels": labels}


def test_bands_flags_and_metrics() -> None:
    policy = load_policy()
    target = policy.targets.block_precision
    rows = ([row("audit", "block", ["rumor"], ["rumor"])] * 6 + [row("audit", "block", ["rumor"], [])] * 6
            + [row("audit", "block", ["obscene_violent"], ["obscene_violent"])] * 12
            + [row("review", "review", ["insult_defamation"], ["insult_defamation"])] * 3
            + [row("review", "review", ["insult_defamation"], ["rumor"])]
            + [row("second", "review", ["insult_defamation"], [])] * 5)  # second opinions do not count
    rep = estimate(rows, {("*", "all"): 100, ("insult_defamation", "review"): 4}, policy)
    by = {(b.category, b.band): b for b in rep.bands}
    assert len(rep.bands) == 2 * len(CATEGORY_SLUGS)
    rumor = by[("rumor", "block")]
    assert (rumor.n, rumor.confirmed, rumor.precision) == (12, 6, 0.5) and rumor.flagged
    assert rumor.target == target and rumor.low < 0.5 < rumor.high
    assert not by[("obscene_violent", "block")].flagged  # 12/12
    review = by[("insult_defamation", "review")]
    assert (review.n, review.confirmed) == (4, 3) and not review.flagged  # review bands have no target
    assert [b.category for b in rep.flagged] == ["rumor"]
    rate = next(r for r in rep.rates if r.category == "insult_defamation")
    assert rate.rate == 0.04 and rate.low < 0.04 < rate.high

    text = metrics_text(rep)
    assert 'shenhe_live_precision{category="rumor",band="block"} 0.500000' in text
    assert 'shenhe_live_precision{category="insult_defamation",band="review"} 0.750000' in text
    assert 'shenhe_live_precision_below_target{category="rumor"} 1' in text
    assert 'shenhe_live_precision_below_target{category="obscene_violent"} 0' in text
    assert 'shenhe_live_precision{category="constitution"' not in text  # no decisions, no value
    assert 'shenhe_live_review_rate{category="insult_defamation"} 0.040000' in text


def test_too_few_audits_raise_no_flag() -> None:
    rows = [row("audit", "block", ["rumor"], [])] * (MIN_FLAG_SAMPLES - 1)
    assert estimate(rows, {}, load_policy()).flagged == []


def test_sampling_is_deterministic_and_near_the_share() -> None:
    assert all(sampled(f"k{i}", 1.0) for i in range(50)) and not any(sampled(f"k{i}", 0.0) for i in range(50))
    hits = sum(sampled(f"k{i}", 0.05) for i in range(20_000))
    assert 800 < hits < 1200
    assert [sampled(f"k{i}", 0.3) for i in range(100)] == [sampled(f"k{i}", 0.3) for i in range(100)]
