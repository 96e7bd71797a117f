"""The JSON shapes of the HTTP API (request validation and the OpenAPI document come from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.types import Prediction
from shenhe.serving.config import MAX_ID_CHARS, MAX_ITEMS

DecisionName = Literal["pass", "review", "block"]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable machine code and a human sentence."""

    error: str = Field(description="machine-readable code, e.g. invalid_json, text_too_long, unauthorized")
    message: str = Field(description="what was wrong, in one sentence")
    request_id: str | None = None


# ---- classify ----------------------------------------------------------------------------------


class ClassifyItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(
        None, max_length=MAX_ID_CHARS,
        description="your opaque id for the item (echoed back; stored with review items); no personal data",
    )
    text: StrictStr = Field(description="the text to classify; empty or whitespace-only text passes")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ClassifyItem] = Field(min_length=1, max_length=MAX_ITEMS)


class ReasonOut(BaseModel):
    category: str
    kind: Literal["block", "review", "term", "allow"] = Field(
        description="block/review: the calibrated score crossed that threshold; term: a word-list hit with action "
                    "review or block (span: the hit); allow: an allow-list phrase (span) removed this category's "
                    "model flag")
    score: float
    threshold: float
    span: tuple[int, int] = Field(
        description="character span [start, end) in your original text of the window that produced the score")
    action: str | None = Field(None, description="term: review or block; allow: the model flag removed (review or block)")


class MatchOut(BaseModel):
    category: str
    term: str
    start: int
    end: int
    action: str = Field("explain", description="explain, review, block or allow")
    via: str = Field("exact", description="exact; split (characters split by spaces or symbols); pinyin (homophone "
                                          "or pinyin spelling)")


class ModelRef(BaseModel):
    name: str
    version: str


class ItemResult(BaseModel):
    id: str | None
    decision: DecisionName
    scores: dict[str, float] = Field(description="calibrated probability per category slug, Article 9 order")
    categories: list[str] = Field(description="the categories behind the decision (empty on pass)")
    reasons: list[ReasonOut]
    matches: list[MatchOut] = Field(description="word-list hits with positions in your original text")
    review_id: str | None = Field(description="set when the item was written to the review queue")

    @classmethod
    def from_prediction(cls, item_id: str | None, p: Prediction, review_id: str | None) -> ItemResult:
        return cls(
            id=item_id,
            decision=p.decision,
            scores={k: float(v) for k, v in p.scores.items()},
            categories=list(p.categories),
            reasons=[ReasonOut(category=r.category, kind=r.kind, score=float(r.score), threshold=float(r.threshold),
                               span=(int(r.span[0]), int(r.span[1])), action=r.action) for r in p.reasons],
            matches=[MatchOut(category=m.category, term=m.term, start=m.start, end=m.end, action=m.action, via=m.via)
                     for m in p.matches],
            review_id=review_id,
        )


class ClassifyResponse(BaseModel):
    items: list[ItemResult]
    model: ModelRef
    policy_version: str
    request_id: str


# ---- review ------------------------------------------------------------------------------------


class ReviewItemOut(BaseModel):
    review_id: str
    id: str | None = Field(description="the caller's id sent with the item")
    text: str
    decision: DecisionName
    scores: dict[str, float]
    categories: list[str]
    reasons: list[ReasonOut]
    matches: list[MatchOut]
    model: ModelRef
    policy_version: str
    created_at: datetime
    lease_token: str = Field(description="send it back with the decision; proves you still hold the lease")
    lease_expires_at: datetime
    kind: Literal["review", "audit", "second"] = Field(
        "review", description="review: the model asked; audit: a sampled auto-block; second: a second opinion")


class ReviewDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, StrictBool] = Field(
        description="category slug -> true when the text belongs to it; omitted categories count as false; "
                    "all false = acceptable text",
        json_schema_extra={"propertyNames": {"enum": list(CATEGORY_SLUGS)}},
    )
    reviewer: StrictStr | None = Field(
        None, min_length=1, max_length=200,
        description="ignored: the reviewer recorded is the API key's name (kept for older clients)")
    note: StrictStr | None = Field(None, max_length=4000)
    lease_token: StrictStr | None = Field(None, max_length=64)


class ReviewDecisionOut(BaseModel):
    review_id: str
    status: Literal["decided"]
    labels: list[str] = Field(description="the categories the reviewer confirmed, Article 9 order")
    reviewer: str
    note: str | None
    decided_at: datetime


class StateCounts(BaseModel):
    open: int
    claimed: int
    decided: int


class ReviewStats(StateCounts):
    total: int
    categories: dict[str, StateCounts] = Field(description="counts per category behind the model's decision")


class Health(BaseModel):
    status: str


# ---- admin ---------------------------------------------------------------------------------------


class ReloadOut(BaseModel):
    status: Literal["reloaded", "unchanged"] = Field(
        description="reloaded: a changed bundle or policy now serves in this worker; unchanged: nothing changed on disk")
    changed: list[Literal["bundle", "policy"]]
    model: ModelRef = Field(description="the model this worker serves now")
    policy_version: str
    request_id: str
