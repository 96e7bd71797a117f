"""The review console's server side on the real service: queue semantics over HTTP (lease, identity,
audit rows), hardening (Host, Origin, content types, /metrics key, 0600 database), console sign-in
and live precision on /metrics and the admin page."""

from __future__ import annotations

import re
import stat
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from shenhe.models.types import ModelInfo, Prediction, Reason
from shenhe.serving.queue import NewReviewItem, ReviewStore, review_items
from tests.conftest import present
from tests.serving.conftest import INSULT, KEYS, ServerProcess, auth

pytestmark = pytest.mark.integration

def uid() -> str:
    return uuid.uuid4().hex[:12]


def queue_one(server: ServerProcess) -> str:
    r = httpx.post(f"{server.url}/v1/classify", headers=auth("classify"), timeout=60,
                   json={"items": [{"id": f"c-{uid()}", "text": f"{INSULT} {uid()}"}]})
    assert r.status_code == 200, r.text
    return r.json()["items"][0]["review_id"]


def claim_item(server: ServerProcess, rid: str, role: str = "review") -> dict:
    """Claim until ``rid`` comes up (other tests may have left items); release the others."""
    for _ in range(500):
        r = httpx.get(f"{server.url}/v1/review/next", headers=auth(role), params={"lease_seconds": 600})
        assert r.status_code == 200, r.text
        item = r.json()
        if item["review_id"] == rid:
            return item
        httpx.post(f"{server.url}/v1/review/{item['review_id']}", headers=auth(role),
                   json={"labels": {}, "lease_token": item["lease_token"]})
    raise AssertionError(f"{rid} never came up")


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["message"], body


# ---- queue semantics -----------------------------------------------------------------------------


def test_decision_on_an_item_leased_to_someone_else_is_409_whatever_the_body_says(
        server: ServerProcess, store: ReviewStore) -> None:
    rid = queue_one(server)
    held = claim_item(server, rid)
    url = f"{server.url}/v1/review/{rid}"
    for body in ({"labels": {"insult_defamation": True}},
                 {"labels": {"insult_defamation": True}, "reviewer": "reviewers"},
                 {"labels": {}, "lease_token": "f" * 32}):
        for role in ("review2", "admin"):
            assert_error(httpx.post(url, json=body, headers=auth(role)), 409, "leased")
    assert present(store.get(rid))["state"] == "open"
    ok = httpx.post(url, headers=auth("review"),
                    json={"labels": {"insult_defamation": True}, "reviewer": "someone-else", "note": "n",
                          "lease_token": held["lease_token"]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["reviewer"] == "reviewers"  # the key's name, not the body's
    assert present(store.get(rid))["reviewer"] == "reviewers"
    actions = [(a["actor"], a["action"]) for a in store.audit_log(review_id=rid)][::-1]
    assert ("reviewers", "claim") in actions and actions[-1] == ("reviewers", "decide")


def test_console_actions_write_audit_rows_with_the_key_name(server: ServerProcess, store: ReviewStore) -> None:
    rid = queue_one(server)
    h = auth("review2")
    item = None
    for _ in range(500):
        r = httpx.post(f"{server.url}/review/api/claim", headers=h, json={})
        assert r.status_code == 200, r.text
        if r.json()["review_id"] == rid:
            item = r.json()
            break
        httpx.post(f"{server.url}/review/api/items/{r.json()['review_id']}/release", headers=h,
                   json={"lease_token": r.json()["lease_token"]})
    assert item is not None
    assert item["id"].startswith("c-") and item["kind"] == "review" and item["segments"]
    assert "".join(s["text"] for s in item["segments"]) == item["text"]
    assert any("insult_defamation" in s["term"] for s in item["segments"])  # the word-list hit is highlighted
    assert len(item["scores"]) == 9 and all("review_threshold" in s for s in item["scores"])
    base = f"{server.url}/review/api/items/{rid}"
    assert httpx.post(f"{base}/release", headers=h, json={"lease_token": item["lease_token"]}).status_code == 200
    item = httpx.post(f"{server.url}/review/api/claim", headers=h, json={"order": "newest"}).json()
    assert item["review_id"] == rid
    d = httpx.post(f"{base}/decision", headers=h, json={"labels": ["insult_defamation"], "note": "脏话",
                                                       "lease_token": item["lease_token"]})
    assert d.status_code == 200 and d.json()["reviewer"] == "bob"
    assert_error(httpx.post(f"{base}/undo", headers=auth("review")), 409, "undo_refused")  # not their decision
    u = httpx.post(f"{base}/undo", headers=h)
    assert u.status_code == 200 and u.json()["review_id"] == rid and present(store.get(rid))["state"] == "open"
    d2 = httpx.post(f"{base}/decision", headers=h, json={"labels": [], "lease_token": u.json()["lease_token"]})
    assert d2.status_code == 200
    log = store.audit_log(review_id=rid)[::-1]
    bob = [a["action"] for a in log if a["actor"] == "bob"]
    assert bob[-6:] == ["claim", "release", "claim", "decide", "undo", "decide"]
    assert log[-1]["detail"]["labels"] == [] and log[-3]["detail"]["labels"] == ["insult_defamation"]


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/review/api/claim", {"category": "nope"}, "invalid_category"),
    ("/review/api/claim", {"band": "x"}, "invalid_band"),
    ("/review/api/claim", {"order": "random"}, "invalid_order"),
    ("/review/api/claim", {"skip": "notalist"}, "invalid_request"),
    ("/review/api/items/" + "0" * 32 + "/decision", {"labels": ["bogus"], "lease_token": "x"}, "invalid_labels"),
])
def test_bad_console_requests_are_400(server: ServerProcess, path: str, body: dict, code: str) -> None:
    assert_error(httpx.post(f"{server.url}{path}", json=body, headers=auth("review")), 400, code)


