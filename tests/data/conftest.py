"""Shared fixtures for the corpus-build tests: small hand-written files in each source's own format.

They are stored as ``fixtures/raw/<Source>/<file>.fixture`` so that nothing in the repository looks like (or is
mistaken for) a copy of a dataset, which lives only in ../shared/data. ``raw_dir`` lays them out under their
real names in a temporary folder, the way the loaders find a source."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


FIXTURE_SUFFIX = ".fixture"


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    stored = FIXTURES / "raw"
    for path in sorted(stored.rglob("*" + FIXTURE_SUFFIX)):
        target = root / path.relative_to(stored).with_name(path.name.removesuffix(FIXTURE_SUFFIX))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    return FIXTURES / "seed"


@pytest.fixture(scope="session")
def extra_file() -> Path:
    return FIXTURES / "extra" / "review.jsonl"
