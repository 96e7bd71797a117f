from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shenhe.models.normalize import normalize, normalize_text


def test_issue_example_is_simplified_half_width_and_clean() -> None:
    out = normalize_text("微信：Ｖ　x１２３\u200b４，發財！！！！！！")
    assert out == "微信:V x1234,发财!!!"


def test_traditional_to_simplified_and_fullwidth() -> None:
    assert normalize_text("這個網站很優質，歡迎光臨") == "这个网站很优质,欢迎光临"
    assert normalize_text("ＡＢＣ　１２３") == "ABC 123"


def test_zero_width_control_and_variation_selectors_removed() -> None:
    assert normalize_text("傻\u200b逼\u200d\u2060\ufeff") == "傻逼"
    assert normalize_text("a\x00b\x07c") == "abc"
    assert normalize_text("❤\ufe0f") == "❤"


def test_whitespace_folding_and_runs() -> None:
    assert normalize_text("  你好 \n\t 世界  ") == "你好 世界"
    assert normalize_text("哈哈哈哈哈哈哈") == "哈哈哈"
    assert normalize_text("什么？！？！？！") == "什么?!?"
    assert normalize_text("好好") == "好好"


def test_offsets_point_back_into_original_text() -> None:
    original = "傻\u200b逼，滚回你老家去"
    n = normalize(original)
    i = n.text.index("傻逼")
    s, e = n.to_original_span(i, i + 2)
    assert original[s:e] == "傻\u200b逼"
    j = n.text.index("老家")
    s, e = n.to_original_span(j, j + 2)
    assert original[s:e] == "老家"


def test_empty_and_whitespace_only() -> None:
    assert normalize("").text == ""
    assert normalize(" \u3000\u200b ").text == ""
    assert normalize("").to_original_span(0, 0) == (0, 0)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_properties_on_any_string(s: str) -> None:
    n = normalize(s)
    assert len(n.text) <= len(s)
    assert len(n.offsets) == len(n.text)
    assert all(0 <= o < len(s) for o in n.offsets)
    assert list(n.offsets) == sorted(n.offsets)
    assert normalize_text(n.text) == n.text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x3000, max_codepoint=0x9FFF) | st.sampled_from("！？。，　 \u200b\ufe0fＡａ１")))
def test_properties_on_cjk_heavy_strings(s: str) -> None:
    n = normalize(s)
    assert normalize_text(n.text) == n.text
    assert len(n.text) <= len(s)
    for k in range(len(n.text)):
        a, b = n.to_original_span(k, k + 1)
        assert 0 <= a < b <= len(s)
