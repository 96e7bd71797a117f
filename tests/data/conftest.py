"""Shared fixtures for the corpus-build tests: small files in each source's own format."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    return FIXTURES / "raw"


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    return FIXTURES / "seed"


@pytest.fixture(scope="session")
def extra_file() -> Path:
    return FIXTURES / "extra" / "review.jsonl"
