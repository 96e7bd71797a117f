"""The ``/v1`` HTTP API: a FastAPI app mounted inside the BentoML service (serving/service.py).

FastAPI gives full control of the error shape (every 4xx/5xx is ``{"error", "message", "request_id"}``,
never a framework default) and an OpenAPI document of the real routes at ``/v1/openapi.json``.
The app reads its :class:`~serving.runtime.Runtime` from ``app.state.runtime`` (set by the service
in each worker), so tests can also drive it in-process.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import re
import time
import uuid
from collections import Counter
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.serving.auth import AuthFailure, Principal, presented_key
from shenhe.serving.batcher import Cancelled, DeadlineExceeded, QueueFull
from shenhe.serving.config import MAX_ITEMS, ServingConfig
from shenhe.serving.live_precision import after_classify
from shenhe.serving.logging import log_event, request_id_var
from shenhe.serving.queue import NewReviewItem, QueueError
from shenhe.serving.runtime import Runtime, TokenBudgetExceeded
from shenhe.serving.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorBody,
    ItemResult,
    MatchOut,
    ModelRef,
    ReasonOut,
    ReloadOut,
    ReviewDecisionIn,
    ReviewDecisionOut,
    ReviewItemOut,
    ReviewStats,
    StateCounts,
)

API_VERSION = "1"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error_response(request: Request | None, status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    rid = request_id_var.get()
    if request is not None:
        rid = getattr(request.state, "request_id", None) or rid
    body = ErrorBody(error=code, message=message, request_id=rid).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


# ---- request context: id, timing, metrics, one JSON log line per request ---------------------------


class RequestContext:
    """Pure ASGI middleware (no body buffering): request id in, ``X-Request-ID`` out, metrics, log.

    In the ``/v1`` app the runtime is the app's; :class:`NativeApiGuard` wraps BentoML's own API routes in
    the same context, with this app's runtime and the route's path as the endpoint name."""

    def __init__(self, app: ASGIApp, runtime_of: Any = None, endpoint: str | None = None) -> None:
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
                response = _error_response(None, 403, "loopback_only",
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


# ---- helpers -------------------------------------------------------------------------------------


def _runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "not_ready", "the service is still starting; retry shortly")
    return runtime


def _authorize(request: Request, runtime: Runtime, role: str) -> Principal:
    key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    principal = runtime.keys.authorize(key, role)
    request.state.log_fields["api_key"] = principal.name
    return principal


def _max_body_bytes(config: ServingConfig) -> int:
    # Worst case: every character JSON-escaped as \uXXXX\uXXXX (12 bytes) plus room for ids and syntax.
    return MAX_ITEMS * (config.max_text_chars * 12 + 2048) + 65536


async def _read_json(request: Request, config: ServingConfig) -> Any:
    return _parse_json(await _read_body(request, config))


async def _read_body(request: Request, config: ServingConfig) -> bytes:
    limit = _max_body_bytes(config)
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


def _parse_json(raw: bytes) -> Any:
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


def _validate(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(400, "invalid_request", _validation_message(e)) from None


def _check_unicode(value: str | None, where: str) -> None:
    if value is not None and _SURROGATE_RE.search(value):
        raise ApiError(400, "invalid_text", f"{where} contains unpaired surrogate code points (not valid Unicode)")


def _parse_classify(data: Any, config: ServingConfig) -> ClassifyRequest:
    # Count problems get their own codes before the generic validation.
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        n = len(data["items"])
        if n == 0:
            raise ApiError(400, "empty_items", "'items' is empty; send 1 to 256 items")
        if n > MAX_ITEMS:
            raise ApiError(400, "too_many_items", f"'items' has {n} entries; the limit is {MAX_ITEMS} per request")
    elif not isinstance(data, dict):
        raise ApiError(400, "invalid_request", 'expected a JSON object: {"items": [{"id": "...", "text": "..."}]}')
    raw_items = data.get("items")
    for i, item in enumerate(raw_items if isinstance(raw_items, list) else ()):
        if isinstance(item, dict):  # before validation: pydantic reports lone surrogates as a type error
            for key in ("id", "text"):
                _check_unicode(item.get(key) if isinstance(item.get(key), str) else None, f"items[{i}].{key}")
    req: ClassifyRequest = _validate(ClassifyRequest, data)
    for i, item in enumerate(req.items):
        if len(item.text) > config.max_text_chars:
            raise ApiError(400, "text_too_long",
                           f"items[{i}].text has {len(item.text)} characters; the limit is {config.max_text_chars}")
    return req


# ---- the app -------------------------------------------------------------------------------------

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


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


# Recent FastAPI versions add OpenTelemetry hooks that probe for providers on every request (~2 ms
# here); BentoML already traces requests and we export our own metrics, so switch them off.
_telemetry_off = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
                  if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})

app = FastAPI(
    title="shenhe",
    version=API_VERSION,
    summary="Detect prohibited content (Article 9 categories) in Chinese text; human review queue.",
    openapi_url="/v1/openapi.json",
    docs_url=None,  # served offline by serving/console.py (Swagger UI assets from a package, no CDN)
    redoc_url=None,
    **_telemetry_off,  # type: ignore[arg-type]
)
app.add_middleware(RequestContext)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(request, exc.status, exc.code, exc.message, exc.headers)


@app.exception_handler(AuthFailure)
async def _auth_error(request: Request, exc: AuthFailure) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _error_response(request, exc.status, exc.code, exc.message, headers)


@app.exception_handler(QueueError)
async def _queue_error(request: Request, exc: QueueError) -> JSONResponse:
    return _error_response(request, exc.status, exc.code, str(exc))


@app.exception_handler(RequestValidationError)
async def _request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return _error_response(request, 400, "invalid_request", f"{loc}: {first.get('msg', 'invalid')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    return _error_response(request, exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"),
                           str(exc.detail), dict(exc.headers or {}))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.logger.exception("unhandled error", extra={"fields": {"path": request.url.path}})
    return _error_response(request, 500, "internal", "unexpected server error; it has been logged")


async def _watch_disconnect(request: Request, disconnected: asyncio.Event) -> None:
    """Set ``disconnected`` when the client goes away (the body has been read; only disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return


async def _score(request: Request, runtime: Runtime, texts: list[str]) -> list[Any]:
    """Model predictions through the worker's batcher, with the deadline, the token budget and disconnects."""
    disconnected = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_disconnect(request, disconnected))
    try:
        return await runtime.scheduler.predict(texts, disconnected)
    except TokenBudgetExceeded as e:
        raise ApiError(413, "token_budget_exceeded", str(e)) from None
    except QueueFull as e:
        raise ApiError(503, "overloaded", str(e), {"Retry-After": str(e.retry_after_s)}) from None
    except DeadlineExceeded as e:
        raise ApiError(504, "timeout", str(e)) from None
    except Cancelled as e:  # nobody reads this answer; 499 (client closed request) keeps the log honest
        raise ApiError(499, "client_disconnected", str(e)) from None
    finally:
        watcher.cancel()


