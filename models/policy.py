"""The Article 9 policy: categories, thresholds and word lists as a versioned YAML file.

Policy is data. The shipped file is ``models/policy.yaml``; an operator's own file given with
``--policy FILE`` or ``SHENHE_POLICY`` replaces it. Validation errors name the field and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

SHIPPED_POLICY = Path(__file__).with_name("policy.yaml")
POLICY_ENV = "SHENHE_POLICY"

# The nine slugs, in Article 9 order. The model's output columns follow this order.
CATEGORY_SLUGS: tuple[str, ...] = (
    "constitution",
    "national_security",
    "national_honor",
    "ethnic_hatred",
    "religion_cult",
    "rumor",
    "obscene_violent",
    "insult_defamation",
    "other_illegal",
)


class PolicyError(ValueError):
    """A policy file that cannot be used. ``str(err)`` is a one-line, user-facing reason."""


TermAction = Literal["explain", "review", "block", "allow"]


def today_utc() -> date:
    return datetime.now(UTC).date()


class Term(BaseModel):
    """One word-list entry. In YAML either a plain string (all defaults) or a mapping:
    ``{term: 炸药, action: block, expires: 2027-01-01, pinyin: false, split: false}``.

    ``action``: ``explain`` (reported only), ``review`` (routes the text to review), ``block`` (blocks the
    text on an exact or split-character hit; a homophone-only hit routes to review), ``allow`` (an exact
    phrase, e.g. a brand name, that removes this category's model review/block flag); unset = the
    category's ``term_action``. ``expires``: the entry stops applying on that date (UTC).
    ``pinyin``: also match homophones and pinyin spellings. ``split``: also match the characters split by
    spaces or symbols. Allow entries match the exact phrase only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    term: str
    action: TermAction | None = None
    expires: date | None = None
    pinyin: bool = True
    split: bool = True

    @field_validator("term")
    @classmethod
    def _non_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("terms must be non-empty strings")
        return v

    def expired(self, today: date | None = None) -> bool:
        return self.expires is not None and (today or today_utc()) >= self.expires

    @model_serializer(mode="plain")
    def _compact(self) -> str | dict[str, Any]:
        """A plain string when every option is the default (keeps policy files short)."""
        out: dict[str, Any] = {"term": self.term}
        if self.action is not None:
            out["action"] = self.action
        if self.expires is not None:
            out["expires"] = self.expires
        if not self.pinyin:
            out["pinyin"] = False
        if not self.split:
            out["split"] = False
        return self.term if len(out) == 1 else out


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=1, le=9)
    slug: str
    article_text: str = Field(min_length=1)
    gloss: str = Field(min_length=1)
    description: str = Field(min_length=1)
    review_threshold: float = Field(ge=0.0, le=1.0)
    block_threshold: float = Field(ge=0.0, le=1.0)
    trained: bool
    # Word list (see Term). Hits are reported with positions; `term_action` is the default action of an
    # entry without its own: explain (report only), review (route to review) or block.
    terms: tuple[Term, ...] = ()
    term_action: Literal["explain", "review", "block"] = "explain"
    # Set by training when the block target could not be met on dev: this category never auto-blocks.
    auto_block: bool = True

    @field_validator("slug")
    @classmethod
    def _known_slug(cls, v: str) -> str:
        if v not in CATEGORY_SLUGS:
            raise ValueError(f"unknown category slug {v!r}; expected one of {', '.join(CATEGORY_SLUGS)}")
        return v

    @field_validator("terms", mode="before")
    @classmethod
    def _plain_strings_are_terms(cls, v: object) -> object:
        if isinstance(v, list | tuple):
            return [{"term": t} if isinstance(t, str) else t for t in v]
        return v

    def term_action_of(self, term: Term) -> str:
        return term.action or self.term_action

    @model_validator(mode="after")
    def _review_below_block(self) -> Category:
        if not self.review_threshold < self.block_threshold:
            raise ValueError(
                f"review_threshold ({self.review_threshold}) must be below block_threshold ({self.block_threshold})"
            )
        if self.id != CATEGORY_SLUGS.index(self.slug) + 1:
            raise ValueError(f"slug {self.slug!r} is Article 9 item {CATEGORY_SLUGS.index(self.slug) + 1}, not {self.id}")
        return self

    @property
    def can_block(self) -> bool:
        """The service never blocks on a category the model was not trained on."""
        return self.trained and self.auto_block


