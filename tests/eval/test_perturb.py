"""Obfuscations: each changes real sentences in the documented, human-reversible way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pypinyin import lazy_pinyin

from shenhe.eval.data import EvalSet
from shenhe.eval.perturb import PERTURBATIONS, perturb_texts, robustness_section
from shenhe.eval.scoring import Scored
from shenhe.models.normalize import normalize_text

TEXTS = [
    "你就是个傻逼，滚出去",
    "喝盐水可以预防新冠病毒，赶紧转发给家人",
    "加微信vx123领取福利，发财机会不要错过",
    "今天天气很好，我们去公园散步吧",
]


def test_normalisation_undoes_the_normalised_kinds() -> None:
    for kind in ("zero_width", "full_width", "traditional"):
        assert PERTURBATIONS[kind].undone_by_normalisation
        out = perturb_texts(TEXTS, kind, seed=0)
        assert [normalize_text(t) for t in out] == [normalize_text(t) for t in TEXTS], kind
    zw = perturb_texts(TEXTS, "zero_width")
    assert all("\u200b" in t or "\u200c" in t or "\u200d" in t or "\ufeff" in t for t in zw)
    assert "发財" in perturb_texts(TEXTS, "traditional")[2] or "發財" in perturb_texts(TEXTS, "traditional")[2]
    assert "ｖｘ１２３" in perturb_texts(TEXTS, "full_width")[2]


@pytest.mark.parametrize(("kind", "inserted"), [("spaces", {" "}), ("symbols", set("*.-_/~、|"))])
def test_insertions_are_removable_and_reach_the_model(kind: str, inserted: set[str]) -> None:
    out = perturb_texts(TEXTS, kind, seed=0)
    for orig, new in zip(TEXTS, out, strict=True):
        assert len(new) > len(orig)
        # removing the inserted characters restores the text (orig has none of them outside ASCII spans)
        restored, i = [], 0
        for ch in new:
            if i < len(orig) and ch == orig[i]:
                restored.append(ch)
                i += 1
            else:
                assert ch in inserted
        assert "".join(restored) == orig
    assert normalize_text(out[0]) != normalize_text(TEXTS[0])  # not undone by normalisation


def test_homophones_keep_the_sound() -> None:
    out = perturb_texts(TEXTS, "homophones", seed=0)
    changed = 0
    for orig, new in zip(TEXTS, out, strict=True):
        assert len(new) == len(orig)
        cjk = [i for i, ch in enumerate(orig) if "\u4e00" <= ch <= "\u9fff"]
        reading = dict(zip(cjk, lazy_pinyin("".join(orig[i] for i in cjk)), strict=True))  # in context
        for i, (a, b) in enumerate(zip(orig, new, strict=True)):
            if a != b:
                changed += 1
                assert i in reading and lazy_pinyin(b)[0] == reading[i], (a, b)
    assert changed >= 5


def test_deterministic_per_seed() -> None:
    assert perturb_texts(TEXTS, "symbols", seed=3) == perturb_texts(TEXTS, "symbols", seed=3)
    assert perturb_texts(TEXTS, "symbols", seed=3) != perturb_texts(TEXTS, "symbols", seed=4)


def test_robustness_drop_is_clean_minus_perturbed(hand8_scored: Scored, hand8: EvalSet) -> None:
    y = hand8.y_true
    worse = dataclasses.replace(hand8_scored, scores=hand8_scored.scores * 0.5)  # nothing reaches .5 any more
    section = robustness_section(y, hand8_scored, {"spaces": (np.ones(8, dtype=bool), worse)}, seed=0, population=8)
    p = section["perturbations"]["spaces"]
    assert section["clean"]["binary_recall"] == pytest.approx(0.8)
    assert p["binary_recall"] == pytest.approx(0.0) and p["binary_recall_drop"] == pytest.approx(0.8)
    assert p["per_category"]["insult_defamation"]["recall_drop"] == pytest.approx(1.0)
    assert p["per_category"]["national_security"]["recall_drop"] is None  # no support
    assert p["changed_share"] == 1.0


def _undo(text: str, table: dict[str, str]) -> str:
    for word, sub in sorted(table.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(sub, word)
    return text


def test_emoji_rewrites_harmful_and_harmless_texts_by_the_table() -> None:
    from shenhe.eval.perturb import EMOJI_TABLE

    texts = ["你妈死了，你这条狗", "我家的猫和狗都很可爱", "河南人也好，东北人也好，地域黑真的没意思。"]
    out = perturb_texts(texts * 20, "emoji", seed=0)
    assert any("🐶" in o for o in out[::3]) and any("🐱" in o or "🐶" in o for o in out[1::3])
    assert any(o != texts[2] for o in out[2::3])  # harmless counter-speech is rewritten too
    for orig, new in zip(texts * 20, out, strict=True):
        # every difference is a table word written as its symbol
        assert new == orig or any(sym in new for sym in EMOJI_TABLE.values())
    assert _undo("你🐴☠了", {"妈": "🐴", "死": "☠"}) == "你妈死了"


def test_split_characters_writes_components() -> None:
    from shenhe.eval.perturb import SPLIT_TABLE

    out = perturb_texts(["你妈的，拿枪来", "今天的天气很好"] * 20, "split", seed=1)
    assert any("女马" in o for o in out[::2]) and any("木仓" in o for o in out[::2])
    assert any("女子" in o for o in out[1::2])
    for orig, new in zip(["你妈的，拿枪来", "今天的天气很好"] * 20, out, strict=True):
        assert _undo(new, SPLIT_TABLE) == orig or new == orig
        assert len(new) >= len(orig)
    assert normalize_text(out[0]) != normalize_text("你妈的，拿枪来") or out[0] == "你妈的，拿枪来"
