"""A tiny randomly initialised BERT with an XLM-R style unigram tokenizer, for tests and smoke runs.

It has the real encoder's shape of interfaces (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, Metaspace
pre-tokenizer, "passage: " text prefix) at a size that trains in seconds on one CPU thread."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from models.normalize import normalize_text

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
TEXT_PREFIX = "passage: "


def build_tokenizer(texts: Sequence[str], vocab_size: int = 600):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>",
                             shrinking_factor=0.75, n_sub_iterations=2)
    corpus = [TEXT_PREFIX + normalize_text(t) for t in texts] + ["passage: query: 0123456789 abc ABC"]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


def make_tiny_encoder(out_dir: Path, texts: Sequence[str], hidden: int = 32, layers: int = 2, heads: int = 2,
                      max_positions: int = 130, seed: int = 0) -> Path:
    """Write a loadable checkpoint directory (config, weights, tokenizer, shenhe_encoder.json)."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tok = build_tokenizer(texts)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=max_positions)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2,
                        max_position_embeddings=max_positions, pad_token_id=tok.token_to_id("<pad>"))
    model = BertModel(config, add_pooling_layer=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    (out_dir / "shenhe_encoder.json").write_text(
        json.dumps({"text_prefix": TEXT_PREFIX, "pooling": "mean", "max_length": max_positions}) + "\n",
        encoding="utf-8")
    return out_dir