@app.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_body_doc(ClassifyRequest),
    tags=["classify"],
    summary="Classify 1 to 256 texts",
    description="Per item: decision (pass/review/block), calibrated scores, the categories and reasons behind "
                "the decision, word-list matches, and review_id when the item was written to the review queue "
                "(written and committed before this response is sent).",
)
async def classify(request: Request) -> Response:
    runtime = _runtime(request)
    _authorize(request, runtime, "classify")
    req = _parse_classify(await _read_json(request, runtime.config), runtime.config)
    body = await classify_request(request, runtime, req)
    return Response(body.model_dump_json(), media_type="application/json")


async def classify_request(request: Request, runtime: Runtime, req: ClassifyRequest) -> ClassifyResponse:
    """Score a validated request, queue its review-band items, count and log: ``POST /v1/classify`` and the
    BentoML-native ``classify`` endpoint (serving/service.py) both answer through this."""
    texts = [item.text for item in req.items]
    predictions = await _score(request, runtime, texts)
    rid: str = request.state.request_id

    to_queue = [i for i, p in enumerate(predictions) if p.decision == "review"]
    review_ids: dict[int, str] = {}
    if to_queue:
        ids = await runtime.enqueue([
            NewReviewItem(caller_id=req.items[i].id, text=texts[i], prediction=predictions[i], request_id=rid)
            for i in to_queue
        ])
        review_ids = dict(zip(to_queue, ids, strict=True))
    audited = await after_classify(runtime, [item.id for item in req.items], texts, predictions, rid)

    decisions = Counter(p.decision for p in predictions)
    m = runtime.metrics
    for p in predictions:
        m.items.labels(decision=p.decision).inc()
        for cat in p.categories:
            m.category_decisions.labels(category=cat, decision=p.decision).inc()
    request.state.log_fields.update(items=len(texts), decisions=dict(decisions), queued=len(review_ids),
                                    audit_queued=audited)
    if runtime.config.log_texts:
        for i, (item, p) in enumerate(zip(req.items, predictions, strict=True)):
            log_event(runtime.logger, "item", index=i, id=item.id, text=item.text, decision=p.decision,
                      categories=p.categories, review_id=review_ids.get(i))

    first = predictions[0]
    return ClassifyResponse(
        items=[ItemResult.from_prediction(item.id, p, review_ids.get(i))
               for i, (item, p) in enumerate(zip(req.items, predictions, strict=True))],
        model=ModelRef(name=first.model.name, version=first.model.version),
        policy_version=first.policy_version,
        request_id=rid,
    )