class Targets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    block_precision: float = Field(0.95, gt=0.0, le=1.0)
    review_recall: float = Field(0.90, gt=0.0, le=1.0)
    # At most this share of harmless texts (no label at all) may reach a category's review threshold; where
    # the recall target needs more, the cap wins and the bundle's metrics say which recall was reached.
    review_load_cap: float = Field(0.03, gt=0.0, le=1.0)
    # No threshold is set below this: a lower one is fit to noise and sends most texts to review.
    min_threshold: float = Field(0.05, ge=0.0, lt=1.0)
    # A source with at least this many positives of a category (in the fit data, and in the held-apart
    # data) must keep the block precision on its own: the worst such source decides.
    min_source_positives: int = Field(30, ge=1)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    name: str = "article9"
    targets: Targets = Targets()
    categories: tuple[Category, ...]

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_str(cls, v: object) -> object:
        return str(v) if isinstance(v, int | float) else v

    @model_validator(mode="after")
    def _all_nine_once(self) -> Policy:
        slugs = [c.slug for c in self.categories]
        dupes = sorted({s for s in slugs if slugs.count(s) > 1})
        if dupes:
            raise ValueError(f"duplicate categories: {', '.join(dupes)}")
        missing = [s for s in CATEGORY_SLUGS if s not in slugs]
        if missing:
            raise ValueError(f"missing categories: {', '.join(missing)}")
        # Keep Article 9 order regardless of file order.
        object.__setattr__(self, "categories", tuple(sorted(self.categories, key=lambda c: c.id)))
        return self

    def category(self, slug: str) -> Category:
        for c in self.categories:
            if c.slug == slug:
                return c
        raise KeyError(slug)

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(c.slug for c in self.categories)

    @property
    def trained_slugs(self) -> tuple[str, ...]:
        return tuple(c.slug for c in self.categories if c.trained)

    def threshold_margin(self, scores: Mapping[str, float]) -> float | None:
        """How close a text's calibrated scores come to a decision boundary: the smallest distance from a
        trained category's score to its review threshold (or its block threshold, where it can block).
        Small = the model was unsure (active learning serves such items first); None without trained
        categories or scores."""
        best: float | None = None
        for c in self.categories:
            if not c.trained or c.slug not in scores:
                continue
            s = float(scores[c.slug])
            if s != s:  # NaN
                continue
            d = abs(s - c.review_threshold)
            if c.can_block:
                d = min(d, abs(s - c.block_threshold))
            best = d if best is None else min(best, d)
        return best

    def with_updates(self, updates: dict[str, dict[str, object]], version: str | None = None) -> Policy:
        """A copy with some category fields replaced (used by training to write chosen thresholds)."""
        data = self.model_dump()
        data["categories"] = [{**c.model_dump(), **updates.get(c.slug, {})} for c in self.categories]
        if version:
            data["version"] = version
        return Policy.model_validate(data)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        for c in data["categories"]:
            c["terms"] = list(c["terms"])
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _format_validation_error(err: ValidationError, data: object) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    parts: list[str] = []
    node = data
    for i, key in enumerate(loc):
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            slug = item.get("slug") if isinstance(item, dict) else None
            parts.append(f"[{key}]" + (f"({slug})" if slug else ""))
            node = item
        else:
            parts.append(("." if i else "") + str(key))
            node = node.get(key) if isinstance(node, dict) else None
    where = "".join(parts) or "policy"
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: {msg}{extra}"


def parse_policy(text: str, source: str = "<string>") -> Policy:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{source}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping with 'version' and 'categories'")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(f"{source}: {_format_validation_error(e, data)}") from None


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Load ``path``, else ``$SHENHE_POLICY``, else the shipped policy."""
    chosen = path or os.environ.get(POLICY_ENV) or SHIPPED_POLICY
    p = Path(chosen)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{p}: cannot read policy file ({e.__class__.__name__})") from None
    return parse_policy(text, source=str(p))
