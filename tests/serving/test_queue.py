"""The review store on its own, on SQLite and on PostgreSQL: dedup, FIFO leases, decisions, export."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.types import ModelInfo, Prediction, Reason, TermMatch
from shenhe.serving.queue import (
    NewReviewItem,
    QueueError,
    QueueUnavailable,
    ReviewConflict,
    ReviewLeased,
    ReviewNotFound,
    ReviewStore,
    UndoRefused,
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


def item(caller: str | None, text_: str, categories: list[str] | None = None,
         margin: float | None = None) -> NewReviewItem:
    return NewReviewItem(caller_id=caller, text=text_, prediction=prediction(categories), request_id="req-1",
                         margin=margin)


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


# ---- review console semantics (issue 18) ------------------------------------------------------------


def test_a_live_lease_refuses_any_other_decision_whatever_the_body_says(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("lease", "废物一个")]).review_ids
    holder = store.claim(600, "alice")
    for token in (None, "f" * 32, ""):
        with pytest.raises(ReviewLeased) as err:
            store.decide(rid, ["insult_defamation"], "bob", lease_token=token)
        assert err.value.status == 409 and err.value.code == "leased"
    assert store.get(rid)["state"] == "open"
    assert store.decide(rid, ["insult_defamation"], "alice", lease_token=holder.lease_token).reviewer == "alice"


def test_every_claim_release_decision_and_undo_is_an_audit_row(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("audit", "废物二号")]).review_ids
    first = store.claim(600, "alice")
    store.release(rid, first.lease_token, "alice")
    again = store.claim(600, "bob")
    assert again.review_id == rid and store.get(rid)["lease_holder"] == "bob"
    store.decide(rid, ["insult_defamation"], "bob", "note", again.lease_token)
    back = store.undo(rid, "bob", grace_seconds=60, lease_seconds=600)
    assert back.review_id == rid and store.get(rid)["state"] == "open"
    with pytest.raises(ReviewLeased):  # undo leases the item back to bob
        store.decide(rid, [], "alice")
    store.decide(rid, [], "bob", lease_token=back.lease_token)
    log = store.audit_log(review_id=rid)[::-1]
    assert [(a["actor"], a["action"]) for a in log] == [
        ("alice", "claim"), ("alice", "release"), ("bob", "claim"), ("bob", "decide"), ("bob", "undo"),
        ("bob", "decide")]
    assert log[3]["detail"]["labels"] == ["insult_defamation"] and log[5]["detail"]["labels"] == []
    assert all(a["at"] <= datetime.now(UTC) for a in log)


def test_release_and_undo_refusals(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("undo", "废物三号")]).review_ids
    c = store.claim(600, "alice")
    with pytest.raises(ReviewLeased):
        store.release(rid, "0" * 32, "mallory")
    with pytest.raises(UndoRefused):
        store.undo(rid, "alice", 60, 600)  # not decided yet
    store.decide(rid, ["rumor"], "alice", lease_token=c.lease_token)
    with pytest.raises(UndoRefused):
        store.undo(rid, "bob", 60, 600)  # someone else's decision
    with store.engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.review_id == rid).values(
            decided_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=120)))
    with pytest.raises(UndoRefused):
        store.undo(rid, "alice", 60, 600)  # past the grace period
    assert [a["action"] for a in store.audit_log(review_id=rid)] == ["decide", "claim"]


def test_second_opinion_goes_to_a_different_reviewer(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("second", "废物四号")]).review_ids
    c = store.claim(600, "alice")
    store.decide(rid, ["insult_defamation"], "alice", lease_token=c.lease_token, second_opinion_share=1.0)
    assert store.claim(600, "alice") is None  # alice may not give the second opinion herself
    copy = store.claim(600, "bob")
    assert copy is not None and copy.kind == "second" and copy.text == "废物四号" and copy.review_id != rid
    store.decide(copy.review_id, [], "bob", lease_token=copy.lease_token, second_opinion_share=1.0)
    assert store.claim(600, "carol") is None  # no third opinion
    rows = {r["review_id"]: r for r in store.decided_rows()}
    assert rows[copy.review_id]["parent_seq"] == rows[rid]["seq"]
    assert [r["id"] for r in store.iter_decided()] == [f"review:{rid}"]  # the export holds the item once


def test_undo_withdraws_an_open_second_opinion(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("second-undo", "废物五号")]).review_ids
    c = store.claim(600, "alice")
    store.decide(rid, ["insult_defamation"], "alice", lease_token=c.lease_token, second_opinion_share=1.0)
    assert store.counts().total == 2
    store.undo(rid, "alice", 60, 600)
    assert store.counts().total == 1 and store.claim(600, "bob") is None


def test_claim_filters_by_category_band_and_order(store: ReviewStore) -> None:
    ids = store.enqueue([item("f1", "一", ["rumor"]), item("f2", "二", ["insult_defamation"]),
                         item("f3", "三", ["rumor"])]).review_ids
    assert store.claim(600, "a", category="insult_defamation").review_id == ids[1]
    assert store.claim(600, "a", band="block") is None
    assert store.claim(600, "a", newest_first=True).review_id == ids[2]
    assert store.claim(600, "a", skip=[ids[0]]) is None
    overview = store.overview("a")
    assert overview == [{"category": "rumor", "band": "review", "open": 1, "oldest_age_s": overview[0]["oldest_age_s"]}]


def test_sqlite_file_is_created_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "q.db"
    s = ReviewStore(f"sqlite:///{db}")
    s.create_schema()
    s.enqueue([item("p", "权限")])
    s.close()
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if f.exists():
            assert f.stat().st_mode & 0o777 == 0o600, f


def test_an_old_database_gains_the_new_columns(store: ReviewStore) -> None:
    with store.engine.begin() as conn:
        for col in ("kind", "parent_seq", "exclude_reviewer", "lease_holder", "margin", "exclude_others"):
            conn.exec_driver_sql(f"ALTER TABLE shenhe_review_items DROP COLUMN {col}")
    store.create_schema()  # what every start does
    store.create_schema()  # and again: idempotent
    store.enqueue([item("old", "旧库")])
    assert store.claim(60, "a").kind == "review"


# ---- active learning and retraining (issue 19) -------------------------------------------------------


def test_claim_by_uncertainty_serves_the_closest_to_a_threshold_first(store: ReviewStore) -> None:
    ids = store.enqueue([item("u1", "远", margin=0.30), item("u2", "近", margin=0.01), item("u3", "未知"),
                         item("u4", "中", margin=0.12), item("u5", "也近", margin=0.01)]).review_ids
    got = [store.claim(600, "a", order="uncertainty").review_id for _ in range(5)]
    assert got == [ids[1], ids[4], ids[3], ids[0], ids[2]]  # ties by age, unknown margins last
    assert store.claim(600, "a", order="uncertainty") is None
    with pytest.raises(QueueError):
        store.claim(600, "a", order="random")


def test_claim_by_age_is_the_default_whatever_the_margins(store: ReviewStore) -> None:
    ids = store.enqueue([item("a1", "甲", margin=0.9), item("a2", "乙", margin=0.0)]).review_ids
    assert store.claim(600, "a").review_id == ids[0]
    assert store.claim(600, "a", order="age").review_id == ids[1]
    assert store.get(ids[1])["margin"] == pytest.approx(0.0)


def test_export_since_takes_items_decided_at_or_after(store: ReviewStore) -> None:
    ids = store.enqueue([item("s1", "早"), item("s2", "晚")]).review_ids
    store.decide(ids[0], ["rumor"], "alice")
    with store.engine.begin() as conn:  # decided a day ago
        conn.execute(update(review_items).where(review_items.c.review_id == ids[0]).values(
            decided_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)))
    cut = datetime.now(UTC) - timedelta(hours=1)
    store.decide(ids[1], [], "alice")
    assert [r["id"] for r in store.iter_decided()] == [f"review:{ids[0]}", f"review:{ids[1]}"]
    assert [r["id"] for r in store.iter_decided(since=cut)] == [f"review:{ids[1]}"]
    exact = store.get(ids[1])["decided_at"]  # "at or after": the item decided at the cut is in
    assert [r["id"] for r in store.iter_decided(since=exact)] == [f"review:{ids[1]}"]
    assert [r.review_id for r in store.decided_reviews(since=cut)] == [ids[1]]


def test_a_conflict_goes_back_for_a_third_opinion_none_of_the_first_two_may_give(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("c", "你这个废物")]).review_ids
    store.decide(rid, ["insult_defamation"], "alice", second_opinion_share=1.0)
    second = store.claim(600, "bob")
    assert second is not None and second.kind == "second"
    store.decide(second.review_id, [], "bob", lease_token=second.lease_token)
    (reviewed,) = store.decided_reviews()
    assert [(o.reviewer, o.labels) for o in reviewed.opinions] == [("alice", ["insult_defamation"]), ("bob", [])]
    assert reviewed.pending == [] and reviewed.id == f"review:{rid}"

    third_id, created = store.ask_opinion(rid, "shenhe retrain", reason="conflict")
    assert created and store.ask_opinion(rid, "shenhe retrain") == (third_id, False)  # asked once while open
    assert next(iter(store.decided_reviews())).pending == [third_id]
    assert store.claim(600, "alice") is None and store.claim(600, "bob") is None
    assert [r["category"] for r in store.overview("bob")] == [] and store.overview("carol")[0]["open"] == 1
    with pytest.raises(ReviewConflict):
        store.decide(third_id, [], "bob")  # excluded reviewers cannot decide it either
    third = store.claim(600, "carol")
    assert third is not None and third.review_id == third_id and third.kind == "second"
    store.decide(third_id, [], "carol", lease_token=third.lease_token)
    (reviewed,) = store.decided_reviews()
    assert [o.reviewer for o in reviewed.opinions] == ["alice", "bob", "carol"] and reviewed.pending == []
    asked = store.audit_log(review_id=rid)[0]  # newest first
    assert asked["action"] == "ask_opinion" and asked["actor"] == "shenhe retrain"
    assert asked["detail"]["exclude"] == ["alice", "bob"] and asked["detail"]["opinion"] == third_id
    assert [r["id"] for r in store.iter_decided()] == [f"review:{rid}"]  # the export still holds it once
    # an opinion given after a cut brings its item into an incremental read
    with store.engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.review_id == rid).values(
            decided_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)))
    assert [r.review_id for r in store.decided_reviews(since=datetime.now(UTC) - timedelta(hours=1))] == [rid]


def test_ask_opinion_refusals(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("r", "未决")]).review_ids
    with pytest.raises(ReviewConflict):
        store.ask_opinion(rid, "x")  # not decided yet
    with pytest.raises(ReviewNotFound):
        store.ask_opinion("0" * 32, "x")
    store.decide(rid, [], "alice")
    third, _ = store.ask_opinion(rid, "x")
    with pytest.raises(QueueError):
        store.ask_opinion(third, "x")  # an opinion item itself


def test_reviewer_names_with_like_wildcards_are_excluded_exactly(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("w", "通配")]).review_ids
    store.decide(rid, ["rumor"], "a%b", second_opinion_share=1.0)
    c = store.claim(600, "x_y")
    store.decide(c.review_id, [], "x_y", lease_token=c.lease_token)
    store.ask_opinion(rid, "x")
    assert store.claim(600, "x_y") is None and store.claim(600, "a%b") is None
    assert store.claim(600, "xzy") is not None  # "_" is not a wildcard here


def test_decided_reviews_pages_keep_each_items_opinions(store: ReviewStore) -> None:
    ids = store.enqueue([item(f"p{i}", f"分页{i}") for i in range(5)]).review_ids
    for rid in ids:
        store.decide(rid, ["rumor"], "alice", second_opinion_share=1.0)
    for _ in ids[:3]:
        c = store.claim(600, "bob")
        store.decide(c.review_id, [], "bob", lease_token=c.lease_token)
    whole = list(store.decided_reviews())
    assert list(store.decided_reviews(page=1)) == list(store.decided_reviews(page=2)) == whole
    assert [r.review_id for r in whole] == ids
    assert [len(r.opinions) for r in whole] == [2, 2, 2, 1, 1] and [len(r.pending) for r in whole] == [0, 0, 0, 1, 1]
