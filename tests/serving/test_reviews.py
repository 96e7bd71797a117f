"""Reading reviewer decisions for retraining (serving/reviews.py): every item is used or listed with its
reason; conflicting reviewers send the item back to the queue for a third opinion. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from shenhe.serving.queue import ReviewStore, review_items
from shenhe.serving.reviews import (
    ReviewSourceError,
    parse_since,
    read_from_file,
    read_from_store,
    read_reviews,
)
from tests.serving.test_queue import item


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    url = f"sqlite:///{tmp_path / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = ReviewStore(url)
    s.create_schema()
    yield s
    s.close()


def _decide_pair(store: ReviewStore, text: str, first: list[str], second: list[str]) -> str:
    (rid,) = store.enqueue([item(text, text)]).review_ids
    store.decide(rid, first, "alice", second_opinion_share=1.0)
    c = store.claim(600, "bob")
    assert c is not None and c.kind == "second"
    store.decide(c.review_id, second, "bob", lease_token=c.lease_token)
    return rid


def test_agreeing_conflicting_and_empty_items(store: ReviewStore) -> None:
    ok = _decide_pair(store, "你这个废物", ["insult_defamation"], ["insult_defamation"])
    bad = _decide_pair(store, "滚出去吧你", ["insult_defamation"], [])
    (blank,) = store.enqueue([item("blank", " \n ")]).review_ids
    store.decide(blank, [], "alice")
    (plain,) = store.enqueue([item("plain", "今天天气很好")]).review_ids
    store.decide(plain, [], "alice")

    got = read_from_store(store)
    assert [(r.id, r.labels, r.opinions) for r in got.rows] == [
        (f"review:{ok}", ["insult_defamation"], 2), (f"review:{plain}", [], 1)]
    reasons = {d.id: d.reason for d in got.dropped}
    assert reasons[f"review:{blank}"] == "empty text"
    assert reasons[f"review:{bad}"].startswith(
        "conflicting labels from 2 reviewers (alice: [insult_defamation]; bob: [] (acceptable)); "
        "sent back to the queue for a third opinion (review id ")
    (sent,) = got.sent_back
    assert sent["id"] == f"review:{bad}"
    assert got.summary()["dropped_by_reason"] == {"empty text": 1, "conflicting labels from 2 reviewers": 1}

    # read again: still out, waiting for that opinion (not asked twice)
    again = read_from_store(store)
    assert {d.id: d.reason for d in again.dropped}[f"review:{bad}"].endswith(
        f"waiting for the opinion already asked for (review id {sent['opinion_review_id']})")
    assert again.sent_back == []

    # a third reviewer settles it: the majority's labels are used
    third = store.claim(600, "carol")
    assert third is not None and third.review_id == sent["opinion_review_id"]
    store.decide(third.review_id, ["insult_defamation"], "carol", lease_token=third.lease_token)
    settled = {r.id: r for r in read_from_store(store).rows}[f"review:{bad}"]
    assert settled.labels == ["insult_defamation"] and settled.note == "majority of 2 in 3 opinions"


def test_the_same_text_from_two_callers_is_pooled(store: ReviewStore) -> None:
    a, b = store.enqueue([item("caller-a", "同一句话傻逼"), item("caller-b", "同一句话傻逼")]).review_ids
    store.decide(a, ["insult_defamation"], "alice")
    store.decide(b, [], "bob")
    got = read_from_store(store)
    assert got.rows == [] and {d.id for d in got.dropped} == {f"review:{a}", f"review:{b}"}
    assert all("conflicting labels from 2 reviewers" in d.reason for d in got.dropped)
    assert got.sent_back[0]["id"] == f"review:{b}"  # the newer item goes back
    c, d = store.enqueue([item("caller-c", "又一句"), item("caller-d", "又一句")]).review_ids
    store.decide(c, ["rumor"], "alice")
    store.decide(d, ["rumor"], "bob")
    rows = {r.id: r for r in read_from_store(store).rows}
    assert rows[f"review:{c}"].labels == ["rumor"] and f"review:{d}" not in rows


def test_unknown_labels_in_the_database_are_reported(store: ReviewStore) -> None:
    (rid,) = store.enqueue([item("u", "旧版本写的标签")]).review_ids
    store.decide(rid, ["rumor"], "alice")
    with store.engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.review_id == rid).values(labels=["rumor", "spam"]))
    (dropped,) = read_from_store(store).dropped
    assert dropped.reason.startswith("unknown label(s) spam")


def test_no_send_back_leaves_the_queue_alone(store: ReviewStore) -> None:
    _decide_pair(store, "有争议的话", ["rumor"], [])
    got = read_from_store(store, send_back=False)
    assert "not sent back (--no-send-back)" in got.dropped[0].reason and store.counts().open == 0


def test_since_reads_recent_decisions_only(store: ReviewStore) -> None:
    old, new = store.enqueue([item("o", "旧的"), item("n", "新的")]).review_ids
    store.decide(old, [], "alice")
    store.decide(new, ["rumor"], "alice")
    with store.engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.review_id == old).values(
            decided_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=3)))
    got = read_reviews(store.url, since=datetime.now(UTC) - timedelta(days=1))
    assert [r.id for r in got.rows] == [f"review:{new}"] and got.items_read == 1


def test_export_file(tmp_path: Path) -> None:
    f = tmp_path / "reviewed.jsonl"
    lines = [
        {"id": "review:1", "text": "你这个傻逼", "labels": ["insult_defamation"], "source": "review"},
        {"id": "review:2", "text": "", "labels": [], "source": "review"},
        {"id": "review:3", "text": "假新闻", "labels": ["fake_news"], "source": "review"},
        {"id": "review:4", "text": "同一句", "labels": ["rumor"], "source": "review"},
        {"id": "review:5", "text": "同一句", "labels": [], "source": "review"},
        {"id": "review:1", "text": "你这个傻逼", "labels": ["insult_defamation"], "source": "review"},
    ]
    f.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines) + "\n", encoding="utf-8")
    got = read_from_file(f)
    assert [(r.id, r.labels) for r in got.rows] == [("review:1", ["insult_defamation"])]
    reasons = {(d.id, d.reason.split(";")[0].split(" (")[0]) for d in got.dropped}
    assert reasons == {("review:2", "empty text"), ("review:3", "unknown label(s) fake_news"),
                       ("review:4", "conflicting labels from 2 reviewers"),
                       ("review:5", "conflicting labels from 2 reviewers"), ("review:1", "repeated line 6")}
    assert all("an export file has no queue" in d.reason for d in got.dropped if d.id in ("review:4", "review:5"))
    assert got.items_read == 6


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ReviewSourceError, match="no such file"):
        read_reviews(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ReviewSourceError, match="no review database"):
        read_reviews(f"sqlite:///{tmp_path / 'nope' / 'q.db'}")
    assert not (tmp_path / "nope").exists()  # nothing created on the way
    with pytest.raises(ReviewSourceError, match="database URL"):
        read_reviews(str(tmp_path / "x.jsonl"), since=datetime.now(UTC))
    (tmp_path / "bad.jsonl").write_text("[1]\n", encoding="utf-8")
    with pytest.raises(ReviewSourceError, match="bad.jsonl:1: not a JSON object"):
        read_reviews(str(tmp_path / "bad.jsonl"))


def test_parse_since() -> None:
    assert parse_since("2026-05-01") == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_since("2026-05-01T08:00:00+08:00") == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_since("2026-05-01T00:00:00Z") == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(ReviewSourceError, match="not an ISO 8601 time"):
        parse_since("yesterday")