@app.get(
    "/v1/review/next",
    response_model=ReviewItemOut,
    responses={**ERROR_RESPONSES, 204: {"description": "The queue has no open item"}},
    tags=["review"],
    summary="Claim the oldest open review item with a lease",
    description="The item is leased to you for lease_seconds; an expired lease returns it to the queue.",
)
async def review_next(
    request: Request,
    lease_seconds: int | None = Query(None, ge=1, le=86_400, description="lease length (default: server setting)"),
) -> Response:
    runtime = _runtime(request)
    principal = _authorize(request, runtime, "review")
    item = await anyio.to_thread.run_sync(runtime.store.claim, lease_seconds or runtime.config.lease_seconds,
                                          principal.name)
    if item is None:
        return Response(status_code=204)
    request.state.log_fields["review_id"] = item.review_id
    out = ReviewItemOut(
        review_id=item.review_id, id=item.caller_id, text=item.text, decision=item.decision,  # type: ignore[arg-type]
        scores=item.scores, categories=item.categories,
        reasons=[ReasonOut.model_validate(r) for r in item.reasons],
        matches=[MatchOut.model_validate(m) for m in item.matches],
        model=ModelRef(name=item.model_name, version=item.model_version), policy_version=item.policy_version,
        created_at=item.created_at, lease_token=item.lease_token, lease_expires_at=item.lease_expires_at,
        kind=item.kind,  # type: ignore[arg-type]
    )
    return Response(out.model_dump_json(), media_type="application/json")


@app.get("/v1/review/stats", response_model=ReviewStats, responses=ERROR_RESPONSES, tags=["review"],
         summary="Open, claimed and decided counts, overall and per category")
async def review_stats(request: Request) -> ReviewStats:
    runtime = _runtime(request)
    _authorize(request, runtime, "review")

    def read() -> ReviewStats:
        c = runtime.store.counts()
        per = runtime.store.category_counts()
        return ReviewStats(open=c.open, claimed=c.claimed, decided=c.decided, total=c.total,
                           categories={k: StateCounts(open=v.open, claimed=v.claimed, decided=v.decided)
                                       for k, v in per.items()})

    return await anyio.to_thread.run_sync(read)


@app.post(
    "/v1/review/{review_id}",
    response_model=ReviewDecisionOut,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorBody, "description": "No such review item"},
               409: {"model": ErrorBody, "description": "Already decided with other labels (conflict), or "
                                                        "leased to another reviewer (leased)"}},
    openapi_extra=_body_doc(ReviewDecisionIn),
    tags=["review"],
    summary="Record a reviewer's decision",
    description="Repeating the same labels is idempotent (200, the first decision is kept). The reviewer "
                "recorded is the API key's name. While someone holds a live lease on the item, only their "
                "lease_token may decide it (409 leased otherwise, with or without a token).",
)
async def review_decide(
    request: Request,
    review_id: str = Path(..., description="the review_id returned by /v1/classify or /v1/review/next"),
) -> Response:
    runtime = _runtime(request)
    principal = _authorize(request, runtime, "review")
    decision: ReviewDecisionIn = _validate(ReviewDecisionIn, await _read_json(request, runtime.config))
    unknown = sorted(k for k in decision.labels if k not in CATEGORY_SLUGS)
    if unknown:
        raise ApiError(400, "invalid_labels",
                       f"unknown category slug(s): {', '.join(unknown)}; expected {', '.join(CATEGORY_SLUGS)}")
    for where, value in (("reviewer", decision.reviewer), ("note", decision.note), ("lease_token", decision.lease_token)):
        _check_unicode(value, where)
    request.state.log_fields.update(review_id=review_id, reviewer_key=principal.name)
    record = await anyio.to_thread.run_sync(  # the reviewer recorded is the key's name, not the body's
        lambda: runtime.store.decide(review_id, [k for k, v in decision.labels.items() if v], principal.name,
                                     decision.note, decision.lease_token,
                                     second_opinion_share=runtime.config.second_opinion_share))
    out = ReviewDecisionOut(review_id=record.review_id, status="decided", labels=record.labels,
                            reviewer=record.reviewer, note=record.note, decided_at=record.decided_at)
    return Response(out.model_dump_json(), media_type="application/json")


