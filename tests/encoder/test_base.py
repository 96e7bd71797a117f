"""``--base``: any BERT-family checkpoint (local dir or hub id) goes through the same loader."""

from __future__ import annotations

import pytest
import torch

from shenhe.training.encoder.base import (
    BaseEncoderError,
    load_base,
    load_base_config,
    mean_pool,
    pool,
    resolve_base,
)
from shenhe.training.encoder.testing import make_tiny_base

TEXTS = ["这个商家太坑了，收到的货和描述完全不一样！", "加微信日赚500，兼职刷单", "好"]


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_tiny_random_base_runs_end_to_end(tmp_path, kind):
    base_dir = make_tiny_base(tmp_path / kind, tokenizer=kind)
    base = load_base(str(base_dir))
    assert base.text_prefix == "" and base.pooling == "mean" and base.max_length == 128
    assert base.hidden_size == 32 and base.tokenizer.is_fast
    batch = base.tokenizer([base.text_prefix + t for t in TEXTS], padding=True, truncation=True,
                           max_length=base.max_length, return_tensors="pt")
    assert batch["attention_mask"][2].sum() < batch["attention_mask"][0].sum()  # "好" is padded
    unk = base.tokenizer.unk_token_id
    assert (batch["input_ids"][0] != unk).float().mean() > 0.8  # the tiny vocabulary covers real Chinese
    with torch.inference_mode():
        hidden = base.model(**batch).last_hidden_state
    vectors = pool(base, hidden, batch["attention_mask"])
    assert vectors.shape == (3, 32) and torch.isfinite(vectors).all()
    # padding must not change a text's vector
    alone = base.tokenizer([TEXTS[2]], return_tensors="pt")
    with torch.inference_mode():
        single = mean_pool(base.model(**alone).last_hidden_state, alone["attention_mask"])
    assert torch.allclose(single[0], vectors[2], atol=1e-5)


def test_imported_checkpoint_carries_e5_prefix_and_pooling(imported):
    base = load_base(str(imported.out_dir))
    assert base.text_prefix == "passage: " and base.pooling == "mean" and base.max_length == 512
    ids = base.tokenizer(base.text_prefix + "你好")["input_ids"]
    assert base.tokenizer.convert_ids_to_tokens(ids)[:3] == ["<s>", "▁passage", ":"]
    assert load_base_config(str(imported.out_dir)).hidden_size == 384


def test_unreachable_hub_id_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(BaseEncoderError) as err:
        load_base("hfl/rbt3")
    message = str(err.value)
    assert "hfl/rbt3" in message and "local directory" in message and "\n" not in message


def test_missing_local_directory_is_reported(tmp_path):
    with pytest.raises(BaseEncoderError, match="does not exist"):
        resolve_base(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseEncoderError, match="no config.json"):
        resolve_base(str(tmp_path / "empty"))


def test_hub_id_without_network_fails_fast_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr("shenhe.training.encoder.base._hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(BaseEncoderError, match="unreachable") as err:
        load_base("bert-base-chinese")
    assert "bert-base-chinese" in str(err.value) and "\n" not in str(err.value)
