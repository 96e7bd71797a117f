"""The ``/v1`` HTTP API: a FastAPI app mounted inside the BentoML service (serving/service.py), and its routes.

The plumbing is beside it: the request context middleware and the runtime/key helpers
(serving/request_context.py), body parsing (serving/body.py), the error shape and the mapping of every
exception to it (serving/api_errors.py) and the OpenAPI document (serving/openapi.py).
The app reads its :class:`~serving.runtime.Runtime` from ``app.state.runtime`` (set by the service
in each worker), so tests can also drive it in-process.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.serving.api_errors import ERROR_RESPONSES, ApiError, error_response, install_error_handlers
from shenhe.serving.body import check_unicode, parse_classify, read_json, validate
from shenhe.serving.config import MAX_ITEMS
from shenhe.serving.live_precision import after_classify
from shenhe.serving.logging import log_event
from shenhe.serving.openapi import body_doc, install_openapi
from shenhe.serving.queue import NewReviewItem
from shenhe.serving.request_context import RequestContext, authorize, runtime_of
from shenhe.serving.runtime import Runtime
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

if TYPE_CHECKING:
    from shenhe.models.types import Prediction

API_VERSION = "1"

# Recent FastAPI versions add OpenTelemetry hooks that probe for providers on every request (~2 ms
# here); BentoML already traces requests and we export our own metrics, so switch them off.
_telemetry_off: dict[str, Any] = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
                  if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})

app = FastAPI(
    title="shenhe",
    version=API_VERSION,
    summary="Detect prohibited content (Article 9 categories) in Chinese text; human review queue.",
    openapi_url="/v1/openapi.json",
    docs_url=None,  # served offline by serving/console.py (Swagger UI assets from a package, no CDN)
    redoc_url=None,
    **_telemetry_off,
)
app.add_middleware(RequestContext)
install_error_handlers(app)
install_openapi(app)


async def _watch_disconnect(request: Request, disconnected: asyncio.Event) -> None:
    """Set ``disconnected`` when the client goes away (the body has been read; only disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return


async def _score(request: Request, runtime: Runtime, texts: list[str]) -> list[Prediction]:
    """Model predictions through the worker's batcher, with the deadline, the token budget and disconnects."""
    disconnected = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_disconnect(request, disconnected))
    try:  # the budget, an overload, the deadline or a disconnect end it in an error (serving/api_errors.py)
        return await runtime.scheduler.predict(texts, disconnected)
    finally:
        watcher.cancel()


@app.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=body_doc(ClassifyRequest),
    tags=["classify"],
    summary=f"Classify 1 to {MAX_ITEMS} texts",
    description="Per item: decision (pass/review/block), calibrated scores, the categories and reasons behind "
                "the decision, word-list matches, and review_id when the item was written to the review queue "
                "(written and committed before this response is sent).",
)
async def classify(request: Request) -> Response:
    runtime = runtime_of(request)
    authorize(request, runtime, "classify")
    req = parse_classify(await read_json(request, runtime.config), runtime.config)
    body = await classify_request(request, runtime, req)
    return Response(body.model_dump_json(), media_type="application/json")


async def classify_request(request: Request, runtime: Runtime, req: ClassifyRequest) -> ClassifyResponse:
    """Score a validated request, queue its review-band items, count and log: ``POST /v1/classify`` and the
    BentoML-native ``classify`` endpoint (serving/native.py) both answer through this."""
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
    summary="Claim the next open review item with a lease (oldest, or most uncertain, first)",
    description="The item is leased to you for lease_seconds; an expired lease returns it to the queue. "
                "order=age hands out the oldest open item; order=uncertainty the one whose scores came closest "
                "to a threshold when it was queued (active learning; ties by age). Default: the server's "
                "SHENHE_REVIEW_ORDER (age unless set).",
)
async def review_next(
    request: Request,
    lease_seconds: int | None = Query(None, ge=1, le=86_400, description="lease length (default: server setting)"),
    order: Literal["age", "uncertainty"] | None = Query(
        None, description="age (oldest first) or uncertainty (closest to a threshold first); default: server setting"),
) -> Response:
    runtime = runtime_of(request)
    principal = authorize(request, runtime, "review")
    chosen = order or runtime.config.review_order
    item = await anyio.to_thread.run_sync(lambda: runtime.store.claim(
        lease_seconds or runtime.config.lease_seconds, principal.name, order=chosen))
    if item is None:
        return Response(status_code=204)
    request.state.log_fields["review_id"] = item.review_id
    out = ReviewItemOut(
        review_id=item.review_id, id=item.caller_id, text=item.text, decision=item.decision,
        scores=item.scores, categories=item.categories,
        reasons=[ReasonOut.model_validate(r) for r in item.reasons],
        matches=[MatchOut.model_validate(m) for m in item.matches],
        model=ModelRef(name=item.model_name, version=item.model_version), policy_version=item.policy_version,
        created_at=item.created_at, lease_token=item.lease_token, lease_expires_at=item.lease_expires_at,
        kind=item.kind,
    )
    return Response(out.model_dump_json(), media_type="application/json")


@app.get("/v1/review/stats", response_model=ReviewStats, responses=ERROR_RESPONSES, tags=["review"],
         summary="Open, claimed and decided counts, overall and per category")
async def review_stats(request: Request) -> ReviewStats:
    runtime = runtime_of(request)
    authorize(request, runtime, "review")

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
    openapi_extra=body_doc(ReviewDecisionIn),
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
    runtime = runtime_of(request)
    principal = authorize(request, runtime, "review")
    decision = validate(ReviewDecisionIn, await read_json(request, runtime.config))
    unknown = sorted(k for k in decision.labels if k not in CATEGORY_SLUGS)
    if unknown:
        raise ApiError(400, "invalid_labels",
                       f"unknown category slug(s): {', '.join(unknown)}; expected {', '.join(CATEGORY_SLUGS)}")
    for where, value in (("reviewer", decision.reviewer), ("note", decision.note), ("lease_token", decision.lease_token)):
        check_unicode(value, where)
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
    runtime = runtime_of(request)
    authorize(request, runtime, "admin")
    if runtime.reloader is None:
        raise ApiError(503, "not_ready", "hot reload is not available in this worker")
    result = await anyio.to_thread.run_sync(runtime.reloader.reload, "admin")
    request.state.log_fields.update(reload=result.status, changed=list(result.changed))
    if result.status == "refused":
        raise ApiError(422, "reload_refused", f"the changed {' and '.join(result.changed)} was refused: "
                       f"{result.reason}; still serving model {result.model_version}, policy {result.policy_version}")
    name = runtime.predictor.info.name
    out = ReloadOut(status=result.status, changed=list(result.changed),
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
        return error_response(request, 405, "method_not_allowed",
                               f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}",
                               {"Allow": ", ".join(allowed)})
    return error_response(request, 404, "not_found", f"no such endpoint: {request.method} /v1/{rest}")


# ---- the review console, offline docs (serving/console.py) ----------------------------------------

from shenhe.serving import console  # noqa: E402  (its routes go after ours)

console.install(app)

