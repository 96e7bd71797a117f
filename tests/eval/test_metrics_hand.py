"""metrics.json numbers on the 8-text fixture, checked against values computed by hand.

Fixture (tests/eval/fixtures/hand8.jsonl), scores for insult_defamation (I) and rumor (R); every
other category scores 0. Policy: review 0.5, block 0.9 for every category.

    id  labels      I     R     top   harmful  decision   length  source
    h0  I           .95   0     .95   yes      block      10      weibo
    h1  I           .70   0     .70   yes      review     32      weibo
    h2  R           0     .85   .85   yes      review     59      news
    h3  R           0     .30   .30   yes      pass       23      news
    h4  -           .05   0     .05   no       pass       15      weibo
    h5  -           .60   0     .60   no       review     24      weibo
    h6  -           0     .92   .92   no       block      22      news
    h7  I, R        .55   .45   .55   yes      review     22      news
"""

from __future__ import annotations

import numpy as np
import pytest

from shenhe.eval.data import EvalSet
from shenhe.eval.evaluate import evaluate
from shenhe.eval.metrics import decide, flat_metrics, ones_weights, operating_curve
from shenhe.eval.scoring import Scored

approx = pytest.approx


@pytest.fixture
def m(hand8: EvalSet, hand8_scored: Scored) -> dict:
    return evaluate(hand8, hand8_scored)


def test_identity_and_counts(m: dict, hand8: EvalSet) -> None:
    assert m["n"] == 8
    assert m["data"]["harmful"] == 5
    assert m["data"]["sha256"] == hand8.sha256 and len(hand8.sha256) == 64
    assert m["bundle"]["name"] == "fake" and m["bundle"]["version"] == "1"
    assert m["data"]["sources"] == {"news": 4, "weibo": 4}


def test_binary(m: dict) -> None:
    # harmful h0 h1 h2 h3 h7; predicted (top >= .5): h0 h1 h2 h5 h6 h7
    # TP = h0 h1 h2 h7 = 4, FP = h5 h6 = 2, FN = h3 = 1, TN = h4 = 1
    b = m["binary"]
    assert b["accuracy"] == approx(5 / 8)
    assert b["precision"] == approx(4 / 6)
    assert b["recall"] == approx(4 / 5)
    assert b["f1"] == approx(8 / 11)  # 2TP / (2TP + FP + FN)
    # ROC-AUC: positives .95 .70 .85 .30 .55 vs negatives .05 .60 .92 -> pairs won 3+2+2+1+1 = 9 of 15
    assert b["roc_auc"] == approx(9 / 15)


def test_decisions(m: dict) -> None:
    d = m["decisions"]
    # pass h3 h4; review h1 h2 h5 h7; block h0 h6
    assert d["counts"] == {"pass": 2, "review": 4, "block": 2}
    assert (d["pass"], d["review"], d["block"]) == (approx(0.25), approx(0.5), approx(0.25))
    assert d["blocked_harmful"] == approx(0.5)  # h0 harmful, h6 not
    assert d["passed_harmful"] == approx(0.5)  # h3 harmful, h4 not
    assert d["harmful_missed"] == approx(1 / 5)  # h3 of 5 harmful
    assert d["rule_agreement"] == 1.0


def test_insult_category(m: dict) -> None:
    c = m["per_category"]["insult_defamation"]
    # y = h0 h1 h7; predicted at .5 = h0 h1 h5 h7 -> TP 3, FP 1, FN 0
    assert c["support"] == 3 and c["trained"] is True and c["predicted"] == 4
    assert c["precision"] == approx(0.75) and c["recall"] == approx(1.0) and c["f1"] == approx(6 / 7)
    # positives .95 .70 .55 vs negatives 0 0 0 .05 .60: wins 5 + 5 + 4 = 14 of 15
    assert c["roc_auc"] == approx(14 / 15)
    # ranking .95+ .70+ .60- .55+ ...: AP = (1 + 1 + 3/4) / 3
    assert c["average_precision"] == approx(2.75 / 3)
    # ECE bins: b0 {0,0,0,.05 all negative} |0-.05|; b5 {.55+} .45; b6 {.60-} .60; b7 {.70+} .30; b9 {.95+} .05
    assert c["ece"] == approx((0.05 + 0.45 + 0.60 + 0.30 + 0.05) / 8)
    assert c["review"] == {"threshold": 0.5, "flagged": 4, "precision": approx(0.75), "recall": approx(1.0)}
    # block at .9: only h0 -> precision 1, recall 1/3
    assert c["block"]["flagged"] == 1
    assert c["block"]["precision"] == approx(1.0) and c["block"]["recall"] == approx(1 / 3)
    assert c["block"]["can_block"] is True


