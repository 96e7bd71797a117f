"""Error mapping for the HTTP API: every 4xx/5xx is ``{"error", "message", "request_id"}``, never a
framework default.

:class:`ApiError` is what the HTTP layer raises (body parsing, routes, the console); the other layers raise
their own types (``AuthFailure``, ``QueueError``, the batcher's and the runtime's), and
:func:`install_error_handlers` turns each into its status, code and message.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shenhe.serving.auth import AuthFailure
from shenhe.serving.batcher import Cancelled, DeadlineExceeded, QueueFull
from shenhe.serving.logging import request_id_var
from shenhe.serving.queue import QueueError
from shenhe.serving.runtime import TokenBudgetExceeded
from shenhe.serving.schemas import ErrorBody


class ApiError(Exception):
    """An HTTP error in our format: ``status``, a stable ``code`` and a one-line ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(request: Request | None, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    rid = request_id_var.get()
    if request is not None:
        rid = getattr(request.state, "request_id", None) or rid
    body = ErrorBody(error=code, message=message, request_id=rid).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


# The error responses every /v1 operation documents (OpenAPI).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request: invalid JSON, wrong types, limits exceeded"},
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
    403: {"model": ErrorBody, "description": "The API key lacks the needed role, or a non-loopback client "
                                             "reached a server without keys"},
    413: {"model": ErrorBody, "description": "Request body too large, or its texts need more model tokens than "
                                             "one request may use (token_budget_exceeded)"},
    503: {"model": ErrorBody, "description": "Overloaded (with Retry-After), starting, or the review queue is "
                                             "unreachable: retry"},
    504: {"model": ErrorBody, "description": "The model did not finish within the request deadline (its work "
                                             "was dropped): retry, or send fewer texts"},
}


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can end in to our error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(AuthFailure)
    async def _auth_error(request: Request, exc: AuthFailure) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(request, exc.status, exc.code, exc.message, headers)

    @app.exception_handler(QueueError)
    async def _queue_error(request: Request, exc: QueueError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, str(exc))

    # Scoring: the per-request token budget, the batcher's bounded queue, the deadline, a client gone away.
    @app.exception_handler(TokenBudgetExceeded)
    async def _token_budget(request: Request, exc: TokenBudgetExceeded) -> JSONResponse:
        return error_response(request, 413, "token_budget_exceeded", str(exc))

    @app.exception_handler(QueueFull)
    async def _overloaded(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(request, 503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(DeadlineExceeded)
    async def _deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return error_response(request, 504, "timeout", str(exc))

    @app.exception_handler(Cancelled)
    async def _cancelled(request: Request, exc: Cancelled) -> JSONResponse:
        # Nobody reads this answer; 499 (client closed request) keeps the log honest.
        return error_response(request, 499, "client_disconnected", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(request, 400, "invalid_request", f"{loc}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(request, exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"),
                              str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            runtime.logger.exception("unhandled error", extra={"fields": {"path": request.url.path}})
        return error_response(request, 500, "internal", "unexpected server error; it has been logged")
