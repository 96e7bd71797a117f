"""Word lists that catch evasions: exact, split-character, traditional and pinyin (homophone) hits,
always reported in positions of the original text. Hand-made cases; no model needed."""

from __future__ import annotations

from datetime import date

import pytest

from shenhe.models.normalize import normalize
from shenhe.models.policy import load_policy
from shenhe.models.terms import TermMatcher
from shenhe.models.types import TermMatch


@pytest.fixture(scope="module")
def matcher() -> TermMatcher:
    pol = load_policy().with_updates({
        "insult_defamation": {"terms": ["傻逼", "SB", {"term": "某品牌", "action": "allow"},
                                        {"term": "脑残", "split": False}]},
        "other_illegal": {"terms": [{"term": "炸药", "action": "block"},
                                    {"term": "代开发票", "pinyin": False},
                                    {"term": "办证", "expires": "2026-06-01"}]},
        "obscene_violent": {"terms": []},
    })
    return TermMatcher(pol)


def hits(matcher: TermMatcher, text: str, today: date | None = None) -> list[tuple[str, str, str, str]]:
    """(term, text at the reported span, via, action) per hit: the span is checked on the ORIGINAL text."""
    found: list[TermMatch] = matcher.find(normalize(text), today)
    return [(m.term, text[m.start: m.end], m.via, m.action) for m in found]


@pytest.mark.parametrize(("text", "expected"), [
    ("你这个傻逼", [("傻逼", "傻逼", "exact", "explain")]),
    ("你這個傻逼！", [("傻逼", "傻逼", "exact", "explain")]),  # traditional 這個 normalised; 傻逼 itself
    ("　你这个傻\u200b逼", [("傻逼", "傻\u200b逼", "exact", "explain")]),  # zero-width removed by normalisation
    ("你这个傻 逼啊", [("傻逼", "傻 逼", "split", "explain")]),
    ("你这个傻*逼", [("傻逼", "傻*逼", "split", "explain")]),
    ("傻.逼.", [("傻逼", "傻.逼", "split", "explain")]),
    ("你才是沙比", [("傻逼", "沙比", "pinyin", "explain")]),  # homophone, other tones
    ("你才是煞 笔", [("傻逼", "煞 笔", "pinyin", "explain")]),  # homophone split by a space
    ("ni shi sha bi", [("傻逼", "sha bi", "pinyin", "explain")]),  # pinyin spelling
    ("你是SHABI吧", [("傻逼", "SHABI", "pinyin", "explain")]),
    ("你是ＳＢ吗", [("SB", "ＳＢ", "exact", "explain")]),  # full-width letters, listed abbreviation
    ("你是S B吗", [("SB", "S B", "split", "explain")]),
    ("炸 药怎么做", [("炸药", "炸 药", "split", "block")]),
    ("诈药怎么做", [("炸药", "诈药", "pinyin", "review")]),  # a homophone of a block entry only reviews
    ("某品牌新品上市", [("某品牌", "某品牌", "exact", "allow")]),
])
def test_evasions_are_hits_with_original_positions(matcher: TermMatcher, text: str,
                                                   expected: list[tuple[str, str, str, str]]) -> None:
    assert hits(matcher, text) == expected


@pytest.mark.parametrize("text", [
    "我不傻，逼我也没用",  # clause break between the characters: not split-character
    "this usb stick is shabby",  # SB inside a word; shabi is not a word here
    "shabiness",
    "虾沙饼",  # xia-sha-bing contains the letters shabi but not on syllable boundaries
    "某 品牌",  # allow entries match the exact phrase only
    "脑 残",  # split: false
    "带凯发漂",  # pinyin: false
    "今天天气不错",
    "",
])
def test_near_misses_are_not_hits(matcher: TermMatcher, text: str) -> None:
    assert hits(matcher, text) == []


def test_no_split_entry_still_matches_exactly_and_as_homophone(matcher: TermMatcher) -> None:
    assert hits(matcher, "真是脑残") == [("脑残", "脑残", "exact", "explain")]
    assert hits(matcher, "真是恼蚕") == [("脑残", "恼蚕", "pinyin", "explain")]


def test_expired_entries_are_ignored(matcher: TermMatcher) -> None:
    assert hits(matcher, "专业办证", today=date(2026, 5, 31)) == [("办证", "办证", "exact", "explain")]
    assert hits(matcher, "专业办证", today=date(2026, 6, 1)) == []


def test_positions_survive_long_runs_and_several_hits(matcher: TermMatcher) -> None:
    text = "啊啊啊啊啊啊 傻逼 and 沙比!!!!!! s-h-a-b-i"
    assert hits(matcher, text) == [("傻逼", "傻逼", "exact", "explain"), ("傻逼", "沙比", "pinyin", "explain"),
                                   ("傻逼", "s-h-a-b-i", "pinyin", "explain")]


def test_shipped_template_turns_homophones_off_for_common_words() -> None:
    m = TermMatcher(load_policy())
    assert [x.term for x in m.find(normalize("电脑中了病毒"))] == []  # 冰毒 is pinyin: false
    assert [x.term for x in m.find(normalize("见人就说"))] == []  # 贱人 too
    assert [x.term for x in m.find(normalize("菠菜网站"))] == ["博彩"]  # a known evasion of 博彩