def test_rumor_category(m: dict) -> None:
    c = m["per_category"]["rumor"]
    # y = h2 h3 h7; predicted at .5 = h2 h6 -> TP 1, FP 1, FN 2
    assert c["support"] == 3
    assert c["precision"] == approx(0.5) and c["recall"] == approx(1 / 3) and c["f1"] == approx(0.4)
    # positives .85 .30 .45 each beat the four zeros, lose to .92: 12 of 15
    assert c["roc_auc"] == approx(0.8)
    # ranking .92- .85+ .45+ .30+: AP = (1/2 + 2/3 + 3/4) / 3
    assert c["average_precision"] == approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    # ECE: b9 {.92-} .92, b8 {.85+} .15, b4 {.45+} .55, b3 {.30+} .70, b0 zeros 0
    assert c["ece"] == approx((0.92 + 0.15 + 0.55 + 0.70) / 8)
    # block at .9: h6 only, not a rumor
    assert c["block"]["precision"] == approx(0.0) and c["block"]["recall"] == approx(0.0)


def test_unsupported_categories_and_macro_f1(m: dict) -> None:
    c = m["per_category"]["national_security"]
    assert c["support"] == 0
    assert c["precision"] is None and c["recall"] is None and c["f1"] is None and c["roc_auc"] is None
    assert c["ece"] == approx(0.0)  # all scores 0, all labels 0
    assert m["per_category"]["constitution"]["trained"] is False
    assert m["per_category"]["constitution"]["block"]["can_block"] is False
    assert m["macro_f1_categories"] == ["rumor", "insult_defamation"]
    assert "constitution" in m["macro_f1_excluded"] and len(m["macro_f1_excluded"]) == 7
    assert m["macro_f1"] == approx((6 / 7 + 0.4) / 2)
    assert m["calibration"]["ece"]["rumor"] == approx(2.32 / 8)
    rel = m["calibration"]["reliability"]["insult_defamation"]
    assert len(rel) == 10 and rel[0]["count"] == 4 and rel[9]["positive_rate"] == 1.0 and rel[3]["count"] == 0


def test_slices(m: dict) -> None:
    assert list(m["by_length"]) == ["<=20", "21-50", "51-100", "101-200", ">200"]
    short = m["by_length"]["<=20"]  # h0 (harmful, .95) and h4 (not, .05): all correct
    assert (short["n"], short["harmful"], short["accuracy"], short["f1"], short["roc_auc"]) == (2, 1, 1.0, 1.0, 1.0)
    mid = m["by_length"]["21-50"]  # h1 h3 h5 h6 h7: TP h1 h7, FN h3, FP h5 h6
    assert mid["n"] == 5 and mid["accuracy"] == approx(0.4) and mid["precision"] == approx(0.5)
    assert mid["recall"] == approx(2 / 3) and mid["f1"] == approx(4 / 7)
    assert mid["roc_auc"] == approx(1 / 6)  # only .70 beats .60
    assert m["by_length"]["51-100"]["roc_auc"] is None  # h2 alone: one class
    assert m["by_length"][">200"]["n"] == 0 and m["by_length"][">200"]["f1"] is None

    # decisions per slice: <=20 = h0 block, h4 pass; 21-50 = h1 h5 h7 review, h6 block, h3 pass (harmful)
    assert (short["review"], short["block"], short["harmful_missed"]) == (0.0, 0.5, 0.0)
    assert mid["review"] == approx(3 / 5) and mid["block"] == approx(1 / 5)
    assert mid["harmful_missed"] == approx(1 / 3)  # h3 of h1 h3 h7
    assert m["by_length"][">200"]["review"] is None

    weibo, news = m["by_source"]["weibo"], m["by_source"]["news"]
    # weibo h0 h1 h4 h5: TP 2, FP 1, TN 1
    assert weibo["accuracy"] == approx(0.75) and weibo["f1"] == approx(0.8) and weibo["roc_auc"] == approx(1.0)
    # news h2 h3 h6 h7: TP 2, FN 1, FP 1; every positive scores below the negative .92
    assert news["accuracy"] == approx(0.5) and news["f1"] == approx(2 / 3) and news["roc_auc"] == approx(0.0)