@app.post(
    "/v1/admin/reload",
    response_model=ReloadOut,
    responses={**ERROR_RESPONSES, 422: {"model": ErrorBody, "description": "The changed bundle or policy was "
                                        "refused (hash, parse or smoke-prediction failure); the old one keeps serving"}},
    tags=["admin"],
    summary="Reload the bundle and policy from disk now (role admin)",
    description="Loads what changed on disk beside what serves, verifies hashes, runs a smoke prediction and "
                "swaps it in; requests in flight finish on the old model. Reaches the worker that answers this "
                "request; every worker also polls the files every SHENHE_RELOAD_INTERVAL_S seconds.",
)
async def admin_reload(request: Request) -> Response:
    runtime = _runtime(request)
    _authorize(request, runtime, "admin")
    if runtime.reloader is None:
        raise ApiError(503, "not_ready", "hot reload is not available in this worker")
    result = await anyio.to_thread.run_sync(runtime.reloader.reload, "admin")
    request.state.log_fields.update(reload=result.status, changed=list(result.changed))
    if result.status == "refused":
        raise ApiError(422, "reload_refused", f"the changed {' and '.join(result.changed)} was refused: "
                       f"{result.reason}; still serving model {result.model_version}, policy {result.policy_version}")
    name = runtime.predictor.info.name
    out = ReloadOut(status=result.status, changed=list(result.changed),  # type: ignore[arg-type]
                    model=ModelRef(name=name, version=result.model_version),
                    policy_version=result.policy_version, request_id=request.state.request_id)
    return Response(out.model_dump_json(), media_type="application/json")


@app.get("/", include_in_schema=False)
async def _index() -> Response:
    """The root shows the API's own docs (instead of BentoML's page, which lists no endpoint of ours)."""
    from fastapi.responses import RedirectResponse

    return RedirectResponse("/v1/docs")


@app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def _unknown(request: Request, rest: str) -> JSONResponse:
    from starlette.routing import Match, Route

    allowed = sorted({m for r in app.routes if isinstance(r, Route) and r.path != "/v1/{rest:path}"
                      and r.matches(request.scope)[0] == Match.PARTIAL for m in (r.methods or ())})
    if allowed:
        return _error_response(request, 405, "method_not_allowed",
                               f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}",
                               {"Allow": ", ".join(allowed)})
    return _error_response(request, 404, "not_found", f"no such endpoint: {request.method} /v1/{rest}")


# ---- OpenAPI: request bodies are parsed by hand (UTF-8 and JSON errors get their own codes) --------


def _openapi() -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, defs = models_json_schema([(ClassifyRequest, "validation"), (ReviewDecisionIn, "validation")],
                                 ref_template="#/components/schemas/{model}")
    schemas.update(defs.get("$defs", {}))
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    config = runtime.config if runtime is not None else ServingConfig.from_env()
    schemas["ClassifyItem"]["properties"]["text"]["maxLength"] = config.max_text_chars
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path in schema["paths"].values():
        for op in path.values():
            op["responses"].pop("422", None)
            op["responses"].setdefault("400", {
                "description": "Bad request",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    if runtime is None or runtime.keys.enabled:
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
    app.openapi_schema = schema
    return schema


app.openapi = _openapi  # type: ignore[method-assign]


# ---- the review console, offline docs (serving/console.py) ----------------------------------------

from shenhe.serving import console  # noqa: E402  (it reads this module's helpers)

console.install(app)

