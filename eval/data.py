"""Read and validate an evaluation file (JSONL).

One object per line: ``{"text": str, "labels": [slug, ...]}`` plus optional ``source`` and ``id``.
An empty ``labels`` list means "not harmful". Blank lines are skipped. The first bad line stops
the run with a one-line error that names the file and the line number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

from .errors import EvalDataError

_SLUG_INDEX = {slug: i for i, slug in enumerate(CATEGORY_SLUGS)}


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


def _parse_line(raw: str, where: str) -> tuple[str, list[int], str | None, str | None]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise EvalDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise EvalDataError(f'{where}: missing "text"')
    text = obj["text"]
    if not isinstance(text, str):
        raise EvalDataError(f'{where}: "text" must be a string, got {type(text).__name__}')
    if "labels" not in obj:
        raise EvalDataError(f'{where}: missing "labels" (use [] for a text that is not harmful)')
    labels = obj["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise EvalDataError(f'{where}: "labels" must be a list of category slugs')
    columns: list[int] = []
    for label in labels:
        if label not in _SLUG_INDEX:
            raise EvalDataError(
                f"{where}: unknown label {label!r}; expected one of {', '.join(CATEGORY_SLUGS)}"
            )
        columns.append(_SLUG_INDEX[label])
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise EvalDataError(f'{where}: "source" must be a string')
    ident = obj.get("id")
    if ident is not None and not isinstance(ident, str | int):
        raise EvalDataError(f'{where}: "id" must be a string or an integer')
    return text, columns, source, None if ident is None else str(ident)


def read_eval_file(path: str | Path) -> EvalSet:
    """Read and validate ``path``; raises :class:`EvalDataError` with a one-line reason."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise EvalDataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise EvalDataError(f"{p}: is a directory, expected a JSONL file") from None
    except OSError as e:
        raise EvalDataError(f"{p}: cannot read ({e.strerror or e.__class__.__name__})") from None

    texts: list[str] = []
    rows: list[list[int]] = []
    sources: list[str | None] = []
    ids: list[str] = []
    for lineno, raw_bytes in enumerate(data.splitlines(), start=1):
        where = f"{p}:{lineno}"
        try:
            raw = raw_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            raise EvalDataError(f"{where}: not valid UTF-8") from None
        if not raw.strip():
            continue
        text, columns, source, ident = _parse_line(raw, where)
        texts.append(text)
        rows.append(columns)
        sources.append(source)
        ids.append(ident if ident is not None else f"line{lineno}")

    if not texts:
        raise EvalDataError(f"{p}: empty file, no examples to evaluate")
    y_true = np.zeros((len(texts), len(CATEGORY_SLUGS)), dtype=bool)
    for i, columns in enumerate(rows):
        y_true[i, columns] = True
    return EvalSet(
        path=p,
        sha256=hashlib.sha256(data).hexdigest(),
        texts=texts,
        y_true=y_true,
        sources=sources,
        ids=ids,
    )
