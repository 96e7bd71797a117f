"""Word-list matching that catches common evasions, reported in original-text positions.

Every entry is matched on the shared normalisation (:mod:`models.normalize`: full/half width, traditional
-> simplified, zero-width removal, ...), lower-cased, in three ways:

* ``exact``: the entry's characters appear as they are;
* ``split``: the same characters split by spaces or symbols (``傻 逼``, ``傻*逼``, ``s.b``): separators are
  whitespace and punctuation/symbol characters except the clause breakers ``，,。！!？?；;：:、`` (so ``我不傻，逼我
  也没用`` is not a hit); digits and letters are never skipped;
* ``pinyin``: the toneless pinyin of the text equals the entry's (homophones ``沙比`` for ``傻逼``, pinyin
  spellings ``sha bi`` / ``shabi``). One reading per character (pypinyin's most common one), on both sides.
  A match must start and end on a syllable boundary, and a run of Latin letters is one word (``shabi`` in
  ``shabiness`` is not a hit). Only entries with at least one Chinese character get a pinyin form;
  an abbreviation such as ``sb`` is a hit only when the operator lists it as an entry of its own.

An entry made of Latin letters or digits only must stand as a word (``sb`` does not hit inside ``usb``).
Entries with ``split: false`` match exactly only; ``pinyin: false`` turns the homophone match off; ``allow``
entries match exactly only. Expired entries never match.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from shenhe.models.normalize import Normalized, normalize
from shenhe.models.policy import Policy, Term, today_utc
from shenhe.models.types import TermMatch

CLAUSE_BREAKS = frozenset("，,。！!？?；;：:、")
_BARRIER = "\x00"  # never part of a key: stops a pinyin match from crossing digits or other characters


def is_separator(ch: str) -> bool:
    """Skipped by split-character matching: whitespace, punctuation and symbols except clause breakers."""
    if ch.isspace():
        return True
    if ch in CLAUSE_BREAKS:
        return False
    return unicodedata.category(ch)[0] in "PS"


def _is_latin(ch: str) -> bool:
    return "a" <= ch <= "z"


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


@lru_cache(maxsize=65536)
def syllable(ch: str) -> str:
    """Toneless pinyin of one Chinese character ('' for anything else); ü is written v."""
    from pypinyin import Style, lazy_pinyin

    out = lazy_pinyin(ch, style=Style.NORMAL, errors="ignore")
    return out[0].lower() if len(out) == 1 and out[0].isascii() and out[0].isalpha() else ""


def _lower(text: str) -> str:
    hay = text.lower()
    if len(hay) != len(text):  # a few characters change length when lower-cased; keep positions exact
        hay = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return hay


def pinyin_key(key: str) -> str:
    """The pinyin form of a (normalised, lower-cased) entry: '' when it has no Chinese character or holds
    anything besides Chinese characters, Latin letters and separators."""
    parts: list[str] = []
    has_cjk = False
    for ch in key:
        if is_separator(ch):
            continue
        syl = syllable(ch)
        if syl:
            parts.append(syl)
            has_cjk = True
        elif _is_latin(ch):
            parts.append(ch)
        else:
            return ""
    return "".join(parts) if has_cjk else ""


@dataclass(frozen=True, slots=True)
class _Entry:
    category: str
    term: Term
    action: str  # the entry's action, or its category's term_action
    plain: str  # normalised, lower-cased
    key: str  # the same with separators removed
    word: bool  # Latin letters/digits at its start (end): needs a word boundary there
    word_end: bool


def _compact(hay: str) -> tuple[str, list[int]]:
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(hay):
        if not is_separator(ch):
            chars.append(ch)
            index.append(i)
    return "".join(chars), index


def _pinyin_view(hay: str) -> tuple[str, list[int], set[int]]:
    """Letters of the text's pinyin (Chinese characters as syllables, Latin letters as they are, separators
    dropped, anything else a barrier), the index in ``hay`` of each letter and the syllable/word boundaries."""
    chars: list[str] = []
    index: list[int] = []
    bounds: set[int] = {0}
    in_latin = False
    for i, ch in enumerate(hay):
        if _is_latin(ch):
            if not in_latin:
                bounds.add(len(chars))
                in_latin = True
            chars.append(ch)
            index.append(i)
            continue
        if in_latin:
            bounds.add(len(chars))
            in_latin = False
        if is_separator(ch):
            continue
        syl = syllable(ch)
        if syl:
            bounds.add(len(chars))
            chars.extend(syl)
            index.extend([i] * len(syl))
            bounds.add(len(chars))
        else:
            chars.append(_BARRIER)
            index.append(i)
            bounds.add(len(chars))
    bounds.add(len(chars))
    return "".join(chars), index, bounds


class TermMatcher:
    """Word-list hits (pyahocorasick, one automaton over the separator-free text, one over its pinyin)."""

    def __init__(self, policy: Policy) -> None:
        import ahocorasick

        self._text = ahocorasick.Automaton()
        self._pinyin = ahocorasick.Automaton()
        by_key: dict[str, list[_Entry]] = {}
        by_pinyin: dict[str, list[_Entry]] = {}
        for cat in policy.categories:
            for term in cat.terms:
                plain = _lower(normalize(term.term).text)
                key, _ = _compact(plain)
                if not key:
                    continue
                action = cat.term_action_of(term)
                entry = _Entry(cat.slug, term, action, plain, key, _is_word_char(key[0]), _is_word_char(key[-1]))
                by_key.setdefault(key, []).append(entry)
                py = pinyin_key(key) if term.pinyin and action != "allow" else ""
                if py:
                    by_pinyin.setdefault(py, []).append(entry)
        for key, entries in by_key.items():
            self._text.add_word(key, (len(key), entries))
        for key, entries in by_pinyin.items():
            self._pinyin.add_word(key, (len(key), entries))
        self._has_text = bool(by_key)
        self._has_pinyin = bool(by_pinyin)
        if self._has_text:
            self._text.make_automaton()
        if self._has_pinyin:
            self._pinyin.make_automaton()

    def find(self, norm: Normalized, today: date | None = None) -> list[TermMatch]:
        if not self._has_text or not norm.text:
            return []
        today = today or today_utc()
        hay = _lower(norm.text)
        found: dict[tuple[str, str, int, int], TermMatch] = {}

        def add(entry: _Entry, hay_start: int, hay_end: int, via: str) -> None:
            start, end = norm.to_original_span(hay_start, hay_end)
            k = (entry.category, entry.term.term, start, end)
            if k in found:
                return
            action = entry.action
            if via == "pinyin" and action == "block":
                action = "review"  # a homophone is not the listed word: a person decides
            found[k] = TermMatch(category=entry.category, term=entry.term.term, start=start, end=end,
                                 action=action, via=via)

        compact, index = _compact(hay)
        for last, (length, entries) in self._text.iter(compact):
            hay_start, hay_end = index[last - length + 1], index[last] + 1
            for entry in entries:
                exact = hay[hay_start:hay_end] == entry.plain
                if entry.term.expired(today) or (not exact and (not entry.term.split or entry.action == "allow")):
                    continue
                if entry.word and hay_start > 0 and _is_word_char(hay[hay_start - 1]):
                    continue
                if entry.word_end and hay_end < len(hay) and _is_word_char(hay[hay_end]):
                    continue
                add(entry, hay_start, hay_end, "exact" if exact else "split")
        if self._has_pinyin:
            letters, pindex, bounds = _pinyin_view(hay)
            for last, (length, entries) in self._pinyin.iter(letters):
                first = last - length + 1
                if first not in bounds or last + 1 not in bounds:
                    continue
                hay_start, hay_end = pindex[first], pindex[last] + 1
                for entry in entries:
                    if entry.term.expired(today) or not entry.term.split and _compact(hay[hay_start:hay_end])[0] != hay[hay_start:hay_end]:
                        continue
                    add(entry, hay_start, hay_end, "pinyin")
        return sorted(found.values(), key=lambda m: (m.start, m.end, m.category, m.term))
