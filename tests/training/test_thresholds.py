"""Calibration and thresholds from dev: targets met where possible, review-only where not."""

from __future__ import annotations

import numpy as np
import pytest

from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.training.finetune.calibrate import fit_calibration, fit_platt
from shenhe.training.finetune.thresholds import (
    apply_operating_points,
    choose_operating_point,
    choose_operating_points,
)


def test_block_threshold_is_lowest_score_meeting_precision() -> None:
    # 20 positives scored 0.6..0.99, 80 negatives below 0.5 except two at 0.7 and 0.65.
    pos = np.linspace(0.6, 0.99, 20)
    neg = np.r_[np.linspace(0.0, 0.49, 78), 0.7, 0.65]
    scores = np.r_[pos, neg]
    labels = np.r_[np.ones(20), np.zeros(80)]
    p = choose_operating_point("rumor", scores, labels, block_precision=0.95, review_recall=0.9)
    above = scores >= p.block_threshold
    assert labels[above].mean() >= 0.95 and p.auto_block
    lower = scores[scores < p.block_threshold].max()
    assert labels[scores >= lower].mean() < 0.95  # one step lower breaks the target
    rec = labels[scores >= p.review_threshold].sum() / 20
    assert rec >= 0.9 and p.review_threshold < p.block_threshold
    assert labels[scores >= p.review_threshold + 1e-3].sum() / 20 < 0.9 or p.review_threshold >= p.block_threshold - 1e-3


def test_unreachable_precision_means_review_only() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    labels = (rng.random(200) < 0.3).astype(float)  # scores carry no signal
    p = choose_operating_point("rumor", scores, labels, block_precision=0.95, review_recall=0.9)
    assert p.auto_block is False and "never auto-blocks" in p.note
    pol = apply_operating_points(load_policy(), [p if s == "rumor" else
                                                 choose_operating_point(s, scores, (scores > 0.5).astype(float), 0.95, 0.9)
                                                 for s in CATEGORY_SLUGS])
    assert pol.category("rumor").can_block is False
    assert pol.category("rumor").review_threshold < pol.category("rumor").block_threshold


def test_untrained_and_unlabelled_categories() -> None:
    probs = np.random.default_rng(1).random((50, 9))
    labels = np.zeros((50, 9))
    labels[:10, 7] = 1
    trained = np.array([s != "constitution" for s in CATEGORY_SLUGS])
    points = choose_operating_points(probs, labels, trained, load_policy())
    by = {p.slug: p for p in points}
    assert by["constitution"].trained is False
    assert by["rumor"].auto_block is False and "no dev positives" in by["rumor"].note
    pol = apply_operating_points(load_policy(), points)
    assert pol.category("constitution").trained is False and pol.category("constitution").can_block is False


def test_platt_recovers_temperature_and_bias() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    true = 1 / (1 + np.exp(-(logits / 2.0 - 1.0)))
    labels = (rng.random(20000) < true).astype(float)
    cal = fit_platt(logits, labels)
    assert cal.temperature == pytest.approx(2.0, rel=0.1) and cal.bias == pytest.approx(-1.0, abs=0.1)


def test_isotonic_calibration_is_monotone() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (500, 9))
    labels = (rng.random((500, 9)) < 1 / (1 + np.exp(-logits))).astype(float)
    trained = np.ones(9, dtype=bool)
    cal = fit_calibration(logits, labels, trained, "isotonic")
    c = cal["rumor"]
    assert c.method == "isotonic"
    grid = np.linspace(-6, 6, 50)
    assert np.all(np.diff(c.apply(grid)) >= 0)
