"""Two replicas, one queue: two ``shenhe serve`` processes on different ports share one PostgreSQL database
(a fresh schema of its own), as replicas behind a load balancer do.

- The same review-bound items sent to both at once, through ``/v1/classify`` and the BentoML-native
  ``/classify``, are queued once, with one review id everywhere.
- Concurrent claims through both replicas never lease one item twice.
- A decision recorded through either replica is what the other one sees.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import (
    INSULT,
    ServerProcess,
    auth,
    drop_pg_schema,
    free_port,
    make_pg_schema,
    server_env,
)

pytestmark = pytest.mark.postgres

N_ITEMS = 12


@pytest.fixture(scope="module")
def replicas(tiny_bundle: Path, serving_files: dict[str, Path], pg_base: str
             ) -> Iterator[tuple[ServerProcess, ServerProcess, str]]:
    schema = make_pg_schema(pg_base)
    servers: list[ServerProcess] = []
    for name in ("replica-a", "replica-b"):
        tmp = serving_files["root"] / name
        tmp.mkdir(exist_ok=True)
        env = server_env(tmp, schema.url, serving_files["policy"], serving_files["keys"],
                         SHENHE_SECOND_OPINION_SHARE="0")
        servers.append(ServerProcess(args=["--bundle", str(tiny_bundle)], env=env, log_path=tmp / "server.log",
                                     port=free_port()))
    try:
        with ThreadPoolExecutor(2) as pool:  # both start at once, each creating the tables if needed
            list(pool.map(lambda s: s.start(), servers))
        yield servers[0], servers[1], schema.url
    finally:
        for s in servers:
            s.stop()
        drop_pg_schema(pg_base, schema)


def _classify(url: str, path: str, items: list[dict[str, str]]) -> dict[str, str]:
    r = httpx.post(f"{url}{path}", json={"items": items}, headers=auth("classify"), timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert all(i["decision"] == "review" and i["review_id"] for i in out)
    return {i["id"]: i["review_id"] for i in out}


def _claim(url: str, role: str) -> dict[str, str] | None:
    r = httpx.get(f"{url}/v1/review/next", params={"lease_seconds": 300}, headers=auth(role), timeout=60)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else None


def test_two_replicas_queue_each_item_once_lease_once_and_share_decisions(
        replicas: tuple[ServerProcess, ServerProcess, str]) -> None:
    from shenhe.serving.queue import ReviewStore

    a, b, db_url = replicas
    assert a.port != b.port
    items = [{"id": f"replica-{k}", "text": f"{INSULT}（副本测试{k}）"} for k in range(N_ITEMS)]

    # 1. The same items to both replicas at once, each through both endpoints, twice: one queue item each.
    calls = [(s.url, path) for s in (a, b) for path in ("/v1/classify", "/classify") for _ in range(2)]
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda c: _classify(c[0], c[1], items), calls))
    assert all(ans == answers[0] for ans in answers), "the replicas handed out different review ids"
    store = ReviewStore(db_url)
    try:
        assert store.counts().total == N_ITEMS
        assert store.review_ids() == set(answers[0].values())

        # 2. Concurrent claims through both replicas, more claims than items: each item leased exactly once.
        claimers = [(s.url, role) for _ in range(N_ITEMS) for s, role in ((a, "review"), (b, "review2"))]
        with ThreadPoolExecutor(8) as pool:
            claimed = [c for c in pool.map(lambda c: _claim(*c), claimers) if c is not None]
        granted = Counter(c["review_id"] for c in claimed)
        assert len(granted) == N_ITEMS and max(granted.values()) == 1, granted
        assert len({c["lease_token"] for c in claimed}) == N_ITEMS
        assert _claim(a.url, "review") is None and _claim(b.url, "review2") is None  # all leased
        audit = store.audit_log(limit=1000)
        claims = Counter(e["review_id"] for e in audit if e["action"] == "claim")
        assert set(claims) == set(granted) and set(claims.values()) == {1}

        # 3. Decide half through each replica (the lease holder's key decides); the other replica sees each.
        by_key = {"review": a, "review2": b}
        holders = {e["review_id"]: e["actor"] for e in audit if e["action"] == "claim"}
        names = {"reviewers": "review", "bob": "review2"}
        first = claimed[0]  # a live lease taken through one replica holds through the other one too
        for server in (a, b):
            r = httpx.post(f"{server.url}/v1/review/{first['review_id']}", headers=auth("admin"), timeout=60,
                           json={"labels": {"insult_defamation": True}})
            assert r.status_code == 409 and r.json()["error"] == "leased", r.text
        for c in claimed:
            role = names[holders[c["review_id"]]]
            r = httpx.post(f"{by_key[role].url}/v1/review/{c['review_id']}", headers=auth(role), timeout=60,
                           json={"labels": {"insult_defamation": True}, "lease_token": c["lease_token"]})
            assert r.status_code == 200, r.text
        for server in (a, b):
            stats = httpx.get(f"{server.url}/v1/review/stats", headers=auth("review"), timeout=60).json()
            assert stats["decided"] == N_ITEMS and stats["open"] == 0 and stats["claimed"] == 0
        for c in claimed:  # through the replica that did not record it: the same labels are idempotent,
            role = names[holders[c["review_id"]]]  # other labels conflict with the recorded decision
            other = b if by_key[role] is a else a
            same = httpx.post(f"{other.url}/v1/review/{c['review_id']}", headers=auth("admin"), timeout=60,
                              json={"labels": {"insult_defamation": True}})
            assert same.status_code == 200 and same.json()["reviewer"] == holders[c["review_id"]], same.text
            clash = httpx.post(f"{other.url}/v1/review/{c['review_id']}", headers=auth("admin"), timeout=60,
                               json={"labels": {"rumor": True}})
            assert clash.status_code == 409 and clash.json()["error"] == "conflict", clash.text
        # Classifying the items again through either replica still finds the one (decided) item each.
        assert _classify(b.url, "/v1/classify", items) == answers[0]
        assert store.counts().total == N_ITEMS and store.counts().decided == N_ITEMS
    finally:
        store.close()
