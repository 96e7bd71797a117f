"""Reading source files as they are: encoding detection, CSV/JSON/TSV parsing, per-row error capture."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from shenhe.training.data.records import IssueLog, MalformedRow, Record

# UTF-8 first (with or without BOM); GB18030 is a superset of GBK/GB2312, the encodings Chinese
# Windows tools write (Telecom_Fraud_Texts_5/label04-last.csv is one).
ENCODINGS = ("utf-8-sig", "gb18030")


def decode(data: bytes) -> tuple[str, str]:
    """Decode bytes with the first encoding that fits; returns (text, encoding)."""
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8/gb18030", data, 0, 1, "no encoding fits")


def read_text(path: Path, log: IssueLog, source: str) -> str | None:
    """The file's text, or None (with a warning naming the file) when missing or undecodable."""
    try:
        text, _ = decode(path.read_bytes())
    except FileNotFoundError:
        log.warn(f"{source}: file {path} is missing; skipped")
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warn(f"{source}: cannot read {path} ({e.__class__.__name__}); skipped")
        return None
    return text


def read_csv(path: Path, log: IssueLog, source: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, row) pairs of a CSV with a header; row numbers count data rows from 0."""
    text = read_text(path, log, source)
    if text is None:
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # NUL byte, oversized field...: skip the line, keep reading
            log.bad_row(source, f"{path.name}#{number}", f"CSV error: {e}")
            number += 1
            continue
        if None in row or any(value is None for value in row.values()):
            log.bad_row(source, f"{path.name}#{number}", f"{len(reader.fieldnames or ())} columns expected")
        else:
            yield number, row
        number += 1


def read_json(path: Path, log: IssueLog, source: str) -> Any:
    text = read_text(path, log, source)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        log.warn(f"{source}: {path} is not valid JSON ({e.msg} at line {e.lineno}); skipped")
        return None


def convert_rows(source: str, path: Path, rows: Iterable[tuple[object, Any]],
                 convert: Callable[[object, Any], Record | None], log: IssueLog) -> Iterator[Record]:
    """Apply ``convert`` to each row; rows that raise are counted as malformed, never fatal.
    ``convert`` may return None for rows that are deliberately not used (not malformed)."""
    for where, row in rows:
        try:
            record = convert(where, row)
        except (MalformedRow, KeyError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
            reason = str(e) if isinstance(e, MalformedRow) else f"{e.__class__.__name__}: {e}"
            log.bad_row(source, f"{path.name}#{where}", reason[:200])
            continue
        if record is not None:
            yield record


def as_int(value: object, allowed: Iterable[int]) -> int:
    """Parse a label column (``1``, ``"1"``, ``"1.0"``) and check it is one of ``allowed``."""
    if isinstance(value, bool):
        raise MalformedRow(f"label {value!r} is not an integer")
    try:
        number = int(float(value)) if isinstance(value, str) else int(value)  # type: ignore[call-overload]  # any cell; int() raises TypeError, caught below
    except (TypeError, ValueError):
        raise MalformedRow(f"label {value!r} is not an integer") from None
    allowed = tuple(allowed)
    if number not in allowed:
        raise MalformedRow(f"label {number} not in {list(allowed)}")
    return number
