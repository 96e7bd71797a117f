"""Each request's context: its id, timing, metrics and one JSON log line (the :class:`RequestContext`
middleware), and what a handler reads from it: the worker's runtime and the caller's API key."""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shenhe.serving.api_errors import ApiError, error_response
from shenhe.serving.auth import Principal, presented_key
from shenhe.serving.logging import log_event, request_id_var

if TYPE_CHECKING:
    from shenhe.serving.runtime import Runtime

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class RequestContext:
    """Pure ASGI middleware (no body buffering): request id in, ``X-Request-ID`` out, metrics, log.

    In the ``/v1`` app the runtime is the app's; :class:`~shenhe.serving.native.NativeApiGuard` wraps BentoML's
    own API routes in the same context, with this app's runtime and the route's path as the endpoint name."""

    def __init__(self, app: ASGIApp, runtime_of: Callable[[], Runtime | None] | None = None,
                 endpoint: str | None = None) -> None:
        self.app = app
        self.runtime_of = runtime_of
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        rid = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["log_fields"] = {}
        token = request_id_var.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        if self.runtime_of is not None:
            runtime: Runtime | None = self.runtime_of()
        else:
            runtime = getattr(getattr(scope.get("app"), "state", None), "runtime", None)
        client = (scope.get("client") or ("", 0))[0]
        try:
            if runtime is not None and not runtime.keys.enabled and not _is_loopback(client):
                # No API keys: answer loopback clients only (defence in depth behind the bind address).
                response = error_response(None, 403, "loopback_only",
                                          "this server has no API keys configured and only answers on 127.0.0.1")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            endpoint = self.endpoint or getattr(route, "path", None) or "unmatched"
            if runtime is not None:
                runtime.metrics.observe_request(endpoint, status, elapsed)
                log_event(runtime.logger, "request", method=scope["method"], endpoint=endpoint, status=status,
                          latency_ms=round(elapsed * 1000, 2), **state.get("log_fields", {}))
            request_id_var.reset(token)


def runtime_of(request: Request) -> Runtime:
    """The worker's runtime (503 ``not_ready`` while the worker is still starting)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "not_ready", "the service is still starting; retry shortly")
    return runtime


def authorize(request: Request, runtime: Runtime, role: str) -> Principal:
    """The caller's API key, which must have ``role`` (401/403 otherwise); its name goes into the log line."""
    key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    principal = runtime.keys.authorize(key, role)
    request.state.log_fields["api_key"] = principal.name
    return principal
