"""Near-duplicate key and the label-conflict rule."""

from __future__ import annotations

import pytest

from shenhe.training.data.dedup import dedup_key, resolve_labels
from shenhe.training.data.records import Record

BASE = "河南人都是小偷，偷井盖的"


@pytest.mark.parametrize("variant", [
    "河南人都是小偷，偷井盖的😡😡",  # emoji
    "河南人都是小偷偷井盖的！！！",  # punctuation
    "河南人 都是小偷 ， 偷井盖的",  # whitespace
    "@张三 河南人都是小偷，偷井盖的",  # mention
    "河南人都是小偷，偷井盖的 http://t.cn/A6uiL20g",  # link
    "河南人都是小偷，偷井盖的[怒]",  # Weibo emoticon
    "河南人都是小偷，偷井蓋的",  # traditional character
    "河南人都是小偷，偷井盖的１２３",  # full-width digits
])
def test_variants_share_the_key(variant: str) -> None:
    assert dedup_key(variant) == dedup_key(BASE)


def test_different_texts_keep_different_keys() -> None:
    assert dedup_key("河南人都很热情好客") != dedup_key(BASE)
    assert dedup_key("我喜欢猫") != dedup_key("我喜欢狗")


def test_link_glued_to_chinese_text_keeps_the_text() -> None:
    assert dedup_key("http://btt350.cc百家乐龙虎时时彩") == "百家乐龙虎时时彩"


def test_only_noise_gives_an_empty_key() -> None:
    assert dedup_key("👍👍👍") == ""
    assert dedup_key("https://www.quora.com/abc 12345") == ""
    assert dedup_key("@浩夜冰凝 @安然远去此后") == ""


def rec(source: str, n: int, labels: tuple[str, ...]) -> Record:
    return Record(f"{source}:{n}", BASE, labels, source)


def test_agreeing_copies_are_not_a_conflict() -> None:
    r = resolve_labels([rec("A", 1, ("rumor",)), rec("B", 1, ("rumor",))], [False, False])
    assert r.labels == ("rumor",) and not r.conflict


def test_union_across_sources_positive_beats_other_sources_normal() -> None:
    r = resolve_labels([rec("COLD", 1, ("ethnic_hatred",)), rec("SophonPlus", 1, ())], [False, False])
    assert r.labels == ("ethnic_hatred",) and r.conflict and r.rule == "majority+union"


def test_majority_within_a_source_and_tie_keeps_the_category() -> None:
    two_to_one = [rec("A", 1, ()), rec("A", 2, ()), rec("A", 3, ("insult_defamation",))]
    assert resolve_labels(two_to_one, [False] * 3).labels == ()
    tie = [rec("A", 1, ()), rec("A", 2, ("insult_defamation",))]
    assert resolve_labels(tie, [False] * 2).labels == ("insult_defamation",)
    topics = [rec("COLD", 1, ("ethnic_hatred",)), rec("COLD", 2, ("insult_defamation",))]
    assert resolve_labels(topics, [False] * 2).labels == ("ethnic_hatred", "insult_defamation")


def test_last_reviewer_label_wins() -> None:
    members = [rec("COLD", 1, ("ethnic_hatred",)), rec("review", 1, ()), rec("review", 2, ("insult_defamation",))]
    r = resolve_labels(members, [False, True, True])
    assert r.labels == ("insult_defamation",) and r.rule == "reviewer"
    r = resolve_labels(members[:2], [False, True])
    assert r.labels == () and r.conflict
