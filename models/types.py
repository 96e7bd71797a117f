"""What a prediction is. Shared by the predictor, the API, the review queue and evaluation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Decision = Literal["pass", "review", "block"]
DECISIONS: tuple[Decision, ...] = ("pass", "review", "block")


@dataclass(frozen=True, slots=True)
class TermMatch:
    """A policy word-list hit, with its span in the caller's original text.

    ``action``: what the hit does (explain, review, block or allow; a homophone-only hit of a block entry
    reviews). ``via``: how it matched: ``exact``, ``split`` (characters split by spaces or symbols) or
    ``pinyin`` (same toneless pinyin: a homophone or a pinyin spelling)."""

    category: str
    term: str
    start: int
    end: int
    action: str = "explain"
    via: str = "exact"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a category contributed to the decision.

    ``kind`` is ``block`` or ``review`` (the calibrated score crossed that threshold), ``term``
    (a word-list hit whose action is review or block, given in ``action``; ``span`` is the hit) or
    ``allow`` (an allow-list phrase removed this category's model flag; ``action`` is the flag removed,
    ``span`` the phrase). For block/review ``span`` is the character span, in the original text, of the
    window that produced the score (the whole text when it fits in one window)."""

    category: str
    kind: Literal["block", "review", "term", "allow"]
    score: float
    threshold: float
    span: tuple[int, int]
    action: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class Prediction:
    scores: dict[str, float]  # calibrated probability per category slug, all nine, Article 9 order
    decision: Decision
    categories: list[str]  # the categories behind the decision (empty on pass)
    reasons: list[Reason]
    matches: list[TermMatch]
    model: ModelInfo
    policy_version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d
