"""The review console (``/review``, ``/review/admin``) and the offline API docs (``/v1/docs``).

Server-rendered pages (Jinja2 templates in serving/templates) with a little vanilla JavaScript
(serving/static); every asset is served from here, nothing from a CDN, no build step.

Sign-in: the reviewer pastes their API key once; the console stores a random session token in the
database (with the key's SHA-256, re-checked on every request, so a key removed from the keys file
signs its sessions out) and sets it as an ``HttpOnly; SameSite=Strict`` cookie. The JSON endpoints
under ``/review/api`` also take the key in a header like the ``/v1`` API. Without API keys the
console is open (the server then answers loopback clients only).

The reviewer recorded with a decision is always the signed-in key's name.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.stats import wilson
from shenhe.serving.api_errors import ApiError, error_response
from shenhe.serving.auth import ANONYMOUS, AuthFailure, Principal, digest, presented_key
from shenhe.serving.body import check_unicode, read_json, validate
from shenhe.serving.live_precision import MIN_FLAG_SAMPLES, for_runtime
from shenhe.serving.queue import ClaimedItem, ReviewNotFound
from shenhe.serving.request_context import runtime_of

if TYPE_CHECKING:
    from shenhe.serving.runtime import Runtime

M = TypeVar("M", bound=BaseModel)

HERE = FsPath(__file__).resolve().parent
STATIC_DIR = HERE / "static"
COOKIE = "shenhe_session"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

# Short Chinese names of the nine Article 9 categories (the policy's article_text is the full wording).
CATEGORY_NAMES_ZH: dict[str, str] = {
    "constitution": "违反宪法",
    "national_security": "危害国家安全",
    "national_honor": "损害国家荣誉",
    "ethnic_hatred": "民族仇恨",
    "religion_cult": "邪教迷信",
    "rumor": "谣言",
    "obscene_violent": "淫秽暴力",
    "insult_defamation": "侮辱诽谤",
    "other_illegal": "其他违法",
}
BAND_NAMES_ZH = {"review": "送审区", "block": "拦截区"}
KIND_NAMES_ZH = {"review": "模型送审", "audit": "拦截抽检", "second": "二次复核"}
ACTION_NAMES_ZH = {"claim": "领取", "release": "放回", "decide": "判定", "undo": "撤销", "ask_opinion": "再次复核"}
# Claim orders the console offers (the first is selected unless the server's review_order is uncertainty).
CONSOLE_ORDERS = {"oldest": "最早优先", "newest": "最新优先", "uncertainty": "最不确定优先"}
_SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_ID_RE = re.compile(r"^[0-9a-f]{32}$")

templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)
router = APIRouter(include_in_schema=False)


# ---- helpers ---------------------------------------------------------------------------------------


def _principal(request: Request, runtime: Runtime) -> Principal | None:
    """The caller: a key in the headers, else the session cookie; None when neither is valid."""
    if not runtime.keys.enabled:
        return ANONYMOUS
    key = presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
    if key:
        return runtime.keys.authenticate(key)  # 401 on an unknown key
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 200:
        return None
    d = runtime.store.session_key(token)
    return runtime.keys.by_digest(d) if d else None


def _require(request: Request, runtime: Runtime, role: str) -> Principal:
    principal = _principal(request, runtime)
    if principal is None:
        raise AuthFailure(401, "unauthorized", "not signed in: sign in at /review with your API key")
    if not principal.may(role):
        raise AuthFailure(403, "forbidden", f"this API key ({principal.name}) lacks the '{role}' role")
    request.state.log_fields["api_key"] = principal.name
    return principal


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={
        "Content-Security-Policy": CSP, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _json(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


async def _body(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; an empty body counts as ``{}``."""
    raw = await request.body()
    data: Any = {} if not raw.strip() else await read_json(request, runtime_of(request).config)
    return validate(model, data)


