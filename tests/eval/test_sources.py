"""Per-source block precision (Wilson intervals, the worst-source rule) and the harmless review share."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shenhe.eval.metrics import BLOCK, PASS, REVIEW, Thresholds, wilson_interval
from shenhe.eval.perturb import robustness_section
from shenhe.eval.scoring import Scored
from shenhe.eval.sources import MIN_POSITIVES, block_precision_section, harmless_review_section
from shenhe.models.policy import CATEGORY_SLUGS
from tests.conftest import present

C = 9
S0, S2 = CATEGORY_SLUGS[0], CATEGORY_SLUGS[2]  # the columns the tests fill


def thresholds(can_block: list[int] | None = None) -> Thresholds:
    can = np.zeros(C, dtype=bool)
    can[can_block if can_block is not None else [0]] = True
    return Thresholds(review=np.full(C, 0.5), block=np.full(C, 0.9), can_block=can,
                      trained=np.ones(C, dtype=bool), reviewable=np.ones(C, dtype=bool))


def test_wilson_interval_matches_known_values() -> None:
    lo, hi = present(wilson_interval(20, 20))
    assert lo == pytest.approx(0.8389, abs=1e-4) and hi == 1.0
    lo, hi = present(wilson_interval(5, 10))
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) is None
    lo, hi = present(wilson_interval(0, 7))
    assert lo == 0.0 and 0 < hi < 0.5


def make_source(name: str, positives_blocked: int, negatives_blocked: int, positives_passed: int,
                negatives_passed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = [(1, 0.95)] * positives_blocked + [(0, 0.95)] * negatives_blocked + [(1, 0.2)] * positives_passed \
        + [(0, 0.1)] * negatives_passed
    y = np.zeros((len(rows), C), dtype=bool)
    s = np.zeros((len(rows), C))
    y[:, 0] = [r[0] for r in rows]
    s[:, 0] = [r[1] for r in rows]
    return y, s, [name] * len(rows)


def combine(*parts: tuple[np.ndarray, np.ndarray, list[str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [x for p in parts for x in p[2]])


def test_worst_source_with_enough_positives_decides() -> None:
    # A: 38 of 40 blocks right (0.95), 40 positives; B: 5 of 10 (0.5) but only 10 positives -> not in the rule.
    y, s, src = combine(make_source("A", 38, 2, 2, 50), make_source("B", 5, 5, 5, 20))
    bp = block_precision_section(y, s, thresholds(), src)
    e = bp["per_category"][S0]
    a, b = e["by_source"]["A"], e["by_source"]["B"]
    assert (a["blocked"], a["correct"], a["positives"], a["in_rule"]) == (40, 38, 40, True)
    assert (b["blocked"], b["correct"], b["positives"], b["in_rule"]) == (10, 5, 10, False)
    assert a["precision"] == pytest.approx(0.95) and a["ci"][0] < 0.95 < a["ci"][1]
    assert e["(all)"]["blocked"] == 50 and e["(all)"]["correct"] == 43
    assert e["worst_source"] == "A" and e["holds"] is True
    assert bp["min_positives"] == MIN_POSITIVES == 30


def test_a_second_large_source_below_target_breaks_the_rule() -> None:
    y, s, src = combine(make_source("A", 40, 0, 0, 50), make_source("C", 27, 3, 5, 10))  # C: 0.90, 32 positives
    e = block_precision_section(y, s, thresholds(), src)["per_category"][S0]
    assert e["worst_source"] == "C" and e["worst_precision"] == pytest.approx(0.9) and e["holds"] is False


def test_review_only_category_never_blocks() -> None:
    y, s, src = make_source("A", 40, 0, 0, 5)
    e = block_precision_section(y, s, thresholds(can_block=[]), src)["per_category"][S0]
    assert e["can_block"] is False and e["(all)"]["blocked"] == 0 and e["holds"] is None


def test_harmless_review_share_overall_per_category_and_source() -> None:
    y = np.zeros((6, C), dtype=bool)
    y[0, 1] = True  # one harmful text: excluded from every harmless share
    s = np.zeros((6, C))
    s[1, 2] = 0.6  # harmless, reaches category 2's review threshold
    s[2, 2] = 0.95  # harmless, above block (category 2 may not block -> review)
    s[3, 0] = 0.95  # harmless, blocked by category 0
    decisions = np.array([BLOCK, REVIEW, REVIEW, BLOCK, PASS, PASS])
    src = ["A", "A", "B", "B", "B", "A"]
    h = harmless_review_section(y, s, decisions, thresholds(), src)
    assert h["overall"]["harmless"] == 5
    assert h["overall"]["review"]["count"] == 2 and h["overall"]["review"]["share"] == pytest.approx(0.4)
    assert h["overall"]["block"]["count"] == 1 and h["overall"]["flagged"]["count"] == 3
    assert h["per_category"][S2]["reached"]["count"] == 2
    assert h["per_category"][S2]["blocked"]["count"] == 0  # category 2 cannot block
    assert h["per_category"][S0]["blocked"]["count"] == 1
    assert h["by_source"]["A"]["harmless"] == 2 and h["by_source"]["A"]["review"]["count"] == 1
    assert h["by_source"]["B"]["flagged"]["share"] == pytest.approx(2 / 3)


def test_robustness_reports_accuracy_and_harmless_flag_rate(hand8_scored: Scored, hand8) -> None:
    y = hand8.y_true
    harmless = ~y.any(axis=1)
    flagged = hand8_scored.decisions.copy()
    flagged[harmless] = REVIEW  # the disguised harmless texts all go to review
    scores = hand8_scored.scores.copy()
    scores[harmless, 7] = 0.6  # and score as harmful -> accuracy falls
    worse = dataclasses.replace(hand8_scored, decisions=flagged, scores=scores)
    changed = np.ones(8, dtype=bool)
    changed[4] = False
    r = robustness_section(y, hand8_scored, {"emoji": (changed, worse)}, seed=0, population=8)
    p = r["perturbations"]["emoji"]
    assert r["harmless"] == 3 and r["harmful"] == 5
    assert p["harmless_flagged"] == 1.0
    clean_flagged = float((hand8_scored.decisions[harmless] != PASS).mean())
    assert r["clean"]["harmless_flagged"] == pytest.approx(clean_flagged)
    assert p["harmless_flagged_increase"] == pytest.approx(1.0 - clean_flagged)
    assert p["binary_accuracy_drop"] > 0
    assert p["changed_share_harmless"] == pytest.approx(2 / 3) and p["changed_share_harmful"] == 1.0


def test_robustness_per_source_harmless_flag_rate(hand8_scored: Scored, hand8) -> None:
    y = hand8.y_true
    harmless = ~y.any(axis=1)
    decisions = hand8_scored.decisions.copy()
    decisions[harmless] = BLOCK  # every disguised harmless text blocked
    worse = dataclasses.replace(hand8_scored, decisions=decisions)
    r = robustness_section(y, hand8_scored, {"emoji": (np.ones(8, dtype=bool), worse)}, seed=0, population=8,
                           sources=hand8.sources)
    weibo = r["perturbations"]["emoji"]["by_source"]["weibo"]
    assert weibo["harmless"] == 2 and weibo["harmless_flagged"] == 1.0
    blocked = int((decisions[np.array(hand8.sources) == "weibo"] == BLOCK).sum())
    assert weibo["blocked"] == blocked and weibo["blocked_harmful"] < 1.0  # the blocked harmless texts count
    assert set(r["clean"]["by_source"]) == {"weibo", "news"}
    assert "by_source" not in robustness_section(y, hand8_scored, {}, seed=0, population=8)["clean"]
