"""Paired bootstrap comparison of two models."""

from __future__ import annotations

import numpy as np
import pytest

from shenhe.eval.compare import compare_runs, direction
from shenhe.models.policy import CATEGORY_SLUGS

RUMOR = CATEGORY_SLUGS.index("rumor")
INSULT = CATEGORY_SLUGS.index("insult_defamation")






def test_self_comparison_has_zero_difference(synthetic: tuple, scored) -> None:
    y, good, _ = synthetic
    r = compare_runs(y, scored(good, "a"), scored(good, "a"), n_boot=200, seed=1)
    f1 = r["metrics"]["binary.f1"]
    assert f1["diff"] == 0.0 and f1["ci"] == [0.0, 0.0]
    assert f1["better"] == "no significant difference"
    assert r["per_category_verdict"]["rumor"] == "no significant difference"
    assert r["per_category_verdict"]["national_security"] is None  # no support: no verdict


def test_better_model_is_named_per_category(synthetic: tuple, scored) -> None:
    y, good, noisy = synthetic
    r = compare_runs(y, scored(good, "good"), scored(noisy, "noisy"), n_boot=300, seed=1,
                     slices={"by_length.all": np.ones(len(y), dtype=bool)})
    ap = r["metrics"]["category.rumor.average_precision"]
    assert ap["this"] > ap["other"] and ap["diff"] == pytest.approx(ap["this"] - ap["other"])
    assert 0 < ap["ci"][0] <= ap["diff"] <= ap["ci"][1]
    assert r["per_category_verdict"]["rumor"] == "this"
    assert r["per_category_verdict"]["insult_defamation"] == "no significant difference"
    # reversed roles -> the other one is better
    r2 = compare_runs(y, scored(noisy, "noisy"), scored(good, "good"), n_boot=300, seed=1)
    assert r2["per_category_verdict"]["rumor"] == "other"
    # slices are compared on the same resamples
    assert r["metrics"]["by_length.all.binary.f1"]["this"] == pytest.approx(r["metrics"]["binary.f1"]["this"])
    # every flat metric carries both values and an interval
    assert {"decisions.review", "macro_f1", "category.rumor.ece", "category.rumor.block_recall"} <= set(r["metrics"])


def test_directions() -> None:
    assert direction("binary.f1") == 1
    assert direction("category.rumor.ece") == -1
    assert direction("decisions.harmful_missed") == -1
    assert direction("decisions.review") == 0
