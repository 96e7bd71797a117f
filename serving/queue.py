"""The human-review queue, stored through SQLAlchemy (SQLite in WAL mode by default, or PostgreSQL).

Guarantees:
- :meth:`ReviewStore.enqueue` commits (SQLite ``synchronous=FULL``: fsynced) before it returns, and
  the API answers only after it returns: an item whose ``review_id`` a caller received survives a crash.
- The same ``(caller id, text)`` pair is stored once: a retried request gets the first ``review_id``.
- Claims are leases: ``claim`` hands out the oldest open item whose lease is absent or expired, safely
  under concurrency (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite ``BEGIN IMMEDIATE``).
- Only the caller's opaque id is stored with the text: no addresses, no user agents.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from models.policy import CATEGORY_SLUGS
from models.types import Prediction

_ESCAPED = "\ufdd0"  # a Unicode noncharacter marks a JSON-escaped value (see NulSafeText)


class NulSafeText(TypeDecorator[str]):
    """Text that may hold NUL characters. PostgreSQL text cannot store U+0000, and callers may send
    control characters; such values (and any starting with the marker) are stored JSON-escaped."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None or ("\x00" not in value and not value.startswith(_ESCAPED)):
            return value
        return _ESCAPED + json.dumps(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is not None and value.startswith(_ESCAPED):
            return json.loads(value[len(_ESCAPED):])
        return value


metadata = MetaData()
_Seq = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

review_items = Table(
    "shenhe_review_items",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("review_id", String(32), nullable=False, unique=True),
    Column("dedup_key", String(64), nullable=False, unique=True),  # sha256(caller id, text)
    Column("caller_id", NulSafeText()),
    Column("text", NulSafeText(), nullable=False),
    Column("decision", String(8), nullable=False),
    Column("scores", JSON, nullable=False),
    Column("categories", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("matches", JSON, nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(100), nullable=False),
    Column("policy_version", String(100), nullable=False),
    Column("request_id", String(64)),
    Column("created_at", DateTime, nullable=False),  # naive UTC everywhere
    Column("state", String(8), nullable=False),  # open | decided (claimed = open with a live lease)
    Column("lease_token", String(32)),
    Column("lease_expires_at", DateTime),
    Column("claims", Integer, nullable=False, default=0),
    Column("labels", JSON),
    Column("reviewer", NulSafeText()),
    Column("note", NulSafeText()),
    Column("decided_at", DateTime),
    Index("ix_shenhe_review_items_state_seq", "state", "seq"),
)

review_categories = Table(
    "shenhe_review_categories",
    metadata,
    Column("seq", _Seq, ForeignKey(review_items.c.seq, ondelete="CASCADE"), primary_key=True),
    Column("category", String(32), primary_key=True),
    Index("ix_shenhe_review_categories_category", "category"),
)


class QueueError(Exception):
    """A review-queue request that cannot be done (``status`` is the HTTP status to answer)."""

    status = 400
    code = "review_error"


class ReviewNotFound(QueueError):
    status = 404
    code = "not_found"


class ReviewConflict(QueueError):
    status = 409
    code = "conflict"


class QueueUnavailable(QueueError):
    """The database could not be reached or answered with an error: retry later."""

    status = 503
    code = "queue_unavailable"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime) -> datetime:
    """Stored times are naive UTC (SQLite has no time zones); the API reports them as UTC."""
    return dt.replace(tzinfo=UTC)


def dedup_key(caller_id: str | None, text_: str) -> str:
    h = hashlib.sha256()
    h.update(b"1" if caller_id is not None else b"0")
    h.update((caller_id or "").encode("utf-8"))
    h.update(b"\x00")
    h.update(text_.encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class NewReviewItem:
    caller_id: str | None
    text: str
    prediction: Prediction
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    review_id: str
    caller_id: str | None
    text: str
    decision: str
    scores: dict[str, float]
    categories: list[str]
    reasons: list[dict[str, Any]]
    matches: list[dict[str, Any]]
    model_name: str
    model_version: str
    policy_version: str
    created_at: datetime
    lease_token: str
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    review_id: str
    labels: list[str]
    reviewer: str
    note: str | None
    decided_at: datetime


@dataclass(frozen=True, slots=True)
class Enqueued:
    review_ids: list[str]  # one per item, in order (a retried item gets its first id)
    new: int  # rows written by this call


@dataclass(frozen=True, slots=True)
class QueueCounts:
    open: int
    claimed: int
    decided: int

    @property
    def total(self) -> int:
        return self.open + self.claimed + self.decided


def _ordered_labels(labels: Sequence[str]) -> list[str]:
    return [s for s in CATEGORY_SLUGS if s in set(labels)]


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, ``synchronous=FULL`` and ``BEGIN IMMEDIATE`` transactions."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, pool_size=5, max_overflow=10)
    if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: committed = on disk
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock at the start: claims and dedup checks read-then-write, and several
        # worker processes share the file.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _insert_ignoring_duplicates(conn: Connection, rows: list[dict[str, Any]]) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(review_items).on_conflict_do_nothing(index_elements=["dedup_key"]), rows)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(review_items).on_conflict_do_nothing(index_elements=["dedup_key"]), rows)
    else:  # other databases: a concurrent duplicate raises IntegrityError and the caller retries
        conn.execute(insert(review_items), rows)


class ReviewStore:
    """The review queue on one database."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        """The URL without a password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def create_schema(self) -> None:
        for attempt in range(3):  # several workers may race to create the tables
            try:
                metadata.create_all(self.engine)
                return
            except (IntegrityError, OperationalError):
                if attempt == 2:
                    raise
        return

    def drop_schema(self) -> None:
        metadata.drop_all(self.engine)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()

    # ---- writing -----------------------------------------------------------------------------

    def enqueue(self, items: Sequence[NewReviewItem]) -> Enqueued:
        """Store ``items`` (one transaction, committed on return); the review id of each, in order."""
        if not items:
            return Enqueued([], 0)
        keys = [dedup_key(i.caller_id, i.text) for i in items]
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return self._enqueue(conn, items, keys)
            except IntegrityError:  # a concurrent duplicate on a database without ON CONFLICT
                if attempt == 2:
                    raise QueueUnavailable("review queue: could not store items (conflicting writers)") from None
            except SQLAlchemyError as e:
                raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        raise AssertionError("unreachable")

    def _enqueue(self, conn: Connection, items: Sequence[NewReviewItem], keys: list[str]) -> Enqueued:
        unique_keys = list(dict.fromkeys(keys))
        found = dict(conn.execute(
            select(review_items.c.dedup_key, review_items.c.review_id).where(review_items.c.dedup_key.in_(unique_keys))
        ).tuples().all())
        now = utcnow()
        rows: list[dict[str, Any]] = []
        minted: dict[str, str] = {}
        for key, item in zip(keys, items, strict=True):
            if key in found or key in minted:
                continue
            minted[key] = uuid.uuid4().hex
            p = item.prediction
            rows.append({
                "review_id": minted[key],
                "dedup_key": key,
                "caller_id": item.caller_id,
                "text": item.text,
                "decision": p.decision,
                "scores": {k: float(v) for k, v in p.scores.items()},
                "categories": list(p.categories),
                "reasons": [{"category": r.category, "kind": r.kind, "score": float(r.score),
                             "threshold": float(r.threshold), "span": [int(r.span[0]), int(r.span[1])]}
                            for r in p.reasons],
                "matches": [{"category": m.category, "term": m.term, "start": m.start, "end": m.end}
                            for m in p.matches],
                "model_name": p.model.name,
                "model_version": p.model.version,
                "policy_version": p.policy_version,
                "request_id": item.request_id,
                "created_at": now,
                "state": "open",
                "claims": 0,
            })
        if rows:
            _insert_ignoring_duplicates(conn, rows)
            stored = {k: (rid, seq) for k, rid, seq in conn.execute(
                select(review_items.c.dedup_key, review_items.c.review_id, review_items.c.seq)
                .where(review_items.c.dedup_key.in_(list(minted)))
            ).tuples()}
            categories = {r["dedup_key"]: r["categories"] for r in rows}
            cat_rows = [
                {"seq": seq, "category": c}
                for key, (rid, seq) in stored.items()
                if rid == minted[key]  # ours, not a concurrent writer's
                for c in dict.fromkeys(categories[key])
            ]
            if cat_rows:
                conn.execute(insert(review_categories), cat_rows)
            found.update({k: rid for k, (rid, _) in stored.items()})
            new = sum(1 for k, (rid, _) in stored.items() if rid == minted[k])
        else:
            new = 0
        return Enqueued([found[k] for k in keys], new)

    def claim(self, lease_seconds: int) -> ClaimedItem | None:
        """Lease the oldest open item (None when there is none)."""
        now = utcnow()
        t = review_items
        try:
            with self.engine.begin() as conn:
                row = conn.execute(
                    select(t)
                    .where(t.c.state == "open", or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now))
                    .order_by(t.c.seq)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).mappings().first()
                if row is None:
                    return None
                token = uuid.uuid4().hex
                expires = now + timedelta(seconds=lease_seconds)
                conn.execute(update(t).where(t.c.seq == row["seq"]).values(
                    lease_token=token, lease_expires_at=expires, claims=t.c.claims + 1))
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return ClaimedItem(
            review_id=row["review_id"], caller_id=row["caller_id"], text=row["text"], decision=row["decision"],
            scores=row["scores"], categories=row["categories"], reasons=row["reasons"], matches=row["matches"],
            model_name=row["model_name"], model_version=row["model_version"], policy_version=row["policy_version"],
            created_at=_aware(row["created_at"]), lease_token=token, lease_expires_at=_aware(expires),
        )

    def decide(self, review_id: str, labels: Sequence[str], reviewer: str, note: str | None = None,
               lease_token: str | None = None) -> DecisionRecord:
        """Record a reviewer's labels. Repeating the same labels is a no-op; different labels on a
        decided item, or a decision while another reviewer holds a live lease, is a conflict."""
        unknown = [s for s in labels if s not in CATEGORY_SLUGS]
        if unknown:
            raise QueueError(f"unknown category slug(s): {', '.join(sorted(unknown))}")
        wanted = _ordered_labels(labels)
        now = utcnow()
        t = review_items
        try:
            with self.engine.begin() as conn:
                row = conn.execute(select(t).where(t.c.review_id == review_id).with_for_update()).mappings().first()
                if row is None:
                    raise ReviewNotFound(f"no review item {review_id!r}")
                if row["state"] == "decided":
                    if _ordered_labels(row["labels"] or []) == wanted:
                        return DecisionRecord(review_id, wanted, row["reviewer"], row["note"], _aware(row["decided_at"]))
                    raise ReviewConflict(
                        f"review item {review_id} was already decided by {row['reviewer']!r} with other labels")
                lease_live = row["lease_expires_at"] is not None and row["lease_expires_at"] > now
                if lease_token is not None and lease_live and lease_token != row["lease_token"]:
                    raise ReviewConflict(f"review item {review_id} is leased to another reviewer; claim it again")
                conn.execute(update(t).where(t.c.seq == row["seq"]).values(
                    state="decided", labels=wanted, reviewer=reviewer, note=note, decided_at=now,
                    lease_token=None, lease_expires_at=None))
        except QueueError:
            raise
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return DecisionRecord(review_id, wanted, reviewer, note, _aware(now))

    # ---- reading -----------------------------------------------------------------------------

    def _state_sums(self, now: datetime) -> list[Any]:
        t = review_items
        live = and_(t.c.lease_expires_at.is_not(None), t.c.lease_expires_at > now)
        return [
            func.coalesce(func.sum(case((and_(t.c.state == "open", ~live), 1), else_=0)), 0),
            func.coalesce(func.sum(case((and_(t.c.state == "open", live), 1), else_=0)), 0),
            func.coalesce(func.sum(case((t.c.state == "decided", 1), else_=0)), 0),
        ]

    def counts(self) -> QueueCounts:
        try:
            with self.engine.connect() as conn:
                o, c, d = conn.execute(select(*self._state_sums(utcnow()))).one()
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return QueueCounts(int(o), int(c), int(d))

    def category_counts(self) -> dict[str, QueueCounts]:
        """Per category behind the model's decision; all nine slugs, zero when absent."""
        out = {slug: QueueCounts(0, 0, 0) for slug in CATEGORY_SLUGS}
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(review_categories.c.category, *self._state_sums(utcnow()))
                    .select_from(review_categories.join(review_items))
                    .group_by(review_categories.c.category)
                ).tuples().all()
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        for cat, o, c, d in rows:
            out[cat] = QueueCounts(int(o), int(c), int(d))
        return out

    def iter_decided(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Decided items in queue order, as corpus records (``source: review``)."""
        t = review_items
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(t.c.seq, t.c.review_id, t.c.text, t.c.labels)
                    .where(t.c.state == "decided", t.c.seq > last)
                    .order_by(t.c.seq).limit(page)
                ).mappings().all()
            if not rows:
                return
            for r in rows:
                yield {"id": f"review:{r['review_id']}", "text": r["text"],
                       "labels": _ordered_labels(r["labels"] or []), "source": "review"}
            last = rows[-1]["seq"]

    def get(self, review_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(review_items).where(review_items.c.review_id == review_id)).mappings().first()
        return dict(row) if row is not None else None

    def review_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(review_items.c.review_id)).scalars())
