"""The onnxruntime Predictor on the tiny bundle: structure, policy rules, windows, word lists, threads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shenhe.models.bundle import load_bundle
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.predictor import Predictor
from shenhe.models.types import DECISIONS, Prediction

INSULT = "你这个傻逼，滚回你老家去"
NICE = "今天天气不错，出去走走"
FILLER = "我们今天在公园散步，看到很多人在跳舞和下棋，气氛非常热闹。" * 12


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor(tiny_bundle, intra_op_threads=1)


def test_prediction_has_all_fields(predictor: Predictor) -> None:
    preds = predictor.predict([INSULT, NICE])
    assert len(preds) == 2
    for p in preds:
        assert isinstance(p, Prediction)
        assert tuple(p.scores) == CATEGORY_SLUGS
        assert all(0.0 <= v <= 1.0 for v in p.scores.values())
        assert p.decision in DECISIONS
        assert (p.decision == "pass") == (p.categories == [])
        assert p.model.name == "tiny" and p.model.version == "0.0.1"
        assert p.policy_version == predictor.policy.version
        json.dumps(p.to_dict(), ensure_ascii=False)  # serialisable as the API returns it


def test_untrained_categories_score_zero_and_never_block(predictor: Predictor) -> None:
    untrained = [s for s in CATEGORY_SLUGS if s not in predictor.manifest.trained_categories]
    assert "constitution" in untrained and "religion_cult" in untrained  # no fixture rows for them
    always = predictor.policy.with_updates(
        {s: {"review_threshold": 0.0, "block_threshold": 0.0001, "trained": True, "auto_block": True}
         for s in CATEGORY_SLUGS})
    predictor.set_policy(always)
    try:
        (p,) = predictor.predict([NICE])
        assert p.decision == "block"
        assert set(p.categories) == set(predictor.manifest.trained_categories)
        for slug in untrained:
            assert p.scores[slug] == 0.0
            assert slug not in p.categories
    finally:
        predictor.set_policy(predictor.bundle.policy)


def test_decision_follows_thresholds(predictor: Predictor) -> None:
    (scores,) = predictor.score([INSULT])
    c = CATEGORY_SLUGS.index("insult_defamation")
    s = float(scores[c])
    pol = predictor.bundle.policy
    review_only = pol.with_updates({slug: {"review_threshold": 0.999, "block_threshold": 1.0}
                                    for slug in CATEGORY_SLUGS if slug != "insult_defamation"})
    cases = {
        "block": {"review_threshold": max(0.0, s - 0.02), "block_threshold": max(0.01, s - 0.01), "auto_block": True},
        "review": {"review_threshold": max(0.0, s - 0.01), "block_threshold": min(1.0, s + 0.01)},
        "pass": {"review_threshold": min(0.998, s + 0.001), "block_threshold": 0.999},
    }
    for expected, upd in cases.items():
        predictor.set_policy(review_only.with_updates({"insult_defamation": upd}))
        try:
            (pred,) = predictor.predict([INSULT])
        finally:
            predictor.set_policy(pol)
        model_decision = "pass" if pred.decision == "review" and all(r.kind == "term" for r in pred.reasons) else pred.decision
        assert model_decision == expected, (expected, s, upd, pred.reasons)
        if expected != "pass":
            (reason,) = [r for r in pred.reasons if r.kind != "term"]
            assert reason.category == "insult_defamation" and reason.kind == expected
            assert reason.span == (0, len(INSULT))


def test_auto_block_false_caps_at_review(predictor: Predictor) -> None:
    pol = predictor.bundle.policy.with_updates(
        {s: {"review_threshold": 0.0, "block_threshold": 0.0001, "auto_block": False} for s in CATEGORY_SLUGS})
    predictor.set_policy(pol)
    try:
        (p,) = predictor.predict([INSULT])
    finally:
        predictor.set_policy(predictor.bundle.policy)
    assert p.decision == "review"
    assert all(r.kind in ("review", "term") for r in p.reasons)


def test_word_list_hit_in_original_positions(predictor: Predictor) -> None:
    text = "　你這個傻逼！"  # full-width space, traditional characters: normalised before matching
    (p,) = predictor.predict([text])
    hits = [m for m in p.matches if m.term == "傻逼"]
    assert hits and hits[0].category == "insult_defamation"
    assert text[hits[0].start: hits[0].end] == "傻逼"
    review_terms = predictor.bundle.policy.with_updates({"insult_defamation": {"term_action": "review",
                                                                               "review_threshold": 0.999,
                                                                               "block_threshold": 1.0}})
    predictor.set_policy(review_terms)
    try:
        (p,) = predictor.predict([text])
    finally:
        predictor.set_policy(predictor.bundle.policy)
    assert p.decision in ("review", "block")
    term = [r for r in p.reasons if r.kind == "term"]
    assert term and term[0].category == "insult_defamation" and text[term[0].span[0]: term[0].span[1]] == "傻逼"


def test_empty_and_whitespace_texts_pass(predictor: Predictor) -> None:
    for p in predictor.predict(["", "   \n\t", "\u200b"]):
        assert p.decision == "pass"
        assert all(v == 0.0 for v in p.scores.values())


def test_long_text_reason_points_at_a_window(predictor: Predictor) -> None:
    text = FILLER + INSULT
    pol = predictor.bundle.policy.with_updates({s: {"review_threshold": 0.0} for s in CATEGORY_SLUGS})
    predictor.set_policy(pol)
    try:
        (p,) = predictor.predict([text])
    finally:
        predictor.set_policy(predictor.bundle.policy)
    assert p.reasons
    spans = {r.span for r in p.reasons}
    for start, end in spans:
        assert 0 <= start < end <= len(text)
    assert any(end - start < len(text) for start, end in spans)  # a window, not the whole text


def test_long_text_score_is_max_over_its_windows(predictor: Predictor) -> None:
    from shenhe.models.normalize import normalize_text
    from shenhe.models.windowing import pad_batch

    text = FILLER + INSULT
    windows = predictor.windower.windows([normalize_text(text)])
    assert len(windows) > 1 and all(len(w.ids) <= predictor.manifest.max_length for w in windows)
    per_window = []
    for w in windows:  # one window per call: no batch effects, so the comparison is exact
        ids, mask = pad_batch([w], predictor.manifest.pad_token_id)
        (logits,) = predictor.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        per_window.append([predictor.manifest.calibration[s].apply(logits[0, c:c + 1])[0]
                           if s in predictor.manifest.trained_categories else 0.0
                           for c, s in enumerate(CATEGORY_SLUGS)])
    (whole,) = predictor.score([text], batch_size=1)
    assert np.allclose(whole, np.max(per_window, axis=0), atol=1e-9)


def test_batching_and_padding_do_not_change_scores(predictor: Predictor) -> None:
    texts = [INSULT, NICE, FILLER + INSULT, "好"]
    together = predictor.score(texts, batch_size=4)
    alone = np.vstack([predictor.score([t], batch_size=1) for t in texts])
    # INT8 dynamic quantisation takes activation ranges per batch, so neighbours move a score slightly
    # (~1e-3 here); padding itself is masked out. Anything larger would be a padding/mask bug.
    assert np.allclose(together, alone, atol=0.01)
    assert not np.allclose(together[:, predictor.manifest.trained_mask], 0.0)


def test_threads_are_set_explicitly(tiny_bundle: Path) -> None:
    p = Predictor(tiny_bundle, intra_op_threads=2)
    opts = p.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    from shenhe.models.predictor import default_threads

    assert Predictor(tiny_bundle).session.get_session_options().intra_op_num_threads == default_threads()
    quiet = Predictor(tiny_bundle, intra_op_threads=1, allow_spinning=False).session.get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_bundle_loads_with_hashes(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert b.manifest.slugs == CATEGORY_SLUGS
    assert b.manifest.text_prefix == "passage: "
    assert set(b.manifest.files) >= {"model.onnx", "tokenizer.json", "policy.yaml", "metrics.json", "MODEL_CARD.md"}
    for name in ("bundle.json", "model.onnx", "tokenizer.json", "policy.yaml", "metrics.json", "MODEL_CARD.md"):
        assert (tiny_bundle / name).is_file()


def test_predictor_imports_neither_torch_nor_transformers(tiny_bundle: Path) -> None:
    code = (
        "import sys\n"
        "from models.predictor import Predictor\n"
        f"p = Predictor({str(tiny_bundle)!r}, intra_op_threads=1)\n"
        "p.predict(['你好', '你这个傻逼'])\n"
        "bad = sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "", f"predictor pulled in: {out.stdout.strip()}"


def _scores(**by_slug: float) -> np.ndarray:
    return np.array([by_slug.get(s, 0.0) for s in CATEGORY_SLUGS])


def _with_lists(predictor: Predictor, updates: dict[str, dict[str, object]]) -> None:
    base = predictor.bundle.policy
    predictor.set_policy(base.with_updates({slug: {"review_threshold": 0.5, "block_threshold": 0.9, "auto_block": True, **u}
                                            for slug, u in updates.items()}))


def test_allow_phrase_removes_the_model_flag_and_says_so(predictor: Predictor) -> None:
    _with_lists(predictor, {"insult_defamation": {"terms": [{"term": "傻白甜", "action": "allow"}]}})
    try:
        text = "新品：傻白甜奶茶"
        p = predictor.decide(text, _scores(insult_defamation=0.95))
        flagged = predictor.decide("新品奶茶", _scores(insult_defamation=0.95))
        other = predictor.decide(text, _scores(insult_defamation=0.95, rumor=0.6))
    finally:
        predictor.set_policy(predictor.bundle.policy)
    assert flagged.decision == "block"  # without the phrase the model flag stands
    assert p.decision == "pass" and p.categories == []
    (allow,) = p.reasons
    assert (allow.kind, allow.category, allow.action) == ("allow", "insult_defamation", "block")
    assert text[allow.span[0]: allow.span[1]] == "傻白甜"
    assert other.decision == "review" and other.categories == ["rumor"]  # other categories are untouched


def test_block_entry_blocks_and_homophone_of_it_reviews(predictor: Predictor) -> None:
    # constitution is untrained: the model never blocks it, but an operator's listed word does.
    _with_lists(predictor, {"constitution": {"terms": [{"term": "炸药", "action": "block"}]},
                            "rumor": {"terms": ["谣言"], "term_action": "review"}})
    try:
        text = "教你做炸*药"
        p = predictor.decide(text, _scores())
        homophone = predictor.decide("教你做诈药", _scores())
        review = predictor.decide("这是谣 言吧", _scores())
    finally:
        predictor.set_policy(predictor.bundle.policy)
    assert p.decision == "block" and p.categories == ["constitution"]
    (r,) = p.reasons
    assert (r.kind, r.action) == ("term", "block") and text[r.span[0]: r.span[1]] == "炸*药"
    assert homophone.decision == "review" and homophone.reasons[0].action == "review"
    assert homophone.matches[0].via == "pinyin"
    assert review.decision == "review" and review.categories == ["rumor"]
    assert "这是谣 言吧"[review.matches[0].start: review.matches[0].end] == "谣 言"


def test_expired_block_entry_no_longer_blocks(predictor: Predictor) -> None:
    _with_lists(predictor, {"other_illegal": {"terms": [{"term": "代开发票", "action": "block",
                                                          "expires": "2020-01-01"}]}})
    try:
        p = predictor.decide("代开发票联系我", _scores())
    finally:
        predictor.set_policy(predictor.bundle.policy)
    assert p.decision == "pass" and p.matches == []