def test_operating_curve_and_confusion(m: dict) -> None:
    pts = {p["review_threshold"]: p for p in m["operating_curve"]["points"]}
    # t = .5 reproduces the policy; t = .3 also reviews h3 (.30) -> 5 of 8 reviewed, nothing missed
    assert pts[0.5]["review_share"] == approx(0.5) and pts[0.5]["missed_share"] == approx(0.2)
    assert pts[0.3]["review_share"] == approx(5 / 8) and pts[0.3]["missed_share"] == approx(0.0)
    assert pts[0.96]["block_share"] == approx(0.25) and pts[0.96]["missed_share"] == approx(4 / 5)
    assert m["operating_curve"]["policy_point"]["missed_share"] == approx(0.2)

    conf = m["confusion"]
    idx = {label: i for i, label in enumerate(conf["labels"])}
    mat = conf["matrix"]
    assert mat[idx["insult_defamation"]][idx["insult_defamation"]] == 3  # h0 h1 h7
    assert mat[idx["rumor"]][idx["rumor"]] == 1  # h2
    assert mat[idx["rumor"]][idx["insult_defamation"]] == 1  # h7
    assert mat[idx["rumor"]][idx["none"]] == 1  # h3
    assert mat[idx["none"]][idx["insult_defamation"]] == 1  # h5
    assert mat[idx["none"]][idx["rumor"]] == 1  # h6
    assert mat[idx["none"]][idx["none"]] == 1  # h4
    assert sum(map(sum, mat)) == 9  # h7 counts twice
    assert conf["true_cooccurrence"][idx["rumor"]][idx["insult_defamation"]] == 1


def test_worst_errors(m: dict) -> None:
    fp = m["worst_errors"]["false_positives"]
    fn = m["worst_errors"]["false_negatives"]
    assert [e["id"] for e in fp] == ["h6", "h5"]  # highest score first
    assert fp[0]["top_category"] == "rumor" and fp[0]["decision"] == "block" and "谣言止于智者" in fp[0]["text"]
    assert [e["id"] for e in fn] == ["h3"]
    assert fn[0]["labels"] == ["rumor"] and fn[0]["decision"] == "pass"


def test_prevalence_reweighting(hand8: EvalSet, hand8_scored: Scored) -> None:
    m = evaluate(hand8, hand8_scored, prevalence=0.1)
    p = m["decisions"]["at_prevalence"]
    # harmful (5): review 3/5 (h1 h2 h7), block 1/5; others (3): review 1/3 (h5), block 1/3 (h6)
    assert p["review"] == approx(0.1 * 3 / 5 + 0.9 * 1 / 3)
    assert p["block"] == approx(0.1 * 1 / 5 + 0.9 * 1 / 3)
    assert p["blocked_harmful"] == approx(0.02 / (0.02 + 0.3))


def test_untrained_category_never_blocks() -> None:
    s = np.zeros((2, 9))
    s[0, 0] = 0.99  # constitution: untrained
    s[1, 5] = 0.99  # rumor
    trained = np.array([False] + [True] * 8)
    d = decide(s, np.full(9, 0.5), np.full(9, 0.9), trained)
    assert d.tolist() == [1, 2]  # without the reviewable mask, an untrained score could still review
    d = decide(s, np.full(9, 0.5), np.full(9, 0.9), trained, reviewable=trained)
    assert d.tolist() == [0, 2]  # the Predictor's rule: untrained categories neither block nor review
    can_block = trained
    # a term hit with term_action: review lifts a pass to review
    d = decide(np.zeros((1, 9)), np.full(9, 0.5), np.full(9, 0.9), can_block, np.array([True]))
    assert d.tolist() == [1]


def test_weighted_point_estimate_equals_repeated_rows(hand8: EvalSet, hand8_array: np.ndarray) -> None:
    """Weight 2 on a text must equal that text appearing twice (what the bootstrap relies on)."""
    w = np.array([[2, 1, 1, 1, 1, 0, 1, 3]], dtype=float)
    rows = np.repeat(np.arange(8), w[0].astype(int))
    weighted = flat_metrics(hand8.y_true, hand8_array, w)
    repeated = flat_metrics(hand8.y_true[rows], hand8_array[rows], ones_weights(len(rows)))
    for key, value in weighted.items():
        np.testing.assert_allclose(value, repeated[key], equal_nan=True, err_msg=key)


def test_operating_curve_grid_is_monotone(hand8: EvalSet, hand8_scored: Scored) -> None:
    pts = operating_curve(hand8.y_true, hand8_scored.scores, hand8_scored.thresholds)
    reviews = [p["review_share"] + p["block_share"] for p in pts]
    missed = [p["missed_share"] for p in pts]
    assert reviews == sorted(reviews, reverse=True) and missed == sorted(missed)