def segments(text: str, reasons: list[dict[str, Any]], matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The text cut where highlighting changes: each piece with the categories whose scoring window
    (``span``) or matched word (``term``) covers it. Offsets are code points (as the API reports them)."""
    n = len(text)
    span_cats: list[set[str]] = [set() for _ in range(n)]
    term_cats: list[set[str]] = [set() for _ in range(n)]
    for r in reasons:
        start, end = (int(x) for x in r.get("span", (0, 0)))
        if r.get("kind") in ("block", "review"):
            for i in range(max(0, start), min(n, end)):
                span_cats[i].add(r["category"])
    for m in matches:
        for i in range(max(0, int(m["start"])), min(n, int(m["end"]))):
            term_cats[i].add(m["category"])
    out: list[dict[str, Any]] = []
    for i, ch in enumerate(text):
        key = (sorted(span_cats[i]), sorted(term_cats[i]))
        if out and (out[-1]["span"], out[-1]["term"]) == key:
            out[-1]["text"] += ch
        else:
            out.append({"text": ch, "span": key[0], "term": key[1]})
    return out


def _item_json(item: ClaimedItem, runtime: Runtime) -> dict[str, Any]:
    policy = runtime.predictor.policy
    cats = set(item.categories)
    return {
        "review_id": item.review_id,
        "id": item.caller_id,
        "kind": item.kind,
        "kind_zh": KIND_NAMES_ZH.get(item.kind, item.kind),
        "text": item.text,
        "segments": segments(item.text, item.reasons, item.matches),
        "decision": item.decision,
        "categories": item.categories,
        "reasons": item.reasons,
        "matches": item.matches,
        "scores": [
            {"category": c.slug, "name_zh": CATEGORY_NAMES_ZH[c.slug], "score": float(item.scores.get(c.slug, 0.0)),
             "review_threshold": c.review_threshold, "block_threshold": c.block_threshold,
             "behind_decision": c.slug in cats}
            for c in policy.categories
        ],
        "model": {"name": item.model_name, "version": item.model_version},
        "policy_version": item.policy_version,
        "current_policy_version": policy.version,
        "request_id": item.request_id,
        "created_at": item.created_at.isoformat(),
        "lease_token": item.lease_token,
        "lease_expires_at": item.lease_expires_at.isoformat(),
    }


def _age(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} 秒"
    if seconds < 3600:
        return f"{seconds // 60} 分钟"
    if seconds < 86400:
        return f"{seconds // 3600} 小时"
    return f"{seconds // 86400} 天"


def _categories_ctx() -> list[dict[str, Any]]:
    return [{"key": str(i + 1), "slug": s, "name_zh": CATEGORY_NAMES_ZH[s]} for i, s in enumerate(CATEGORY_SLUGS)]


# ---- pages ---------------------------------------------------------------------------------------


@router.get("/review")
async def review_page(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_principal, request, runtime)
    if principal is None:
        return _html(templates.get_template("login.html").render(title="登录 · shenhe 审核台"))
    if not principal.may("review"):
        return _html(templates.get_template("message.html").render(
            title="无权限", message=f"此 API 密钥（{principal.name}）没有 review 角色。"), 403)
    return _html(templates.get_template("review.html").render(
        title="审核台 · shenhe", user=principal.name, is_admin=principal.may("admin"),
        keys_enabled=runtime.keys.enabled, categories=_categories_ctx(), bands=BAND_NAMES_ZH,
        undo_seconds=runtime.config.undo_seconds, orders=CONSOLE_ORDERS,
        default_order="uncertainty" if runtime.config.review_order == "uncertainty" else "oldest"))


@router.get("/review/admin")
async def admin_page(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_principal, request, runtime)
    if principal is None:
        return RedirectResponse("/review", status_code=303)
    if not principal.may("admin"):
        return _html(templates.get_template("message.html").render(
            title="无权限", message=f"管理页需要 admin 角色；此 API 密钥（{principal.name}）没有。"), 403)
    ctx = await anyio.to_thread.run_sync(_admin_context, runtime)
    return _html(templates.get_template("admin.html").render(title="管理 · shenhe 审核台", user=principal.name,
                                                             **ctx))


def _admin_context(runtime: Runtime) -> dict[str, Any]:
    live = for_runtime(runtime)
    report = live.report(fresh=True)
    rows = runtime.store.decided_rows()
    now = datetime.now(UTC).replace(tzinfo=None)
    # throughput and disagreement with the model, per reviewer
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        who = r["reviewer"] or "?"
        c = per[who]
        c["total"] += 1
        c["day"] += r["decided_at"] >= now - timedelta(days=1)
        c["week"] += r["decided_at"] >= now - timedelta(days=7)
        if r["kind"] != "second":
            c["vs_model_n"] += 1
            c["vs_model_disagree"] += not (set(r["categories"] or []) & set(r["labels"] or []))
    reviewers = [{"name": k, **v, "disagree_rate": (v["vs_model_disagree"] / v["vs_model_n"]) if v["vs_model_n"] else None}
                 for k, v in sorted(per.items(), key=lambda kv: -kv[1]["total"])]
    # second opinions
    by_seq = {r["seq"]: r for r in rows}
    pairs = []
    for r in rows:
        if r["kind"] == "second" and r["parent_seq"] in by_seq:
            first = by_seq[r["parent_seq"]]
            pairs.append({"review_id": first["review_id"], "first": first["reviewer"], "second": r["reviewer"],
                          "first_labels": first["labels"] or [], "second_labels": r["labels"] or [],
                          "agree": sorted(first["labels"] or []) == sorted(r["labels"] or [])})
    agreed = sum(p["agree"] for p in pairs)
    lo, hi = wilson(agreed, len(pairs))
    audit = runtime.store.audit_log(200)
    return {
        "report": report, "names": CATEGORY_NAMES_ZH, "bands": BAND_NAMES_ZH, "min_flag": MIN_FLAG_SAMPLES,
        "reviewers": reviewers, "pairs": pairs[-50:][::-1], "agreement": {
            "n": len(pairs), "agreed": agreed, "rate": agreed / len(pairs) if pairs else None, "low": lo, "high": hi},
        "audit": audit, "actions": ACTION_NAMES_ZH, "kinds": KIND_NAMES_ZH,
        "config": runtime.config, "policy_version": runtime.predictor.policy.version,
    }


@router.get("/review/static/{name}")
async def static_file(name: str) -> Response:
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in _STATIC_TYPES or not path.is_file():
        return error_response(None, 404, "not_found", f"no such file: /review/static/{name}")
    return Response(path.read_bytes(), media_type=_STATIC_TYPES[path.suffix],
                    headers={"Cache-Control": "no-cache"})


# ---- JSON endpoints of the console -----------------------------------------------------------------


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: StrictStr = Field(min_length=1, max_length=1000)


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: StrictStr | None = None
    band: StrictStr | None = None
    order: StrictStr | None = None  # oldest | newest | uncertainty; None: the server's review_order
    skip: list[StrictStr] = Field(default_factory=list, max_length=200)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[StrictStr] = Field(max_length=9)
    note: StrictStr | None = Field(None, max_length=4000)
    lease_token: StrictStr = Field(min_length=1, max_length=64)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease_token: StrictStr = Field(min_length=1, max_length=64)


def _check_id(review_id: str) -> None:
    if not _ID_RE.match(review_id):
        raise ReviewNotFound(f"no review item {review_id!r}")


@router.post("/review/api/session")
async def sign_in(request: Request) -> Response:
    runtime = runtime_of(request)
    body: SessionIn = await _body(request, SessionIn)
    if not runtime.keys.enabled:
        return _json({"name": ANONYMOUS.name, "roles": sorted(ANONYMOUS.roles)})
    principal = runtime.keys.authenticate(body.key.strip())
    if not principal.may("review"):
        raise AuthFailure(403, "forbidden", f"this API key ({principal.name}) lacks the 'review' role")
    token = await anyio.to_thread.run_sync(runtime.store.create_session, digest(body.key.strip()),
                                           runtime.config.session_hours)
    request.state.log_fields["api_key"] = principal.name
    resp = _json({"name": principal.name, "roles": sorted(principal.roles)})
    resp.set_cookie(COOKIE, token, max_age=runtime.config.session_hours * 3600, path="/", httponly=True,
                    samesite="strict", secure=request.url.scheme == "https")
    return resp


@router.post("/review/api/session/end")
async def sign_out(request: Request) -> Response:
    runtime = runtime_of(request)
    token = request.cookies.get(COOKIE)
    if token and len(token) <= 200:
        await anyio.to_thread.run_sync(runtime.store.end_session, token)
    resp = _json({"signed_out": True})
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return resp


@router.get("/review/api/queue")
async def queue_overview(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_require, request, runtime, "review")
    rows = await anyio.to_thread.run_sync(runtime.store.overview, principal.name)
    for r in rows:
        r["name_zh"] = CATEGORY_NAMES_ZH.get(r["category"], r["category"])
        r["band_zh"] = BAND_NAMES_ZH.get(r["band"], r["band"])
        r["age_zh"] = _age(r["oldest_age_s"])
    return _json({"user": principal.name, "rows": rows})


@router.post("/review/api/claim")
async def claim(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_require, request, runtime, "review")
    body: ClaimIn = await _body(request, ClaimIn)
    if body.category is not None and body.category not in CATEGORY_SLUGS:
        raise ApiError(400, "invalid_category", f"unknown category {body.category!r}")
    if body.band is not None and body.band not in BAND_NAMES_ZH:
        raise ApiError(400, "invalid_band", f"unknown band {body.band!r}; expected review or block")
    order = body.order or ("uncertainty" if runtime.config.review_order == "uncertainty" else "oldest")
    if order not in CONSOLE_ORDERS:
        raise ApiError(400, "invalid_order", f"unknown order {order!r}; expected {', '.join(CONSOLE_ORDERS)}")
    item = await anyio.to_thread.run_sync(lambda: runtime.store.claim(
        runtime.config.lease_seconds, principal.name, category=body.category, band=body.band,
        order=order, skip=body.skip))
    if item is None:
        return Response(status_code=204)
    request.state.log_fields["review_id"] = item.review_id
    return _json(_item_json(item, runtime))


@router.post("/review/api/items/{review_id}/decision")
async def decide(request: Request, review_id: str = Path(...)) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_require, request, runtime, "review")
    _check_id(review_id)
    body: DecisionIn = await _body(request, DecisionIn)
    unknown = sorted(set(body.labels) - set(CATEGORY_SLUGS))
    if unknown:
        raise ApiError(400, "invalid_labels", f"unknown category slug(s): {', '.join(unknown)}")
    for where, value in (("note", body.note), ("lease_token", body.lease_token)):
        check_unicode(value, where)
    request.state.log_fields["review_id"] = review_id
    rec = await anyio.to_thread.run_sync(lambda: runtime.store.decide(
        review_id, body.labels, principal.name, body.note or None, body.lease_token,
        second_opinion_share=runtime.config.second_opinion_share))
    return _json({"review_id": rec.review_id, "labels": rec.labels, "reviewer": rec.reviewer, "note": rec.note,
                  "decided_at": rec.decided_at.isoformat(), "undo_seconds": runtime.config.undo_seconds})


@router.post("/review/api/items/{review_id}/release")
async def release(request: Request, review_id: str = Path(...)) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_require, request, runtime, "review")
    _check_id(review_id)
    body: ReleaseIn = await _body(request, ReleaseIn)
    await anyio.to_thread.run_sync(runtime.store.release, review_id, body.lease_token, principal.name)
    return _json({"review_id": review_id, "released": True})


@router.post("/review/api/items/{review_id}/undo")
async def undo(request: Request, review_id: str = Path(...)) -> Response:
    runtime = runtime_of(request)
    principal = await anyio.to_thread.run_sync(_require, request, runtime, "review")
    _check_id(review_id)
    item = await anyio.to_thread.run_sync(runtime.store.undo, review_id, principal.name,
                                          runtime.config.undo_seconds, runtime.config.lease_seconds)
    return _json(_item_json(item, runtime))


# ---- offline API docs ----------------------------------------------------------------------------


def _swagger_dir() -> FsPath:
    import swagger_ui

    return FsPath(swagger_ui.__file__).resolve().parent / "static"


@router.get("/v1/docs")
async def docs() -> Response:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url="/v1/openapi.json", title="shenhe API",
                               swagger_js_url="/v1/docs/assets/swagger-ui-bundle.js",
                               swagger_css_url="/v1/docs/assets/swagger-ui.css",
                               swagger_favicon_url="/v1/docs/assets/favicon-32x32.png")


@router.get("/v1/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    if name not in _SWAGGER_ASSETS:
        return error_response(None, 404, "not_found", f"no such file: /v1/docs/assets/{name}")
    media = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
    path = _swagger_dir() / name
    return Response(path.read_bytes(), media_type=media[path.suffix], headers={"Cache-Control": "max-age=86400"})


def install(app: FastAPI) -> None:
    """Add the console's routes ahead of the ``/v1/{rest:path}`` catch-all."""
    app.router.routes[:] = [*router.routes, *app.router.routes]
