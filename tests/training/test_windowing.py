"""The predictor's windows are exactly the transformers tokenizer's tokens, and spans map to original text."""

from __future__ import annotations

from pathlib import Path

import pytest

from shenhe.models.normalize import normalize
from shenhe.models.windowing import WindowTokenizer, max_over_windows

SHORT = ["你这个傻逼，滚回你老家去", "今天天气不错，出去走走", "ABC全角ＡＢＣ 123", "x"]
LONG = "我们今天在公园散步，看到很多人在跳舞和下棋，气氛非常热闹。" * 10 + "你这个傻逼，滚回你老家去。"


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_run: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_run / "model" / "encoder"))


def test_short_texts_match_transformers_with_prefix(hf_tokenizer) -> None:
    w = WindowTokenizer(hf_tokenizer.backend_tokenizer, max_length=48, stride=8, pad_token_id=1,
                        text_prefix="passage: ")
    for text in SHORT:
        norm = normalize(text).text
        (win,) = w.windows([norm])
        assert list(win.ids) == hf_tokenizer("passage: " + norm)["input_ids"], text


def test_long_text_windows_match_transformers_overflow(hf_tokenizer) -> None:
    norm = normalize(LONG).text
    w = WindowTokenizer(hf_tokenizer.backend_tokenizer, max_length=32, stride=8, pad_token_id=1)
    windows = w.windows([norm])
    ref = hf_tokenizer(norm, max_length=32, truncation=True, stride=8, return_overflowing_tokens=True)["input_ids"]
    assert len(windows) > 3
    assert [list(x.ids) for x in windows] == ref
    assert all(len(x.ids) <= 32 for x in windows)
    # Consecutive windows overlap and together cover the whole text.
    assert windows[0].char_start == 0 and windows[-1].char_end == len(norm)
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.char_start < a.char_end


def test_prefix_is_in_every_window_and_length_is_kept(hf_tokenizer) -> None:
    w = WindowTokenizer(hf_tokenizer.backend_tokenizer, max_length=32, stride=8, pad_token_id=1,
                        text_prefix="passage: ")
    prefix = tuple(hf_tokenizer("passage:", add_special_tokens=False)["input_ids"])
    windows = w.windows([normalize(LONG).text])
    for win in windows:
        assert len(win.ids) <= 32
        assert win.ids[0] == hf_tokenizer.cls_token_id and win.ids[-1] == hf_tokenizer.sep_token_id
        assert win.ids[1: 1 + len(prefix)] == prefix


def test_window_span_maps_back_to_original_text(hf_tokenizer) -> None:
    original = "　　" + LONG.replace("你这个", "你這個")  # full-width spaces + traditional characters
    n = normalize(original)
    w = WindowTokenizer(hf_tokenizer.backend_tokenizer, max_length=32, stride=8, pad_token_id=1)
    last = w.windows([n.text])[-1]
    start, end = n.to_original_span(last.char_start, last.char_end)
    assert original[start:end].endswith("滚回你老家去。")
    assert "你這個傻逼" in original[start:end]


def test_max_over_windows_keeps_the_window_that_scored() -> None:
    import numpy as np

    from shenhe.models.windowing import Window

    windows = [Window(0, (0, 5, 2), 0, 3), Window(0, (0, 6, 2), 2, 6), Window(1, (0, 7, 2), 0, 2)]
    values = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.3]])
    best, arg = max_over_windows(values, windows, 2)
    assert best.tolist() == [[0.8, 0.9], [0.3, 0.3]]
    assert arg.tolist() == [[1, 0], [2, 2]]


def test_bad_window_settings_are_rejected(hf_tokenizer) -> None:
    with pytest.raises(ValueError, match="stride"):
        WindowTokenizer(hf_tokenizer.backend_tokenizer, max_length=16, stride=14)
    with pytest.raises(ValueError, match="max_length"):
        WindowTokenizer(hf_tokenizer.backend_tokenizer, max_length=3, stride=0, text_prefix="passage: ")


def _real_encoder_dir() -> Path | None:
    try:
        from shenhe.training.encoder.base import default_encoder_dir
    except ImportError:
        return None
    d = default_encoder_dir()
    return d if (d / "tokenizer.json").is_file() else None


@pytest.mark.skipif(_real_encoder_dir() is None, reason="imported encoder not present (shenhe encoder import)")
def test_real_encoder_tokenizer_windows_match_transformers() -> None:
    from transformers import AutoTokenizer

    d = _real_encoder_dir()
    assert d is not None
    hf = AutoTokenizer.from_pretrained(str(d))
    texts = SHORT + ["【转发】紧急通知！！！明天全市停水，，，大家赶快囤水😱 http://t.cn/abc", "ｆｕｌｌ　ｗｉｄｔｈ　１２３"]
    w = WindowTokenizer.from_file(d / "tokenizer.json", max_length=128, stride=32, pad_token_id=hf.pad_token_id,
                                  text_prefix="passage: ")
    for text in texts:
        norm = normalize(text).text
        (win,) = w.windows([norm])
        assert list(win.ids) == hf("passage: " + norm)["input_ids"], text
    norm = normalize(LONG * 3).text
    plain = WindowTokenizer.from_file(d / "tokenizer.json", max_length=64, stride=16, pad_token_id=hf.pad_token_id)
    ref = hf(norm, max_length=64, truncation=True, stride=16, return_overflowing_tokens=True)["input_ids"]
    assert [list(x.ids) for x in plain.windows([norm])] == ref
