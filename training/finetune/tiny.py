"""A tiny randomly initialised BERT with an XLM-R style unigram tokenizer, for tests and smoke runs.

It has the real encoder's shape of interfaces (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, Metaspace
pre-tokenizer, "passage: " text prefix) at a size that trains in seconds on one CPU thread."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shenhe.models.normalize import normalize_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
TEXT_PREFIX = "passage: "


def build_tokenizer(texts: Sequence[str], bigrams: int = 200) -> Tokenizer:
    """A deterministic unigram tokenizer: every character seen, plus the most frequent character pairs.

    (``UnigramTrainer`` is multi-threaded and not reproducible run to run; tests need the same model.)"""
    import math
    from collections import Counter

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    corpus = [TEXT_PREFIX + normalize_text(t) for t in texts] + ["passage: query: 0123456789 abcdefghijklmnopqrstuvwxyz"]
    chars: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for line in corpus:
        for word in line.split():
            piece = "▁" + word
            chars.update(piece)
            pairs.update(piece[i: i + 2] for i in range(len(piece) - 1))
    total = sum(chars.values()) + sum(pairs.values())
    vocab = [(tok, 0.0) for tok in SPECIALS]
    vocab += [(c, math.log(n / total)) for c, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))]
    top = sorted(((p, n) for p, n in pairs.items() if n > 1), key=lambda kv: (-kv[1], kv[0]))[:bigrams]
    vocab += [(p, math.log(n / total) + 1.0) for p, n in top]
    tok = Tokenizer(Unigram(vocab, unk_id=SPECIALS.index("<unk>"), byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(SPECIALS)
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
