"""Text normalisation shared by training, serving and evaluation.

One function, :func:`normalize`, used identically everywhere so the model sees at serving time
exactly what it saw in training. It keeps, for every output character, the index of the original
character it came from, so spans found in normalised text can be reported in the caller's text.

Steps, in order:
1. drop zero-width, format, control (except whitespace), surrogate and variation-selector characters;
2. Unicode NFKC per character (this also maps full-width ASCII and U+3000 to half-width);
   a character whose NFKC form is longer (ligatures, squared units) is kept as is, so the output
   is never longer than the input;
3. traditional -> simplified Chinese with OpenCC (t2s);
4. whitespace folding (any run -> one space, stripped at both ends);
5. long runs collapsed: the same character more than 3 times, or more than 3 punctuation marks in a row,
   keep only the first 3.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opencc import OpenCC

MAX_RUN = 3
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Cn"}
_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"}


@dataclass(frozen=True, slots=True)
class Normalized:
    """Normalised text plus, per output character, the index of its source character."""

    text: str
    offsets: tuple[int, ...]
    original_length: int

    def to_original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map the half-open span ``[start, end)`` of normalised text to a span of the original text."""
        if not self.offsets or start >= end:
            pos = self.offsets[start] if 0 <= start < len(self.offsets) else self.original_length
            return pos, pos
        start = max(0, min(start, len(self.offsets) - 1))
        end = max(start + 1, min(end, len(self.offsets)))
        return self.offsets[start], self.offsets[end - 1] + 1


@lru_cache(maxsize=1)
def _converter() -> OpenCC:
    import opencc

    return opencc.OpenCC("t2s")


@lru_cache(maxsize=65536)
def _char_form(ch: str) -> str:
    """What one original character becomes after steps 1-2 ('' = dropped)."""
    if ch in _WHITESPACE_CONTROLS:
        return " "
    cat = unicodedata.category(ch)
    if cat in _DROP_CATEGORIES:
        return ""
    cp = ord(ch)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF:  # variation selectors
        return ""
    form = unicodedata.normalize("NFKC", ch)
    if len(form) > 1:
        return ch
    if form and unicodedata.category(form) in _DROP_CATEGORIES:
        return ""
    return form


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def _t2s(chars: list[str]) -> list[str]:
    """Traditional -> simplified. Whole-string conversion keeps phrase context; if it changes the
    length (rare phrase rules), fall back to per-character conversion so offsets stay aligned."""
    conv = _converter()
    joined = "".join(chars)
    out = conv.convert(joined)
    if len(out) == len(chars):
        return list(out)
    return [c2 if len(c2 := conv.convert(c)) == 1 else c for c in chars]


def normalize(text: str) -> Normalized:
    """Normalise ``text`` (see module docstring). Never raises on any ``str``."""
    chars: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        form = _char_form(ch)
        if form:
            chars.append(form)
            offsets.append(i)

    if chars:
        # OpenCC is idempotent in practice but not provably; two passes reach a fixed point on
        # the chains seen in its tables (A->B, B->C).
        chars = _t2s(_t2s(chars))

    out_chars: list[str] = []
    out_offsets: list[int] = []
    run_char = ""
    run_len = 0
    punct_run = 0
    for ch, off in zip(chars, offsets, strict=True):
        if ch.isspace():
            ch = " "
            if not out_chars or out_chars[-1] == " ":
                continue
        if ch == run_char:
            run_len += 1
        else:
            run_char, run_len = ch, 1
        punct_run = punct_run + 1 if _is_punct(ch) else 0
        if run_len > MAX_RUN or punct_run > MAX_RUN:
            continue
        out_chars.append(ch)
        out_offsets.append(off)
    while out_chars and out_chars[-1] == " ":
        out_chars.pop()
        out_offsets.pop()
    return Normalized("".join(out_chars), tuple(out_offsets), len(text))


def normalize_text(text: str) -> str:
    """Just the normalised string."""
    return normalize(text).text
