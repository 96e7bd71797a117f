"""JSON Lines in and out: the one reader of labelled files, the one reader of text files, the one writer.

Reading rules, shared by every JSONL input (training splits, evaluation files, ``shenhe classify --input``):

- UTF-8, one JSON value per line; a byte-order mark before the first line is ignored; blank lines are skipped.
- The first bad line stops the read with a :class:`JsonlError` whose message is one line naming the file
  and the line (``data/dev.jsonl:12: unknown label 'fake_news'; expected one of ...``).

A *labelled* line is an object ``{"text": str, "labels": [slug, ...]}`` with an optional ``id`` (string or
integer), ``source`` (string) and ``weight`` (a positive sample weight for training, default 1). ``labels`` is required: ``[]`` means "not harmful" (a missing field is an
error rather than a silent negative, so a typo such as ``"label"`` cannot pass as a clean row).

Writing: :func:`atomic_jsonl` writes into a temporary file beside the target and renames it over the target
only when every line is written, so a reader sees the complete old file or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

_SLUG_INDEX = {slug: i for i, slug in enumerate(CATEGORY_SLUGS)}


class JsonlError(ValueError):
    """A JSONL file that cannot be used; ``str(err)`` is one line naming the file (and the line)."""


# ---- reading -------------------------------------------------------------------------------------


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise JsonlError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise JsonlError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as e:
        raise JsonlError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None


def iter_values(path: Path, digest: _Digest | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON value)`` for each non-blank line of ``path``, streamed (the file is never
    held in memory whole). ``digest`` (a hashlib object) is fed every byte of the file as it is read."""
    lineno = 0
    with _open(path) as f:
        for chunk in f:  # split at b"\n"; splitlines() also honours a lone "\r" as text mode would
            if digest is not None:
                digest.update(chunk)
            for line_bytes in chunk.splitlines():
                lineno += 1
                try:
                    line = line_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise JsonlError(f"{path}:{lineno}: not valid UTF-8") from None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise JsonlError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                except RecursionError:
                    raise JsonlError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
                yield lineno, value


def iter_text_records(path: Path, text_field: str = "text") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for a file of texts to classify: each line is an object with a string
    ``text_field``, or a bare JSON string (given back as ``{text_field: string}``)."""
    for lineno, value in iter_values(path):
        obj = {text_field: value} if isinstance(value, str) else value
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise JsonlError(f"{path}:{lineno}: expected an object with a string {text_field!r} field")
        yield lineno, obj


def count_records(path: Path) -> int:
    """Non-blank lines of ``path`` (a progress bar's total; read in binary, without parsing)."""
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


@dataclass(frozen=True)
class LabelledFile:
    """The rows of one labelled JSONL file, as parallel lists (file order)."""

    path: Path
    sha256: str  # of the file's bytes
    lines: list[int]  # each row's line number
    texts: list[str]
    labels: np.ndarray  # (n, 9) bool, Article 9 order
    ids: list[str | None]  # as given (an integer id as its string), None where the line has none
    sources: list[str | None]
    weights: np.ndarray  # (n,) float32 sample weights, 1 where the line has none

    def __len__(self) -> int:
        return len(self.texts)


def _labelled_row(value: Any, where: str) -> tuple[str, list[int], str | None, str | None, float]:
    if not isinstance(value, dict):
        raise JsonlError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if "text" not in value:
        raise JsonlError(f'{where}: missing "text"')
    text = value["text"]
    if not isinstance(text, str):
        raise JsonlError(f'{where}: "text" must be a string, got {type(text).__name__}')
    if "labels" not in value:
        raise JsonlError(f'{where}: missing "labels" (use [] for a text that is not harmful)')
    labels = value["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise JsonlError(f'{where}: "labels" must be a list of category slugs')
    columns: list[int] = []
    for label in labels:
        if label not in _SLUG_INDEX:
            raise JsonlError(f"{where}: unknown label {label!r}; expected one of {', '.join(CATEGORY_SLUGS)}")
        columns.append(_SLUG_INDEX[label])
    source = value.get("source")
    if source is not None and not isinstance(source, str):
        raise JsonlError(f'{where}: "source" must be a string')
    ident = value.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, str | int)):
        raise JsonlError(f'{where}: "id" must be a string or an integer')
    weight = value.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < 1e6:
        raise JsonlError(f"{where}: 'weight' must be a positive number (got {weight!r})")
    return text, columns, source, None if ident is None else str(ident), float(weight)


def read_labelled(path: str | Path) -> LabelledFile:
    """Read and validate a labelled JSONL file (see the module docstring); an empty file gives no rows."""
    p = Path(path)
    digest = hashlib.sha256()
    lines: list[int] = []
    texts: list[str] = []
    columns: list[list[int]] = []
    ids: list[str | None] = []
    sources: list[str | None] = []
    weights: list[float] = []
    for lineno, value in iter_values(p, digest):
        text, cols, source, ident, weight = _labelled_row(value, f"{p}:{lineno}")
        lines.append(lineno)
        texts.append(text)
        columns.append(cols)
        ids.append(ident)
        sources.append(source)
        weights.append(weight)
    labels = np.zeros((len(texts), len(CATEGORY_SLUGS)), dtype=bool)
    for i, cols in enumerate(columns):
        labels[i, cols] = True
    return LabelledFile(p, digest.hexdigest(), lines, texts, labels, ids, sources,
                        np.asarray(weights, dtype=np.float32))


# ---- writing -------------------------------------------------------------------------------------


class JsonlWriter:
    """Writes one JSON object per line (UTF-8, non-ASCII kept as is) to an open text stream."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.written = 0

    def write(self, record: Mapping[str, Any]) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.written += 1

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def atomic_jsonl(path: Path) -> Iterator[JsonlWriter]:
    """A :class:`JsonlWriter` into ``path.tmp`` (parent folders created), renamed over ``path`` when the
    block ends normally; if it raises, the temporary file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as stream:
            yield JsonlWriter(stream)
        os.replace(tmp, path)  # a complete file or none
    finally:
        tmp.unlink(missing_ok=True)
