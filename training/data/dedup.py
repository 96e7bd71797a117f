"""Deduplication key and label-conflict resolution.

Dedup key (near-duplicate definition): the shared normalisation (`models.normalize.normalize_text`:
NFKC, traditional -> simplified, whitespace folded, long runs capped), lower-cased, then with
removed: URLs (http(s)://..., www...., t.cn/...), @mentions, Weibo emoticons such as ``[泪]``, runs of
digits, and every character that is not a letter or a number (punctuation, symbols and emoji,
whitespace). Two texts with the same key are treated as one text: the same post with a different
emoji, link, user mention, number or punctuation.

Label rule for a group of rows sharing a key (documented in data_cards/README.md):
1. Reviewer labels (rows from --extra files) win: the last such row read decides.
2. Otherwise, within one source, a category is kept if at least half of that source's copies carry
   it (majority vote; a tie keeps the category).
3. Across sources, the union of the per-source label sets: each source annotates its own taxonomy
   (COLD judges offensiveness, CED rumours, SophonPlus nothing at all), so one source's "normal" is
   silence about the other sources' categories, not a contradiction.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.data.records import Record

# URL characters are ASCII only: Chinese text often follows a link without a space.
_URL = re.compile(r"(?:https?://|www\.|\bt\.cn/)[A-Za-z0-9\-._~:/?#@!$&'*+,;=%]*", re.IGNORECASE)
_MENTION = re.compile(r"@[^\s@:：,，。.!！?？/()（）\[\]]{1,30}")
_EMOTICON = re.compile(r"\[[^\[\]\s]{1,8}\]")
_DIGITS = re.compile(r"\d+")


def _keep(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def dedup_key(text: str) -> str:
    """The near-duplicate key of ``text`` ('' when nothing but noise is left)."""
    return key_of_normalized(normalize_text(text))


def key_of_normalized(normalized: str) -> str:
    """The dedup key from text already passed through ``normalize_text`` (saves a second pass)."""
    norm = normalized.lower()
    norm = _URL.sub(" ", norm)
    norm = _MENTION.sub(" ", norm)
    norm = _EMOTICON.sub(" ", norm)
    norm = _DIGITS.sub(" ", norm)
    return "".join(ch for ch in norm if _keep(ch))


@dataclass(frozen=True, slots=True)
class Resolution:
    labels: tuple[str, ...]
    conflict: bool  # the copies did not all carry the same labels
    rule: str  # "agree" | "reviewer" | "majority+union"


def resolve_labels(members: Sequence[Record], reviewer: Iterable[bool]) -> Resolution:
    """Apply the label rule (module docstring) to rows sharing one dedup key, in read order;
    ``reviewer[i]`` says whether ``members[i]`` comes from an --extra file."""
    flags = list(reviewer)
    distinct = {m.labels for m in members}
    reviewed = [m for m, is_reviewer in zip(members, flags, strict=True) if is_reviewer]
    if reviewed:
        return Resolution(reviewed[-1].labels, len(distinct) > 1, "reviewer")
    if len(distinct) == 1:
        return Resolution(members[0].labels, False, "agree")
    by_source: dict[str, list[Record]] = {}
    for m in members:
        by_source.setdefault(m.source, []).append(m)
    union: set[str] = set()
    for rows in by_source.values():
        for slug in CATEGORY_SLUGS:
            votes = sum(slug in r.labels for r in rows)
            if votes and 2 * votes >= len(rows):
                union.add(slug)
    return Resolution(tuple(s for s in CATEGORY_SLUGS if s in union), True, "majority+union")
