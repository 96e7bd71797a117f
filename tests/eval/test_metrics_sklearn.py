"""The weighted metric implementations agree with scikit-learn (ties and sample weights included)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from shenhe.eval.metrics import (
    counts,
    expected_calibration_error,
    precision_recall_f1,
    ranking_metrics,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_sklearn_with_ties_and_weights(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.3
    s = np.round(rng.random(n) * 0.6 + 0.4 * y * rng.random(n), 1)  # coarse scores: many ties
    w = rng.integers(0, 4, n).astype(float)
    W = np.stack([np.ones(n), w])
    auc, ap = ranking_metrics(y, s, W)
    assert auc[0] == pytest.approx(roc_auc_score(y, s))
    assert ap[0] == pytest.approx(average_precision_score(y, s))
    assert auc[1] == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    assert ap[1] == pytest.approx(average_precision_score(y, s, sample_weight=w))


def test_prf_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.4
    pred = rng.random(200) < 0.5
    w = rng.integers(0, 3, 200).astype(float)
    tp, fp, fn, _ = counts(y, pred, w[None])
    p, r, f1 = precision_recall_f1(tp, fp, fn)
    assert p[0] == pytest.approx(precision_score(y, pred, sample_weight=w))
    assert r[0] == pytest.approx(recall_score(y, pred, sample_weight=w))
    assert f1[0] == pytest.approx(f1_score(y, pred, sample_weight=w))


def test_undefined_values_are_nan() -> None:
    y = np.zeros(4, dtype=bool)
    s = np.array([0.1, 0.2, 0.3, 0.4])
    auc, ap = ranking_metrics(y, s, np.ones((1, 4)))
    assert np.isnan(auc[0]) and np.isnan(ap[0])
    p, r, f1 = precision_recall_f1(*counts(y, s >= 0.5, np.ones((1, 4)))[:3])
    assert np.isnan(p[0]) and np.isnan(r[0]) and np.isnan(f1[0])


def test_ece_perfectly_calibrated_bins_is_zero_and_overconfident_is_not() -> None:
    # 10 texts at .25 (bin 2) with 2.5 expected positives can't be exact; use 4 at .25 with 1 positive
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    s = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(y, s, np.ones((1, 8)))[0] == pytest.approx(0.0)
    # all at .95 but half positive: |4 - 7.6| / 8 = .45
    s = np.full(8, 0.95)
    assert expected_calibration_error(y, s, np.ones((1, 8)))[0] == pytest.approx(0.45)
    # a score of exactly 1.0 falls in the last bin, not out of range
    assert expected_calibration_error(np.array([True]), np.array([1.0]), np.ones((1, 1)))[0] == pytest.approx(0.0)
