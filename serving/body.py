"""Request bodies, parsed by hand so that each problem gets its own error code: the size cap (413),
UTF-8 (``invalid_encoding``), JSON (``invalid_json``), unpaired surrogates (``invalid_text``), then the
pydantic schema (``invalid_request``, with the field's path) and the classify request's own limits."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from shenhe.serving.api_errors import ApiError
from shenhe.serving.config import MAX_ITEMS, ServingConfig
from shenhe.serving.schemas import ClassifyRequest

M = TypeVar("M", bound=BaseModel)

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def max_body_bytes(config: ServingConfig) -> int:
    # Worst case: every character JSON-escaped as \uXXXX\uXXXX (12 bytes) plus room for ids and syntax.
    return MAX_ITEMS * (config.max_text_chars * 12 + 2048) + 65536


async def read_json(request: Request, config: ServingConfig) -> Any:
    """The request body as JSON, read up to :func:`max_body_bytes`."""
    return parse_json(await read_body(request, config))


async def read_body(request: Request, config: ServingConfig) -> bytes:
    """The raw request body, refused (413) beyond :func:`max_body_bytes`."""
    limit = max_body_bytes(config)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON: empty, non-UTF-8 and invalid bodies are 400s with their own codes."""
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_encoding",
                       f"request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    body = body.removeprefix("\ufeff")
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None


def _validation_message(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    loc = ""
    for part in first["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc or 'body'}: {msg}{more}"


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model`` (400 ``invalid_request`` naming the first bad field)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, "invalid_request", _validation_message(e)) from None


def check_unicode(value: str | None, where: str) -> None:
    if value is not None and _SURROGATE_RE.search(value):
        raise ApiError(400, "invalid_text", f"{where} contains unpaired surrogate code points (not valid Unicode)")


def parse_classify(data: Any, config: ServingConfig) -> ClassifyRequest:
    """A ``POST /v1/classify`` body: item-count problems get their own codes before the generic validation,
    and each text is held to the configured length cap."""
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        n = len(data["items"])
        if n == 0:
            raise ApiError(400, "empty_items", f"'items' is empty; send 1 to {MAX_ITEMS} items")
        if n > MAX_ITEMS:
            raise ApiError(400, "too_many_items", f"'items' has {n} entries; the limit is {MAX_ITEMS} per request")
    elif not isinstance(data, dict):
        raise ApiError(400, "invalid_request", 'expected a JSON object: {"items": [{"id": "...", "text": "..."}]}')
    raw_items = data.get("items")
    for i, item in enumerate(raw_items if isinstance(raw_items, list) else ()):
        if isinstance(item, dict):  # before validation: pydantic reports lone surrogates as a type error
            for key in ("id", "text"):
                check_unicode(item.get(key) if isinstance(item.get(key), str) else None, f"items[{i}].{key}")
    req = validate(ClassifyRequest, data)
    for i, item in enumerate(req.items):
        if len(item.text) > config.max_text_chars:
            raise ApiError(400, "text_too_long",
                           f"items[{i}].text has {len(item.text)} characters; the limit is {config.max_text_chars}")
    return req
