"""Registry of the public sources, in the order the build reads them (and the data cards list them)."""

from __future__ import annotations

from shenhe.training.data.sources import (
    ced,
    checked,
    chineseharm,
    cold,
    jsonl,
    sophonplus,
    swsr,
    telecom_fraud,
    toxicn,
)
from shenhe.training.data.sources.spec import SourceSpec

PUBLIC_SOURCES: tuple[SourceSpec, ...] = (
    cold.SPEC,
    toxicn.SPEC,
    swsr.SPEC,
    ced.SPEC,
    checked.SPEC,
    chineseharm.SPEC,
    telecom_fraud.SPEC,
    sophonplus.SPEC,
)
SEED_SPEC = jsonl.SEED_SPEC
ALL_SOURCES: tuple[SourceSpec, ...] = (*PUBLIC_SOURCES, SEED_SPEC)
SOURCE_NAMES: tuple[str, ...] = tuple(s.name for s in ALL_SOURCES)


def get_source(name: str) -> SourceSpec:
    """Look a source up by name (case-insensitive)."""
    for spec in ALL_SOURCES:
        if spec.name.lower() == name.lower():
            return spec
    raise KeyError(name)


__all__ = ["ALL_SOURCES", "PUBLIC_SOURCES", "SEED_SPEC", "SOURCE_NAMES", "SourceSpec", "get_source"]
