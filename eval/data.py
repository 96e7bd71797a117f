"""Read and validate an evaluation file (JSONL).

One object per line: ``{"text": str, "labels": [slug, ...]}`` plus optional ``source`` and ``id``.
An empty ``labels`` list means "not harmful". Blank lines are skipped. The first bad line stops
the run with a one-line error that names the file and the line number. The rules are
:mod:`shenhe.models.jsonl`'s, the same the training splits are read with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shenhe.models.jsonl import JsonlError, read_labelled

from .errors import EvalDataError


@dataclass(frozen=True)
class EvalSet:
    """The examples of one evaluation file, as parallel arrays."""

    path: Path
    sha256: str
    texts: list[str]
    y_true: np.ndarray  # (n, 9) bool, Article 9 order
    sources: list[str | None]
    ids: list[str]

    @property
    def n(self) -> int:
        return len(self.texts)

    @property
    def has_sources(self) -> bool:
        return any(s is not None for s in self.sources)

    def subset(self, index: np.ndarray) -> EvalSet:
        return EvalSet(
            path=self.path,
            sha256=self.sha256,
            texts=[self.texts[i] for i in index],
            y_true=self.y_true[index],
            sources=[self.sources[i] for i in index],
            ids=[self.ids[i] for i in index],
        )


def read_eval_file(path: str | Path) -> EvalSet:
    """Read and validate ``path``; raises :class:`EvalDataError` with a one-line reason. A row without an
    ``id`` is named by its line number (``line7``), as the error-analysis tables show it."""
    try:
        rows = read_labelled(path)
    except JsonlError as e:
        raise EvalDataError(str(e)) from None
    if not len(rows):
        raise EvalDataError(f"{rows.path}: empty file, no examples to evaluate")
    return EvalSet(
        path=rows.path,
        sha256=rows.sha256,
        texts=rows.texts,
        y_true=rows.labels,
        sources=rows.sources,
        ids=[ident if ident is not None else f"line{line}" for ident, line in zip(rows.ids, rows.lines, strict=True)],
    )
