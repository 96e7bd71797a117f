"""Obfuscation augmentation: real sentences are disguised the way users do it, harmless as often as harmful,
deterministically, with labels unchanged, and with rewrites that the evaluation's perturbations do not use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pypinyin import lazy_pinyin

from shenhe.eval.perturb import _SYMBOLS, EMOJI_TABLE, SPLIT_TABLE, perturb_texts
from shenhe.models.normalize import normalize_text
from shenhe.training.finetune.args import AugmentConfig, TrainingArguments
from shenhe.training.finetune.augment import (
    INSERT_SYMBOLS,
    LOOKALIKE_TABLE,
    Augmenter,
    char_readings,
    homophone_candidates,
    homophone_rewrite,
    insert_rewrite,
    lookalike_rewrite,
    traditional_rewrite,
)

SEED_DIR = Path(__file__).resolve().parents[2] / "training" / "data" / "seed"
SENTENCES = [  # real-looking posts, harmful and harmless
    "你就是个傻逼，滚出去",
    "喝盐水可以预防新冠病毒，赶紧转发给家人",
    "加微信领取福利，发财机会不要错过",
    "今天天气很好，我们去公园散步吧",
    "我家的猫和狗都很可爱",
    "这个软件的信息太多了，看得眼花",
    "你妈死了，你这条狗",
    "东北人和河南人都是我的好朋友",
]


def _seed_rows() -> list[dict]:
    return [json.loads(line) for f in sorted(SEED_DIR.glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def seed_rows() -> list[dict]:
    return _seed_rows()


def _pairs(a: str, b: str) -> set[tuple[str, str]]:
    """(character, replacement) pairs of a same-length rewrite."""
    assert len(a) == len(b)
    return {(x, y) for x, y in zip(a, b, strict=True) if x != y}


def test_every_selected_real_sentence_is_rewritten_and_stays_readable() -> None:
    aug = Augmenter(AugmentConfig(share=1.0), seed=7)
    for epoch in range(3):
        for k, text in enumerate(SENTENCES):
            norm = normalize_text(text)
            rw = aug.augment(norm, epoch, f"row{k}")
            assert rw is not None and rw.kinds, (epoch, text)
            assert rw.text != norm and rw.text == normalize_text(rw.text)  # changed, as the model sees it
            assert set(rw.kinds) <= {"homophone", "lookalike", "insert", "traditional"}


def test_rewrites_are_deterministic_per_seed_epoch_row_and_copy() -> None:
    a = Augmenter(AugmentConfig(share=0.5), seed=3)
    b = Augmenter(AugmentConfig(share=0.5), seed=3)
    texts = [normalize_text(t) for t in SENTENCES] * 20
    ids = [f"r{i}" for i in range(len(texts))]
    one = [a.augment(t, 2, i) for t, i in zip(texts, ids, strict=True)]
    assert one == [b.augment(t, 2, i) for t, i in zip(texts, ids, strict=True)]
    # another epoch, copy or seed gives other rewrites (for most rows)
    for other in ([a.augment(t, 3, i) for t, i in zip(texts, ids, strict=True)],
                  [a.augment(t, 2, i, copy=1) for t, i in zip(texts, ids, strict=True)],
                  [Augmenter(AugmentConfig(share=0.5), seed=4).augment(t, 2, i) for t, i in zip(texts, ids, strict=True)]):
        assert sum(x != y for x, y in zip(one, other, strict=True)) > len(texts) // 3
    # the config's own seed overrides the run's
    assert Augmenter(AugmentConfig(share=0.5, seed=3), seed=99).augment(texts[0], 2, ids[0]) == one[0]


def test_harmless_and_harmful_texts_are_rewritten_at_the_same_rate(seed_rows: list[dict]) -> None:
    share = 0.3
    aug = Augmenter(AugmentConfig(share=share), seed=11)
    texts = [normalize_text(r["text"]) for r in seed_rows]
    harmful = [bool(r["labels"]) for r in seed_rows]
    _, stats = aug.epoch_texts(texts, [r["id"] for r in seed_rows], [0] * len(texts), harmful, epoch=0)
    d = stats.to_dict()
    n_bad = sum(harmful)
    n_ok = len(harmful) - n_bad
    assert n_bad > 1000 and n_ok > 1000  # both groups are large: the rates below mean something
    assert abs(d["changed_share_harmful"] - share) < 0.04, d
    assert abs(d["changed_share_harmless"] - share) < 0.04, d
    assert abs(d["changed_share_harmful"] - d["changed_share_harmless"]) < 0.04, d
    # selection depends on (seed, epoch, row id) only: the same ids with the labels flipped select the same rows
    flipped = aug.epoch_texts(texts, [r["id"] for r in seed_rows], [0] * len(texts), [not h for h in harmful], 0)
    assert flipped[1].selected == stats.selected


def test_homophones_keep_the_pinyin_of_the_text_in_context(seed_rows: list[dict]) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for r in seed_rows[::7]:
        text = normalize_text(r["text"])
        new = homophone_rewrite(text, rng, rate=0.2, n_candidates=3)
        cjk = [i for i, ch in enumerate(text) if "\u4e00" <= ch <= "\u9fff"]
        context = dict(zip(cjk, lazy_pinyin("".join(text[i] for i in cjk)), strict=True))
        for i, (a, b) in enumerate(zip(text, new, strict=True)):
            if a != b:
                checked += 1
                assert lazy_pinyin(b)[0] == context[i], (text, a, b)  # read as the original is read here
                assert lazy_pinyin(b)[0] in char_readings(a)
    assert checked > 500


def test_homophone_candidates_are_common_simplified_characters_with_that_reading() -> None:
    table = homophone_candidates()
    assert len(table) > 300
    for reading, chars in table.items():
        assert len(chars) > 1
        for ch in chars:
            assert lazy_pinyin(ch)[0] == reading and normalize_text(ch) == ch
    assert table["shi"][:3] == ("是", "时", "视")  # most frequent first


def test_each_kind_on_real_sentences() -> None:
    rng = np.random.default_rng(1)
    out = lookalike_rewrite("你就是个傻逼，滚出去", rng, rate=1.0)
    assert out != "你就是个傻逼，滚出去" and "傻逼" not in out and "滚" not in out
    spaced = insert_rewrite("今天天气很好，我们去公园散步吧", np.random.default_rng(2), space_share=1.0)
    assert spaced.replace(" ", "") == "今天天气很好，我们去公园散步吧" and " " in spaced
    assert insert_rewrite("ok 123", rng, 0.5) == "ok 123"  # nothing to separate: unchanged
    # traditional characters are undone by the shared normalisation; Taiwan vocabulary is not
    assert normalize_text(traditional_rewrite("今天天气很好")) == "今天天气很好"
    assert normalize_text(traditional_rewrite("这个软件的信息太多了")) != "这个软件的信息太多了"
    # a text only the traditional kind could touch, and it cannot: another kind is used
    aug = Augmenter(AugmentConfig(share=1.0, weights={"traditional": 1.0, "insert": 0.001}), seed=0)
    rw = aug.augment("今天天气很好", 0, "x")
    assert rw is not None and rw.kinds == ("insert",)


def test_augmenter_tables_are_disjoint_from_the_evaluation_perturbations(seed_rows: list[dict]) -> None:
    """The evaluation must measure rewrites the model has not memorised (eval/perturb.py)."""
    # look-alike / emoji: no shared (word, replacement) pair, no shared replacement string after normalisation
    ours = {(w, r) for w, reps in LOOKALIKE_TABLE.items() for r in reps}
    theirs = set(EMOJI_TABLE.items()) | set(SPLIT_TABLE.items())
    assert not ours & theirs
    their_strings = {normalize_text(r) for r in (*EMOJI_TABLE.values(), *SPLIT_TABLE.values())}
    assert not {normalize_text(r) for _, r in ours} & their_strings
    # symbols: none in common (after normalisation)
    assert not {normalize_text(s) for s in INSERT_SYMBOLS} & {normalize_text(s) for s in _SYMBOLS}
    # homophones: a different generator (corpus-frequent candidates vs any GB2312 level-1 character);
    # on the seed texts, few of the evaluation's (character, replacement) pairs ever occur in training
    texts = [normalize_text(r["text"]) for r in seed_rows]
    evaluated: set[tuple[str, str]] = set()
    for a, b in zip(texts, perturb_texts(texts, "homophones", seed=0), strict=True):
        evaluated |= _pairs(a, b)
    trained: set[tuple[str, str]] = set()
    for epoch in range(3):
        rng = np.random.default_rng(epoch)
        for t in texts:
            trained |= _pairs(t, homophone_rewrite(t, rng, rate=0.2, n_candidates=AugmentConfig().homophone_candidates))
    shared = len(evaluated & trained) / len(evaluated)
    assert len(evaluated) > 5000 and shared < 0.25, shared  # measured: 0.22


def test_config_is_checked_and_round_trips_through_run_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown augmentation kind"):
        AugmentConfig(share=0.3, weights={"pinyin": 1.0})
    with pytest.raises(ValueError, match="share"):
        AugmentConfig(share=1.5)
    with pytest.raises(ValueError, match="weight 0"):
        AugmentConfig(share=0.3, weights={"homophone": 0.0})
    args = TrainingArguments(base="b", data=tmp_path, out=tmp_path / "run",
                             augment=AugmentConfig(share=0.25, weights={"homophone": 1.0, "insert": 0.5}))
    again = TrainingArguments.from_json(json.loads(json.dumps(args.to_json())))
    assert again.augment == args.augment and isinstance(again.augment, AugmentConfig)
    assert TrainingArguments(base="b", data=tmp_path, out=tmp_path).augment.share == 0.0  # off by default
    legacy = {k: v for k, v in args.to_json().items() if k not in ("augment", "sampling")}  # an older run.json
    assert TrainingArguments.from_json(legacy).augment == AugmentConfig()
