"""The record every loader yields, and the log of problems met while reading sources.

A loader never raises on bad data: an unreadable file or folder becomes a warning, a malformed row
is counted (with a few examples) and skipped, so one broken source never stops a build."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shenhe.models.policy import CATEGORY_SLUGS

SPLITS: tuple[str, ...] = ("train", "dev", "test")
NORMAL = "normal"  # the table's name for rows with no category (labels == [])
MAX_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Record:
    """One labelled text as read from a source.

    ``labels`` is a sorted tuple of category slugs (empty = normal text). ``meta`` holds what the
    source says beyond the label (topic, file, row, official split under ``meta["split"]``)."""

    id: str
    text: str
    labels: tuple[str, ...]
    source: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [slug for slug in self.labels if slug not in CATEGORY_SLUGS]
        if unknown:
            raise ValueError(f"record {self.id}: unknown category slug(s) {unknown}")
        # Article-9 order, no repeats: equal label sets compare equal.
        ordered = tuple(slug for slug in CATEGORY_SLUGS if slug in self.labels)
        object.__setattr__(self, "labels", ordered)

    @property
    def official_split(self) -> str | None:
        return self.meta.get("split")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "labels": list(self.labels), "source": self.source}


def make_record(source: str, local_id: str, text: object, labels: tuple[str, ...] | list[str],
                **meta: Any) -> Record:
    """Build a record with a global id ``<source>:<local_id>``; a non-string or blank text raises
    :class:`MalformedRow` so the caller counts it."""
    if not isinstance(text, str):
        raise MalformedRow(f"text is {type(text).__name__}, not a string")
    text = text.strip()
    if not text:
        raise MalformedRow("empty text")
    return Record(id=f"{source}:{local_id}", text=text, labels=tuple(labels), source=source,
                  meta={k: v for k, v in meta.items() if v is not None})


class MalformedRow(ValueError):
    """A row that cannot be turned into a record (missing column, unknown label, empty text...)."""


@dataclass
class IssueLog:
    """Warnings and malformed-row counts collected during a build (reported, never fatal)."""

    warnings: list[str] = field(default_factory=list)
    malformed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def bad_row(self, source: str, where: str, reason: str) -> None:
        self.malformed[source] += 1
        examples = self.examples.setdefault(source, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{where}: {reason}")
