"""What the build needs to know about a source besides its rows: licence, citation, loader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shenhe.training.data.records import IssueLog, Record

Loader = Callable[[Path, IssueLog], Iterator[Record]]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str  # folder name under --raw, and the `source` field of its rows
    title: str
    url: str
    licence: str
    commercial: bool  # does the licence allow use in a commercial service?
    citation: str
    official_splits: str  # which official splits the source ships ("" = none: hash split)
    load: Loader
    # Official train+test but no dev: carve dev out of train by the text hash (test untouched).
    dev_from_train: bool = False
