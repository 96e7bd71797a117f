"""Request hardening in front of everything the service answers (the ``/v1`` API, the review console,
BentoML's ``/metrics``, ``/healthz`` and ``/readyz``): a pure ASGI middleware added to the BentoML
service (serving/service.py).

- ``Host`` must be one of the configured names (``SHENHE_ALLOWED_HOSTS``; loopback names by default),
  so a page on another site cannot reach a local server through DNS rebinding (400 ``host_not_allowed``;
  the health probes are exempt).
- A state-changing request (POST, PUT, PATCH, DELETE) with an ``Origin`` must come from the page's own
  origin; ``Origin: null`` and ``Sec-Fetch-Site: cross-site`` are refused too (403 ``origin_not_allowed``):
  no cross-site request forgery, with or without API keys.
- The API takes JSON only: a body declared as anything else (a form, ``text/plain``) is refused
  (415 ``unsupported_media_type``); those are the types a cross-site form can send.
- ``/metrics`` needs a key with the ``metrics`` role (or ``admin``) when API keys are configured.
- Every answer says ``X-Content-Type-Options: nosniff`` and may not be framed by another site.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shenhe.serving.auth import AuthFailure, presented_key
from shenhe.serving.logging import log_event

if TYPE_CHECKING:
    from shenhe.serving.config import ServingConfig
    from shenhe.serving.runtime import Runtime

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_PATHS = ("/v1/", "/review/api/", "/classify")  # /classify: the BentoML-native endpoint
HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})  # probes address the pod by IP


def host_name(value: str) -> str:
    """``Host`` header value without the port, lower case; IPv6 brackets removed."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _runtime() -> Runtime | None:
    from shenhe.serving.api import app

    return getattr(app.state, "runtime", None)


async def _refuse(send: Send, status: int, code: str, message: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": code, "message": message, "request_id": uuid.uuid4().hex}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def check(scope: Scope, config: ServingConfig, runtime: Runtime | None) -> tuple[int, str, str] | None:
    """The refusal for this request, or None when it may go on."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    names = config.host_names()
    host = headers.get("host", "")
    path: str = scope.get("path", "")
    if names is not None and host and host_name(host) not in names and path not in HEALTH_PATHS:
        return 400, "host_not_allowed", (f"Host {host!r} is not one of this server's names "
                                         "(set SHENHE_ALLOWED_HOSTS to serve other names)")
    method = scope.get("method", "GET")
    if method in UNSAFE_METHODS:
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin) if origin != "null" else None
            if parts is None or not parts.netloc or parts.netloc.lower() != host.lower():
                return 403, "origin_not_allowed", f"cross-origin request from {origin!r} refused"
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return 403, "origin_not_allowed", "cross-site request refused"
        content_type = headers.get("content-type")
        if path.startswith(JSON_PATHS) and content_type is not None and not is_json_type(content_type):
            return 415, "unsupported_media_type", (f"Content-Type {content_type.split(';')[0]!r} is not "
                                                   "accepted; send application/json")
    if path == "/metrics" and runtime is not None and runtime.keys.enabled:
        try:
            runtime.keys.authorize(presented_key(headers.get("authorization"), headers.get("x-api-key")), "metrics")
        except AuthFailure as e:
            return e.status, e.code, e.message
    return None


class HardeningMiddleware:
    """See the module docstring. Reads the settings from the worker's runtime (or the environment
    while the worker is still starting)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._config: ServingConfig | None = None

    def _settings(self) -> tuple[ServingConfig, Runtime | None]:
        runtime = _runtime()
        if runtime is not None:
            return runtime.config, runtime
        if self._config is None:
            from shenhe.serving.config import ServingConfig

            self._config = ServingConfig.from_env()
        return self._config, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config, runtime = self._settings()
        refusal = check(scope, config, runtime)
        if refusal is not None:
            status, code, message = refusal
            if runtime is not None:  # one log line, like every answered request (no client address)
                log_event(runtime.logger, "request refused", method=scope.get("method"), path=scope.get("path"),
                          status=status, error=code)
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await _refuse(send, status, code, message, extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in have)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