def test_console_needs_a_reviewer(server: ServerProcess) -> None:
    assert_error(httpx.post(f"{server.url}/review/api/claim", json={}), 401, "unauthorized")
    assert_error(httpx.post(f"{server.url}/review/api/claim", json={}, headers=auth("classify")), 403, "forbidden")
    assert_error(httpx.post(f"{server.url}/review/api/items/nothex/release", json={"lease_token": "x"},
                            headers=auth("review")), 404, "not_found")
    page = httpx.get(f"{server.url}/review")
    assert page.status_code == 200 and "登录审核台" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server.url}/review/admin", headers=auth("review")).status_code == 403


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_it(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as c:
        assert_error(c.post("/review/api/session", json={"key": "wrong-key-0123456789"}), 401, "unauthorized")
        assert_error(c.post("/review/api/session", json={"key": KEYS["classify"]}), 403, "forbidden")
        r = c.post("/review/api/session", json={"key": KEYS["review"]})
        assert r.status_code == 200 and r.json()["name"] == "reviewers"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and re.search(r"SameSite=strict", cookie, re.I) and KEYS["review"] not in cookie
        page = c.get("/review")
        assert "审核台" in page.text and "reviewers" in page.text and "登录审核台" not in page.text
        assert c.get("/review/api/queue").status_code == 200
        assert c.post("/review/api/session/end").status_code == 200
        assert_error(c.get("/review/api/queue"), 401, "unauthorized")


# ---- hardening -----------------------------------------------------------------------------------


def test_cross_origin_state_changes_are_refused(server: ServerProcess, store: ReviewStore) -> None:
    rid = queue_one(server)
    evil = {**auth("review"), "Origin": "http://evil.example"}
    assert_error(httpx.post(f"{server.url}/v1/review/{rid}", json={"labels": {}}, headers=evil), 403,
                 "origin_not_allowed")
    assert_error(httpx.post(f"{server.url}/v1/classify", json={"items": [{"text": "x"}]},
                            headers={**auth("classify"), "Origin": "null"}), 403, "origin_not_allowed")
    assert_error(httpx.post(f"{server.url}/review/api/claim", json={},
                            headers={**auth("review"), "Sec-Fetch-Site": "cross-site"}), 403, "origin_not_allowed")
    assert present(store.get(rid))["state"] == "open" and not store.audit_log(review_id=rid)
    assert '"error": "origin_not_allowed"' in server.log_text()
    same = httpx.post(f"{server.url}/v1/classify", json={"items": [{"text": "你好"}]},
                      headers={**auth("classify"), "Origin": server.url})
    assert same.status_code == 200, same.text


def test_wrong_host_is_refused(server: ServerProcess) -> None:
    for path in ("/v1/review/stats", "/review", "/metrics"):
        r = httpx.get(f"{server.url}{path}", headers={**auth("admin"), "Host": "evil.example"})
        assert_error(r, 400, "host_not_allowed")
    r = httpx.get(f"{server.url}/v1/review/stats", headers={**auth("admin"), "Host": f"localhost:{server.port}"})
    assert r.status_code == 200
    assert httpx.get(f"{server.url}/readyz", headers={"Host": "10.1.2.3:3000"}).status_code == 200  # probes


def test_api_takes_json_only(server: ServerProcess) -> None:
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"):
        r = httpx.post(f"{server.url}/v1/classify", content=b'{"items":[{"text":"x"}]}',
                       headers={**auth("classify"), "Content-Type": ctype})
        assert_error(r, 415, "unsupported_media_type")
    ok = httpx.post(f"{server.url}/v1/classify", content=b'{"items":[{"text":"x"}]}',
                    headers={**auth("classify"), "Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_metrics_need_a_key_with_the_metrics_role(server: ServerProcess) -> None:
    assert_error(httpx.get(f"{server.url}/metrics"), 401, "unauthorized")
    assert_error(httpx.get(f"{server.url}/metrics", headers=auth("classify")), 403, "forbidden")
    for role in ("metrics", "admin"):
        r = httpx.get(f"{server.url}/metrics", headers=auth(role))
        assert r.status_code == 200 and "shenhe_review_queue_depth" in r.text


def test_sqlite_database_file_is_owner_only(sqlite_server: ServerProcess) -> None:
    db = Path(make_url(str(sqlite_server.extra["db_url"])).database or "")
    assert db.is_file()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    wal = Path(f"{db}-wal")
    if wal.exists():
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_docs_use_local_assets(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/v1/docs")
    assert page.status_code == 200 and "/v1/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text.replace("https://fastapi", "")
    js = httpx.get(f"{server.url}/v1/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert httpx.get(f"{server.url}/v1/docs/assets/../../etc/passwd").status_code == 404


# ---- live precision ------------------------------------------------------------------------------


def block_prediction(category: str) -> Prediction:
    return Prediction(
        scores={category: 0.97}, decision="block", categories=[category],
        reasons=[Reason(category, "block", 0.97, 0.9, (0, 4))], matches=[], model=ModelInfo("tiny", "0.0.1"),
        policy_version="test-2026.1")


def seed_block_audits(store: ReviewStore, category: str, confirmed: int, rejected: int) -> None:
    """Decided audit items of auto-blocks: ``confirmed`` with the category, ``rejected`` without. Written
    decided in one step, so that no console claiming at the same time can take one."""
    tag = uid()
    ids = store.enqueue([NewReviewItem(f"seed-{tag}-{i}", f"拦截样本 {tag} {i}", block_prediction(category), kind="audit")
                         for i in range(confirmed + rejected)]).review_ids
    now = datetime.now(UTC).replace(tzinfo=None)
    with store.engine.begin() as conn:
        for labels, chunk in (([category], ids[:confirmed]), ([], ids[confirmed:])):
            conn.execute(update(review_items).where(review_items.c.review_id.in_(chunk)).values(
                state="decided", labels=labels, reviewer="seeder", decided_at=now, lease_token=None,
                lease_expires_at=None, lease_holder=None))


def test_live_precision_on_metrics_and_a_flag_on_the_admin_page(server: ServerProcess, store: ReviewStore) -> None:
    seed_block_audits(store, "religion_cult", confirmed=3, rejected=9)  # 25%: far below the 95% target
    seed_block_audits(store, "national_honor", confirmed=12, rejected=0)
    page = httpx.get(f"{server.url}/review/admin", headers=auth("admin"))
    assert page.status_code == 200
    flagged = re.search(r'<tr class="flagged" data-category="religion_cult" data-band="block">(.*?)</tr>', page.text, re.S)
    assert flagged is not None and "低于目标" in flagged.group(1)
    assert 'class="flagged" data-category="national_honor"' not in page.text
    assert 'id="precision-alert"' in page.text
    deadline = time.monotonic() + 30  # /metrics caches the estimate for a few seconds
    while True:
        text = httpx.get(f"{server.url}/metrics", headers=auth("metrics")).text
        m = re.search(r'shenhe_live_precision\{category="religion_cult",band="block"\} ([0-9.]+)', text)
        if m or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert m is not None, text[-2000:]
    assert float(m.group(1)) < 0.95
    assert 'shenhe_live_precision_below_target{category="religion_cult"} 1' in text
    assert re.search(r'shenhe_live_precision_lower\{category="religion_cult",band="block"\}', text)
    assert 'live precision below target' in server.log_text()
