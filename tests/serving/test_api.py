"""The real service (``shenhe serve`` subprocess on a free port), every endpoint and error case,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.serving.queue import ReviewStore
from tests.serving.conftest import EVERYDAY, INSULT, KEYS, ServerProcess, auth

pytestmark = pytest.mark.integration

def classify(server: ServerProcess, items: list[dict], role: str = "classify",
             headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/classify", json={"items": items}, headers=headers or auth(role), timeout=60)


def post_raw(server: ServerProcess, body: bytes, role: str = "classify") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/classify", content=body, timeout=60,
                      headers={**auth(role), "Content-Type": "application/json"})


def uid() -> str:
    return uuid.uuid4().hex[:12]


def drain(server: ServerProcess) -> None:
    """Decide every claimable item so FIFO assertions start from an empty queue."""
    for _ in range(10_000):
        r = httpx.get(f"{server.url}/v1/review/next", headers=auth("review"), timeout=30)
        if r.status_code == 204:
            return
        assert r.status_code == 200, r.text
        d = httpx.post(f"{server.url}/v1/review/{r.json()['review_id']}", headers=auth("review"), timeout=30,
                       json={"labels": {}, "reviewer": "drain", "lease_token": r.json()["lease_token"]})
        assert d.status_code == 200, d.text
    raise AssertionError("queue did not drain")


def assert_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


# ---- classify ------------------------------------------------------------------------------------


def test_classify_insult_reviewed_everyday_passes(server: ServerProcess, tiny_bundle: Path) -> None:
    from shenhe.models.bundle import load_bundle

    manifest = load_bundle(tiny_bundle).manifest
    caller = f"post-{uid()}"
    r = classify(server, [{"id": caller, "text": INSULT}, {"text": EVERYDAY}],
                 headers={**auth("classify"), "X-Request-ID": "monitor-batch-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "monitor-batch-7" == r.headers["x-request-id"]
    assert body["model"] == {"name": manifest.name, "version": manifest.version}
    assert body["policy_version"] == "test-2026.1"
    insult, everyday = body["items"]
    assert insult["id"] == caller and everyday["id"] is None
    assert insult["decision"] == "review" and insult["categories"] == ["insult_defamation"]
    assert list(insult["scores"]) == list(CATEGORY_SLUGS)
    assert all(0.0 <= v <= 1.0 for v in insult["scores"].values())
    start = INSULT.index("傻逼")
    assert insult["matches"] == [{"category": "insult_defamation", "term": "傻逼", "start": start, "end": start + 2,
                                  "action": "review", "via": "exact"}]
    (reason,) = insult["reasons"]
    assert reason["category"] == "insult_defamation" and reason["kind"] == "term"
    assert reason["span"] == [start, start + 2]
    assert isinstance(insult["review_id"], str) and len(insult["review_id"]) == 32
    assert everyday == {**everyday, "decision": "pass", "categories": [], "reasons": [], "review_id": None}


def test_review_item_is_stored_with_everything_before_the_answer(server: ServerProcess, store: ReviewStore) -> None:
    caller = f"c-{uid()}"
    r = classify(server, [{"id": caller, "text": INSULT}])
    review_id = r.json()["items"][0]["review_id"]
    # The response has arrived, so the row must already be committed.
    row = store.get(review_id)
    assert row is not None
    assert row["caller_id"] == caller and row["text"] == INSULT and row["state"] == "open"
    assert row["categories"] == ["insult_defamation"]
    assert row["reasons"][0]["kind"] == "term" and row["matches"][0]["term"] == "傻逼"
    assert set(row["scores"]) == set(CATEGORY_SLUGS)
    assert row["policy_version"] == "test-2026.1" and row["model_name"] and row["model_version"]
    assert row["request_id"] == r.json()["request_id"]


def test_identical_id_and_text_is_queued_once(server: ServerProcess, store: ReviewStore) -> None:
    caller = f"retry-{uid()}"
    first = classify(server, [{"id": caller, "text": INSULT}]).json()["items"][0]["review_id"]
    before = len(store.review_ids())
    again = classify(server, [{"id": caller, "text": INSULT}, {"id": caller, "text": INSULT}]).json()["items"]
    assert [i["review_id"] for i in again] == [first, first]
    assert len(store.review_ids()) == before
    other = classify(server, [{"id": f"{caller}-b", "text": INSULT}]).json()["items"][0]["review_id"]
    assert other != first


@pytest.mark.parametrize("text", ["", "   ", "\n\t \u3000"])
def test_empty_and_whitespace_text_passes(server: ServerProcess, text: str) -> None:
    r = classify(server, [{"id": "blank", "text": text}])
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["decision"] == "pass" and item["review_id"] is None


@pytest.mark.parametrize("text", [
    "今天好开心😀🎉👍🏽",
    "零\u200b宽\u200d字\ufeff符",
    "控制\x00字符\x07和\x1b[31m转义",
    "混合 scripts: Привет, مرحبا, こんにちは, 안녕하세요",
    "這是繁體中文的句子，我們一起學習。",
    "\U0001F9D1\u200d\U0001F4BB 𠀀𪚥 😀",
])
def test_unusual_texts_are_classified(server: ServerProcess, text: str) -> None:
    r = classify(server, [{"text": text}])
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["decision"] in ("pass", "review", "block")


def test_traditional_and_obfuscated_insults_reach_review(server: ServerProcess, store: ReviewStore) -> None:
    # Normalisation (t2s, zero-width removal, full-width folding) runs in the serving path too.
    texts = ["你這個傻\u200b逼", "傻\x00逼一个", "ＳＢ 废物\u200d"]
    r = classify(server, [{"id": f"n-{uid()}", "text": t} for t in texts])
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["decision"] for i in items] == ["review"] * 3
    for text, item in zip(texts, items, strict=True):
        m = item["matches"][0]
        assert m["category"] == "insult_defamation"
        assert text[m["start"]] in "傻废"  # positions are in the caller's original text
        assert store.get(item["review_id"])["text"] == text  # NUL and zero-width characters stored intact


def test_long_text_reason_points_into_the_original_text(server: ServerProcess) -> None:
    filler = EVERYDAY * 120
    text = filler + INSULT + filler
    assert len(text) < 20_000
    item = classify(server, [{"text": text}]).json()["items"][0]
    assert item["decision"] == "review"
    (reason,) = item["reasons"]
    start = len(filler) + INSULT.index("傻逼")
    assert reason["span"] == [start, start + 2]


def test_text_at_the_cap_is_accepted_and_one_over_is_refused(server: ServerProcess) -> None:
    assert classify(server, [{"text": "好" * 20_000}]).status_code == 200
    body = assert_error(classify(server, [{"text": "好"}, {"text": "好" * 20_001}]), 400, "text_too_long")
    assert "items[1]" in body["message"] and "20000" in body["message"]


def test_256_items_accepted(server: ServerProcess) -> None:
    items = [{"id": str(i), "text": EVERYDAY if i % 2 else f"第{i}条消息"} for i in range(256)]
    r = classify(server, items)
    assert r.status_code == 200, r.text
    assert [i["id"] for i in r.json()["items"]] == [str(i) for i in range(256)]


# ---- bad input: clear 4xx, never 500 -------------------------------------------------------------


@pytest.mark.parametrize(("body", "code"), [
    (b'{"items": [{"text": "hi"}', "invalid_json"),
    (b"", "invalid_json"),
    (b"not json at all", "invalid_json"),
    (b"[" * 100_000, "invalid_json"),
    (b'{"items": [{"text": "caf\xe9"}]}', "invalid_encoding"),
    ('{"items": [{"text": "你好"}]}'.encode("utf-16"), "invalid_encoding"),
    ('{"items": [{"text": "你好"}]}'.encode("gbk"), "invalid_encoding"),
    (b'{"items": [{"text": "\\ud800"}]}', "invalid_text"),
    (b'{"items": [{"id": "\\udfff", "text": "x"}]}', "invalid_text"),
    (b'{"items": []}', "empty_items"),
    (b'[{"text": "x"}]', "invalid_request"),
    (b'"text"', "invalid_request"),
    (b"null", "invalid_request"),
    (b"{}", "invalid_request"),
    (b'{"items": {"text": "x"}}', "invalid_request"),
    (b'{"items": ["x"]}', "invalid_request"),
    (b'{"items": [{"text": 5}]}', "invalid_request"),
    (b'{"items": [{"text": null}]}', "invalid_request"),
    (b'{"items": [{"id": 5, "text": "x"}]}', "invalid_request"),
    (b'{"items": [{"id": "a"}]}', "invalid_request"),
    (b'{"items": [{"txt": "x"}]}', "invalid_request"),
    (b'{"items": [{"text": "x"}], "extra": 1}', "invalid_request"),
    (b'{"items": [{"text": ["x"]}]}', "invalid_request"),
])
def test_bad_bodies_get_a_clear_4xx(server: ServerProcess, body: bytes, code: str) -> None:
    assert_error(post_raw(server, body), 400, code)


def test_too_many_items(server: ServerProcess) -> None:
    body = assert_error(classify(server, [{"text": "x"}] * 257), 400, "too_many_items")
    assert "256" in body["message"]


def _content_length(raw: bytes) -> int:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_oversized_body_is_413_before_it_is_read(server: ServerProcess) -> None:
    import socket

    host, port = "127.0.0.1", server.port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall((f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEYS['classify']}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{").encode())
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < _content_length(raw):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.decode("utf-8", "replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"] == "body_too_large"


def test_wrong_type_message_names_the_field(server: ServerProcess) -> None:
    body = assert_error(post_raw(server, b'{"items": [{"text": "ok"}, {"text": 3}]}'), 400, "invalid_request")
    assert "items[1].text" in body["message"]


def test_utf8_bom_is_accepted(server: ServerProcess) -> None:
    r = post_raw(server, b"\xef\xbb\xbf" + json.dumps({"items": [{"text": "你好"}]}).encode())
    assert r.status_code == 200, r.text


def test_escaped_surrogate_pair_is_one_character(server: ServerProcess) -> None:
    r = post_raw(server, b'{"items": [{"id": "\\ud83d\\ude00", "text": "\\ud83d\\ude00 \\u4f60\\u597d"}]}')
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["id"] == "😀"


def test_wrong_method_and_unknown_path(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v1/classify", headers=auth("admin"))
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    assert_error(httpx.get(f"{server.url}/v1/nothing-here", headers=auth("admin")), 404, "not_found")


# ---- access control ------------------------------------------------------------------------------


def test_missing_and_wrong_keys_get_401(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/classify", json={"items": [{"text": "x"}]})
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.post(f"{server.url}/v1/classify", json={"items": [{"text": "x"}]},
                            headers={"Authorization": "Bearer not-a-real-key-000000"}), 401, "unauthorized")
    assert_error(httpx.get(f"{server.url}/v1/review/next"), 401, "unauthorized")
    assert_error(httpx.get(f"{server.url}/v1/review/stats", headers={"X-API-Key": "nope"}), 401, "unauthorized")


def test_roles_are_enforced(server: ServerProcess) -> None:
    assert_error(httpx.get(f"{server.url}/v1/review/next", headers=auth("classify")), 403, "forbidden")
    assert_error(httpx.get(f"{server.url}/v1/review/stats", headers=auth("classify")), 403, "forbidden")
    assert_error(httpx.post(f"{server.url}/v1/review/{'0' * 32}", headers=auth("classify"),
                            json={"labels": {}, "reviewer": "x"}), 403, "forbidden")
    assert_error(classify(server, [{"text": "x"}], role="review"), 403, "forbidden")
    # admin may do everything; X-API-Key works like Bearer
    assert classify(server, [{"text": "x"}], role="admin").status_code == 200
    assert httpx.get(f"{server.url}/v1/review/stats", headers={"X-API-Key": KEYS["admin"]}).status_code == 200


def test_auth_is_checked_before_the_body(server: ServerProcess) -> None:
    assert_error(httpx.post(f"{server.url}/v1/classify", content=b"{broken"), 401, "unauthorized")


# ---- review queue --------------------------------------------------------------------------------


def _stats(server: ServerProcess) -> dict:
    r = httpx.get(f"{server.url}/v1/review/stats", headers=auth("review"))
    assert r.status_code == 200, r.text
    return r.json()


def test_review_workflow_fifo_lease_decide(server: ServerProcess) -> None:
    drain(server)
    assert httpx.get(f"{server.url}/v1/review/next", headers=auth("review")).status_code == 204
    s0 = _stats(server)
    a, b = f"a-{uid()}", f"b-{uid()}"
    ids = [i["review_id"] for i in classify(server, [{"id": a, "text": INSULT}, {"id": b, "text": "废物东西"}]).json()["items"]]
    s1 = _stats(server)
    assert s1["open"] == s0["open"] + 2 and s1["total"] == s0["total"] + 2
    assert s1["categories"]["insult_defamation"]["open"] == s0["categories"]["insult_defamation"]["open"] + 2

    first = httpx.get(f"{server.url}/v1/review/next", params={"lease_seconds": 600}, headers=auth("review")).json()
    assert first["review_id"] == ids[0] and first["id"] == a and first["text"] == INSULT  # oldest first
    assert first["decision"] == "review" and first["categories"] == ["insult_defamation"]
    assert first["policy_version"] == "test-2026.1" and first["lease_token"]
    second = httpx.get(f"{server.url}/v1/review/next", headers=auth("review")).json()
    assert second["review_id"] == ids[1]
    assert httpx.get(f"{server.url}/v1/review/next", headers=auth("review")).status_code == 204
    s2 = _stats(server)
    assert s2["claimed"] == s0["claimed"] + 2 and s2["open"] == s0["open"]

    url = f"{server.url}/v1/review/{first['review_id']}"
    decision = {"labels": {"insult_defamation": True, "rumor": False}, "reviewer": "alice", "note": "粗口",
                "lease_token": first["lease_token"]}
    r = httpx.post(url, json=decision, headers=auth("review"))
    assert r.status_code == 200, r.text
    out = r.json()
    # The reviewer recorded is the API key's name, whatever the body says.
    assert out["status"] == "decided" and out["labels"] == ["insult_defamation"] and out["reviewer"] == "reviewers"
    again = httpx.post(url, json=decision, headers=auth("review"))  # idempotent
    assert again.status_code == 200 and again.json()["decided_at"] == out["decided_at"]
    assert_error(httpx.post(url, json={**decision, "labels": {}}, headers=auth("review")), 409, "conflict")
    s3 = _stats(server)
    assert s3["decided"] == s0["decided"] + 1 and s3["claimed"] == s0["claimed"] + 1
    assert s3["categories"]["insult_defamation"]["decided"] == s0["categories"]["insult_defamation"]["decided"] + 1


def test_expired_lease_returns_the_item_and_guards_the_new_holder(server: ServerProcess) -> None:
    drain(server)
    rid = classify(server, [{"id": f"lease-{uid()}", "text": INSULT}]).json()["items"][0]["review_id"]
    old = httpx.get(f"{server.url}/v1/review/next", params={"lease_seconds": 1}, headers=auth("review")).json()
    assert old["review_id"] == rid
    time.sleep(1.5)  # let the 1-second lease run out (not a timing assertion)
    new = httpx.get(f"{server.url}/v1/review/next", params={"lease_seconds": 600}, headers=auth("review")).json()
    assert new["review_id"] == rid and new["lease_token"] != old["lease_token"]
    url = f"{server.url}/v1/review/{rid}"
    stale = {"labels": {"insult_defamation": True}, "reviewer": "late", "lease_token": old["lease_token"]}
    assert_error(httpx.post(url, json=stale, headers=auth("review")), 409, "leased")
    ok = httpx.post(url, json={**stale, "reviewer": "holder", "lease_token": new["lease_token"]}, headers=auth("review"))
    assert ok.status_code == 200 and ok.json()["reviewer"] == "reviewers"


@pytest.mark.parametrize(("body", "code"), [
    ({"labels": {"not_a_category": True}, "reviewer": "x"}, "invalid_labels"),
    ({"labels": {"rumor": "yes"}, "reviewer": "x"}, "invalid_request"),
    ({"labels": ["rumor"], "reviewer": "x"}, "invalid_request"),
    ({"labels": {}, "reviewer": ""}, "invalid_request"),
    ({"reviewer": "x"}, "invalid_request"),
    ({"labels": {}, "reviewer": "x", "extra": 1}, "invalid_request"),
])
def test_bad_decisions_get_400(server: ServerProcess, body: dict, code: str) -> None:
    rid = classify(server, [{"id": f"bad-{uid()}", "text": INSULT}]).json()["items"][0]["review_id"]
    assert_error(httpx.post(f"{server.url}/v1/review/{rid}", json=body, headers=auth("review")), 400, code)


def test_decision_on_unknown_item_is_404(server: ServerProcess) -> None:
    body = {"labels": {"rumor": True}, "reviewer": "x"}
    assert_error(httpx.post(f"{server.url}/v1/review/{'f' * 32}", json=body, headers=auth("review")), 404, "not_found")
    assert_error(httpx.post(f"{server.url}/v1/review/no-such-id", json=body, headers=auth("review")), 404, "not_found")


def test_bad_lease_seconds_is_400(server: ServerProcess) -> None:
    for value in ("0", "-5", "abc", "100000000"):
        r = httpx.get(f"{server.url}/v1/review/next", params={"lease_seconds": value}, headers=auth("review"))
        assert_error(r, 400, "invalid_request")


def test_claim_by_uncertainty_on_the_live_service(server: ServerProcess, store: ReviewStore) -> None:
    drain(server)
    texts = [f"{INSULT} {uid()}", f"废物一个 {uid()}", f"你才是傻逼吧 {uid()}"]
    ids = [i["review_id"] for i in classify(server, [{"text": t} for t in texts]).json()["items"]]
    margins = {rid: store.get(rid)["margin"] for rid in ids}
    assert all(m is not None and 0 <= m <= 1 for m in margins.values())  # stored at enqueue
    first = httpx.get(f"{server.url}/v1/review/next", params={"order": "uncertainty"}, headers=auth("review"))
    assert first.status_code == 200 and first.json()["review_id"] == min(ids, key=lambda r: (margins[r], ids.index(r)))
    rest = [r for r in ids if r != first.json()["review_id"]]
    second = httpx.get(f"{server.url}/v1/review/next", params={"order": "age"}, headers=auth("review"))
    assert second.json()["review_id"] == rest[0]
    assert_error(httpx.get(f"{server.url}/v1/review/next", params={"order": "newest-ish"}, headers=auth("review")),
                 400, "invalid_request")
    for claimed in (first.json(), second.json()):  # leave nothing leased behind
        d = httpx.post(f"{server.url}/v1/review/{claimed['review_id']}", headers=auth("review"),
                       json={"labels": {}, "lease_token": claimed["lease_token"]})
        assert d.status_code == 200, d.text
    drain(server)


def test_review_export_writes_decided_items_in_corpus_format(server: ServerProcess, tmp_path: Path) -> None:
    text = f"{INSULT} #{uid()}"
    rid = classify(server, [{"id": "exp", "text": text}]).json()["items"][0]["review_id"]
    r = httpx.post(f"{server.url}/v1/review/{rid}", headers=auth("review"),
                   json={"labels": {"insult_defamation": True, "ethnic_hatred": True}, "reviewer": "bob"})
    assert r.status_code == 200, r.text
    out = tmp_path / "reviewed.jsonl"
    proc = subprocess.run([sys.executable, "-m", "shenhe.cli", "review", "export", "--out", str(out),
                           "--db-url", str(server.extra["db_url"])], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    mine = [r for r in records if r["id"] == f"review:{rid}"]
    assert mine == [{"id": f"review:{rid}", "text": text, "labels": ["ethnic_hatred", "insult_defamation"],
                     "source": "review"}]
    assert all(set(r) == {"id", "text", "labels", "source"} for r in records)
    assert "decided item(s)" in proc.stderr


# ---- operations ----------------------------------------------------------------------------------


def test_health_ready_and_openapi(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    doc = httpx.get(f"{server.url}/v1/openapi.json").json()
    assert {"/v1/classify", "/v1/review/next", "/v1/review/stats", "/v1/review/{review_id}"} <= set(doc["paths"])
    assert doc["components"]["schemas"]["ClassifyItem"]["properties"]["text"]["maxLength"] == 20_000
    root = httpx.get(f"{server.url}/")
    assert root.status_code == 307 and root.headers["location"] == "/v1/docs"
    assert "swagger" in httpx.get(f"{server.url}/v1/docs").text.lower()


def test_metrics_count_requests_decisions_and_queue_depth(server: ServerProcess) -> None:
    classify(server, [{"id": f"m-{uid()}", "text": INSULT}, {"text": EVERYDAY}])
    text = httpx.get(f"{server.url}/metrics", headers=auth("metrics")).text  # keys configured: a key is needed
    assert 'shenhe_requests_total{endpoint="/v1/classify",status="200"}' in text
    assert 'shenhe_request_latency_seconds_bucket{endpoint="/v1/classify"' in text
    assert 'shenhe_items_total{decision="review"}' in text and 'shenhe_items_total{decision="pass"}' in text
    assert 'shenhe_category_decisions_total{category="insult_defamation",decision="review"}' in text
    depth = [line for line in text.splitlines() if line.startswith('shenhe_review_queue_depth{state="open"}')]
    assert depth and float(depth[0].split()[-1]) >= 1


def test_logs_are_json_with_request_id_and_without_texts(server: ServerProcess) -> None:
    secret = f"独特的秘密句子{uid()}傻逼"
    r = classify(server, [{"id": "log", "text": secret}])
    rid = r.json()["request_id"]
    lines = []
    for _ in range(50):  # the log line is written after the response
        lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
        if any(e.get("request_id") == rid for e in lines):
            break
        time.sleep(0.1)
    mine = [e for e in lines if e.get("request_id") == rid]
    assert mine and mine[0]["endpoint"] == "/v1/classify" and mine[0]["status"] == 200
    assert mine[0]["decisions"] == {"review": 1} and mine[0]["api_key"] == "monitor"
    assert secret not in server.log_text()


def test_no_torch_in_the_serving_processes(server: ServerProcess) -> None:
    """The serving processes (arbiter and workers) never map torch's libraries."""
    pids = server.pids()
    assert len(pids) >= 2  # the arbiter and at least one worker
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" in maps or pid == pids[0]
        assert "libtorch" not in maps and "/torch/" not in maps, f"process {pid} loaded torch"
