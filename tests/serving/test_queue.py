"""The review store on its own, on SQLite and on PostgreSQL: dedup, FIFO leases, decisions, export."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from models.policy import CATEGORY_SLUGS
from models.types import ModelInfo, Prediction, Reason, TermMatch
from serving.queue import (
    NewReviewItem,
    QueueError,
    QueueUnavailable,
    ReviewConflict,
    ReviewNotFound,
    ReviewStore,
    review_items,
)


def prediction(categories: list[str] | None = None) -> Prediction:
    cats = categories or ["insult_defamation"]
    return Prediction(
        scores={s: (0.7 if s in cats else 0.01) for s in CATEGORY_SLUGS}, decision="review", categories=cats,
        reasons=[Reason(c, "review", 0.7, 0.5, (0, 4)) for c in cats],
        matches=[TermMatch("insult_defamation", "傻逼", 2, 4)], model=ModelInfo("tiny", "0.0.1"),
        policy_version="p-1",
    )


def item(caller: str | None, text_: str, categories: list[str] | None = None) -> NewReviewItem:
    return NewReviewItem(caller_id=caller, text=text_, prediction=prediction(categories), request_id="req-1")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    url = f"sqlite:///{tmp_path / 'var' / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = ReviewStore(url)
    s.create_schema()
    yield s
    s.close()


def test_sqlite_is_wal_with_full_sync(tmp_path: Path) -> None:
    s = ReviewStore(f"sqlite:///{tmp_path / 'new' / 'dir' / 'q.db'}")  # parent folders are created
    s.create_schema()
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    s.close()


def test_enqueue_dedups_on_caller_id_and_text(store: ReviewStore) -> None:
    first = store.enqueue([item("u1", "你这个傻逼"), item(None, "你这个傻逼"), item("u1", "你这个傻逼")])
    assert first.new == 2
    a, b, a_again = first.review_ids
    assert a == a_again and a != b
    retry = store.enqueue([item("u1", "你这个傻逼"), item("u2", "你这个傻逼")])
    assert retry.review_ids[0] == a and retry.new == 1
    assert len(store.review_ids()) == 3


def test_text_with_nul_and_marker_round_trips(store: ReviewStore) -> None:
    texts = ["傻\x00逼", "\ufdd0looks escaped", "普通文本", ""]
    ids = store.enqueue([item("n", t) for t in texts]).review_ids
    assert [store.get(i)["text"] for i in ids] == texts
    got = [store.claim(60) for _ in texts]
    assert [c.text for c in got] == texts


def test_claim_is_fifo_and_leases_expire(store: ReviewStore) -> None:
    ids = store.enqueue([item(str(i), f"文本{i}") for i in range(3)]).review_ids
    first = store.claim(600)
    assert first is not None and first.review_id == ids[0] and first.caller_id == "0"
    assert first.lease_expires_at > datetime.now(UTC)
    assert store.claim(600).review_id == ids[1]
    # Expire the first lease: the item comes back before the third one.
    with store.engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.review_id == ids[0]).values(
            lease_expires_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)))
    again = store.claim(600)
    assert again.review_id == ids[0] and again.lease_token != first.lease_token
    assert store.claim(600).review_id == ids[2]
    assert store.claim(600) is None
    c = store.counts()
    assert (c.open, c.claimed, c.decided) == (0, 3, 0)


def test_decide_idempotent_conflict_unknown(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("d", "废物")]).review_ids
    claimed = store.claim(600)
    rec = store.decide(rid, ["rumor", "insult_defamation"], "alice", "note", claimed.lease_token)
    assert rec.labels == ["rumor", "insult_defamation"]  # Article 9 order
    same = store.decide(rid, ["insult_defamation", "rumor"], "bob")
    assert same.reviewer == "alice" and same.decided_at == rec.decided_at
    with pytest.raises(ReviewConflict):
        store.decide(rid, ["rumor"], "bob")
    with pytest.raises(ReviewNotFound):
        store.decide("0" * 32, [], "bob")
    with pytest.raises(QueueError):
        store.decide(rid, ["nonsense"], "bob")


def test_decision_with_a_stale_lease_token_conflicts(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("s", "废物")]).review_ids
    holder = store.claim(600)
    with pytest.raises(ReviewConflict):
        store.decide(rid, [], "intruder", lease_token="f" * 32)
    assert store.decide(rid, [], "holder", lease_token=holder.lease_token).reviewer == "holder"


def test_counts_per_category_and_export(store: ReviewStore) -> None:
    ids = store.enqueue([item("1", "a", ["rumor"]), item("2", "b", ["rumor", "insult_defamation"]),
                         item("3", "c", ["ethnic_hatred"])]).review_ids
    store.claim(600)
    store.decide(ids[1], ["insult_defamation"], "r")
    per = store.category_counts()
    assert set(per) == set(CATEGORY_SLUGS)
    assert (per["rumor"].open, per["rumor"].claimed, per["rumor"].decided) == (0, 1, 1)
    assert (per["ethnic_hatred"].open, per["insult_defamation"].decided) == (1, 1)
    assert per["constitution"].total == 0
    c = store.counts()
    assert (c.open, c.claimed, c.decided, c.total) == (1, 1, 1, 3)
    assert list(store.iter_decided(page=1)) == [
        {"id": f"review:{ids[1]}", "text": "b", "labels": ["insult_defamation"], "source": "review"}]


def test_concurrent_claims_hand_out_each_item_once(store: ReviewStore) -> None:
    n = 40
    store.enqueue([item(str(i), f"并发{i}") for i in range(n)])
    got: list[str] = []
    lock = threading.Lock()

    def reviewer() -> None:
        while (c := store.claim(600)) is not None:
            with lock:
                got.append(c.review_id)

    threads = [threading.Thread(target=reviewer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == n and len(set(got)) == n


def test_concurrent_enqueue_of_the_same_items_stores_them_once(store: ReviewStore) -> None:
    batch = [item(f"dup{i}", "同一条") for i in range(20)]
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            results.append(store.enqueue(batch).review_ids)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == results[0] for r in results)
    assert len(store.review_ids()) == 20


def test_unreachable_database_is_queue_unavailable(tmp_path: Path) -> None:
    s = ReviewStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")
    assert s.ping() is False
    with pytest.raises(QueueUnavailable):
        s.enqueue([item("x", "y")])
    with pytest.raises(QueueUnavailable):
        s.claim(10)
