"""What a prediction is. Shared by the predictor, the API, the review queue and evaluation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Decision = Literal["pass", "review", "block"]
DECISIONS: tuple[Decision, ...] = ("pass", "review", "block")


@dataclass(frozen=True, slots=True)
class TermMatch:
    """A policy word-list hit, with its span in the caller's original text."""

    category: str
    term: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a category contributed to the decision.

    ``kind`` is ``block`` or ``review`` (the calibrated score crossed that threshold) or ``term``
    (a word-list hit with ``term_action: review``). ``span`` is the character span, in the original
    text, of the window that produced the score (the whole text when it fits in one window)."""

    category: str
    kind: Literal["block", "review", "term"]
    score: float
    threshold: float
    span: tuple[int, int]


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
