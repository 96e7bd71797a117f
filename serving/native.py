"""BentoML-native endpoints beside ``/v1``: ``classify`` as an ``@bentoml.api`` (serving/service.py).

``bentoml.SyncHTTPClient(url, token=KEY).classify(items=[{"id": ..., "text": ...}])`` (and
``AsyncHTTPClient``) call ``POST /classify``; the Bento's API schema (``/schema.json``, ``bentoml build``)
lists it. It answers exactly like ``POST /v1/classify``: the same request and response JSON, the same API
keys and role (``classify``), the same micro-batcher, review-queue write, metrics and request log, and the
same errors (``{"error", "message", "request_id"}`` with the ``/v1`` codes).

:class:`NativeApiGuard` (an ASGI middleware on the BentoML service, inside the hardening middleware) does
for these routes what the ``/v1`` app does before a handler runs: the request id, metrics and log line
(:class:`~shenhe.serving.request_context.RequestContext`), loopback-only without keys, the API key check, the body size,
UTF-8 and JSON checks and the request's validation. So every refusal has our shape and codes, and BentoML
only ever parses a valid body. The validated request reaches the endpoint in the request state; the endpoint
checks the key again (the same :meth:`KeyRing.authorize`) before scoring.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import WithJsonSchema
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shenhe.serving.api import app as api_app
from shenhe.serving.api import classify_request
from shenhe.serving.api_errors import ApiError, error_response
from shenhe.serving.auth import AuthFailure
from shenhe.serving.body import parse_classify, parse_json, read_body
from shenhe.serving.config import MAX_ITEMS
from shenhe.serving.queue import QueueError
from shenhe.serving.request_context import RequestContext, authorize
from shenhe.serving.runtime import Runtime
from shenhe.serving.schemas import ClassifyItem

# Route -> the role its callers need.
NATIVE_ROUTES: dict[str, str] = {"/classify": "classify"}

# The JSON schema of `items` in the Bento's API schema: the /v1 request's. (Validation is ours, in the guard,
# so that errors keep the /v1 codes; BentoML takes the list as it is.)
ITEMS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_ITEMS,
    "items": ClassifyItem.model_json_schema(),
    "description": "1 to 256 items: {id (optional, opaque), text}; the same as POST /v1/classify",
}
ClassifyItems = Annotated[list[Any], WithJsonSchema(ITEMS_SCHEMA)]

_ERROR_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type",
                422: "invalid_request", 429: "overloaded", 503: "not_ready", 504: "timeout"}


def current_runtime() -> Runtime | None:
    """The worker's runtime (set by the service in each worker; None while it starts)."""
    return getattr(api_app.state, "runtime", None)


def _error(request: Request, exc: Exception) -> tuple[int, Response]:
    if isinstance(exc, ApiError):
        return exc.status, error_response(request, exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, AuthFailure):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return exc.status, error_response(request, exc.status, exc.code, exc.message, headers)
    if isinstance(exc, QueueError):
        return exc.status, error_response(request, exc.status, exc.code, str(exc))
    raise exc


async def classify_native(request: Request, items: list[Any]) -> tuple[int, Response]:
    """The ``classify`` endpoint's answer: (status, response), errors included."""
    runtime = current_runtime()
    try:
        if runtime is None:
            raise ApiError(503, "not_ready", "the service is still starting; retry shortly")
        if not hasattr(request.state, "log_fields"):  # reached without the guard (an in-process call)
            request.state.log_fields = {}
        authorize(request, runtime, NATIVE_ROUTES["/classify"])
        req = getattr(request.state, "classify_request", None) or parse_classify({"items": items}, runtime.config)
        body = await classify_request(request, runtime, req)
        return 200, Response(body.model_dump_json(), media_type="application/json")
    except (ApiError, AuthFailure, QueueError) as e:
        return _error(request, e)
    except Exception:
        runtime_ = runtime or current_runtime()
        if runtime_ is not None:
            runtime_.logger.exception("unhandled error", extra={"fields": {"path": request.url.path}})
        return 500, error_response(request, 500, "internal", "unexpected server error; it has been logged")


class NativeApiGuard:
    """See the module docstring. Other paths pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._contexts = {path: RequestContext(self._guarded, runtime_of=current_runtime, endpoint=path)
                          for path in NATIVE_ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = self._contexts.get(scope.get("path", "")) if scope["type"] == "http" else None
        if context is None:
            await self.app(scope, receive, send)
            return
        await context(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        path: str = scope["path"]
        runtime = current_runtime()
        try:
            if scope.get("method") != "POST":
                raise ApiError(405, "method_not_allowed", f"{scope.get('method')} is not allowed on {path}; use POST",
                               {"Allow": "POST"})
            if runtime is None:
                raise ApiError(503, "not_ready", "the service is still starting; retry shortly")
            authorize(request, runtime, NATIVE_ROUTES[path])
            raw = await read_body(request, runtime.config)
            scope.setdefault("state", {})["classify_request"] = parse_classify(parse_json(raw), runtime.config)
        except (ApiError, AuthFailure, QueueError) as e:
            _, response = _error(request, e)
            await response(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:  # BentoML reads the body we read; then only a disconnect can come
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, _our_error_shape(scope, send, request))


def _our_error_shape(scope: Scope, send: Send, request: Request) -> Send:
    """Pass responses through, except an error from BentoML itself (not ours: no ``message``), which is
    rewritten as ``{"error", "message", "request_id"}``."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"] = message
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, raw = held.pop("start"), b"".join(chunks)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and "message" in body:
            await send(start)
            await send({"type": "http.response.body", "body": raw})
            return
        status = start["status"]
        detail = body.get("error") if isinstance(body, dict) else raw.decode("utf-8", "replace")
        code = _ERROR_CODES.get(status, "internal" if status >= 500 else f"http_{status}")
        text = "unexpected server error; it has been logged" if status >= 500 else (str(detail or code).splitlines() or [code])[0][:300]
        response = error_response(request, status, code, text)
        await response(scope, _no_receive, send)

    return wrapped


async def _no_receive() -> Message:  # a Response never reads
    return {"type": "http.disconnect"}
