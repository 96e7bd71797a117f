"""The human-review queue, stored through SQLAlchemy (SQLite in WAL mode by default, or PostgreSQL).

Guarantees:
- :meth:`ReviewStore.enqueue` commits (SQLite ``synchronous=FULL``: fsynced) before it returns, and
  the API answers only after it returns: an item whose ``review_id`` a caller received survives a crash.
- The same ``(caller id, text)`` pair is stored once: a retried request gets the first ``review_id``.
- Claims are leases: ``claim`` hands out the oldest open item whose lease is absent or expired, safely
  under concurrency (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite ``BEGIN IMMEDIATE``).
- Only the caller's opaque id is stored with the text: no addresses, no user agents.
- A decision on an item leased to someone else is refused (409 ``leased``) whatever the body says;
  the reviewer recorded is the authenticated key's name, and every claim, release, decision and undo
  is a row of ``shenhe_review_audit`` written in the same transaction.
- Item kinds: ``review`` (the model asked for it), ``audit`` (a sampled auto-block, for measuring block
  precision) and ``second`` (another opinion on a decided item, for a different reviewer: a sampled second
  opinion, or a third one asked for when two reviewers disagree, see :meth:`ReviewStore.ask_opinion`).
- Claim order: by age (oldest first, the default) or by uncertainty (the item whose scores came closest
  to a threshold first: ``margin``, stored at enqueue, see ``Policy.threshold_margin``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
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
    Float,
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
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.types import Prediction

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
    # Added by the review console (ALTER TABLE on older databases, see ReviewStore.create_schema).
    Column("kind", String(8), nullable=False, server_default="review"),  # review | audit | second
    Column("parent_seq", _Seq),  # kind=second: the item whose decision is being checked
    Column("exclude_reviewer", NulSafeText()),  # kind=second: the first reviewer may not claim it
    Column("lease_holder", NulSafeText()),  # key name of the live lease's holder
    # Added for active learning and retraining (issue 19).
    Column("margin", Float),  # distance of the scores to the nearest threshold at enqueue (None: unknown)
    Column("exclude_others", NulSafeText()),  # kind=second: more reviewers who may not claim it, see _names_field
    Index("ix_shenhe_review_items_state_seq", "state", "seq"),
)

# Added columns, for databases created before them: name -> SQL type and default.
_ADDED_COLUMNS: dict[str, tuple[str, str | None]] = {
    "kind": ("VARCHAR(8) NOT NULL DEFAULT 'review'", None),
    "parent_seq": ("BIGINT", None),
    "exclude_reviewer": ("TEXT", None),
    "lease_holder": ("TEXT", None),
    "margin": ("FLOAT", None),
    "exclude_others": ("TEXT", None),
}

# Claim orders: the API's and the config's names (the console also offers "newest").
REVIEW_ORDERS = ("age", "uncertainty")
_SEP = "\x1f"  # separates names in exclude_others (a control character no key name contains)

review_audit = Table(
    "shenhe_review_audit",
    metadata,
    Column("id", _Seq, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("actor", NulSafeText(), nullable=False),  # the API key's name
    Column("action", String(16), nullable=False),  # claim | release | decide | undo | ask_opinion
    Column("review_id", String(32), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_shenhe_review_audit_review_id", "review_id"),
)

console_sessions = Table(
    "shenhe_console_sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("key_sha256", String(64), nullable=False),  # which API key signed in (re-checked every request)
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

traffic_counts = Table(
    "shenhe_traffic_counts",
    metadata,
    Column("category", String(32), primary_key=True),  # "*" = all classified items
    Column("decision", String(8), primary_key=True),
    Column("n", BigInteger, nullable=False),
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


class ReviewLeased(ReviewConflict):
    """Someone else holds a live lease on the item."""

    code = "leased"


class UndoRefused(ReviewConflict):
    code = "undo_refused"


class QueueUnavailable(QueueError):
    """The database could not be reached or answered with an error: retry later."""

    status = 503
    code = "queue_unavailable"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime) -> datetime:
    """Stored times are naive UTC (SQLite has no time zones); the API reports them as UTC."""
    return dt.replace(tzinfo=UTC)


def _naive_utc(dt: datetime) -> datetime:
    """A time for a comparison with stored (naive UTC) times; a naive argument is taken as UTC."""
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo is not None else dt


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
    kind: str = "review"  # review | audit (a sampled auto-block)
    margin: float | None = None  # Policy.threshold_margin of the scores (the uncertainty order)


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
    kind: str = "review"
    request_id: str | None = None


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


@dataclass(frozen=True, slots=True)
class Opinion:
    """One reviewer's decided labels on an item (the item's own decision, or another opinion on it)."""

    review_id: str
    reviewer: str | None
    labels: list[str]  # known slugs in Article 9 order, then any unknown label as stored
    decided_at: datetime  # UTC


@dataclass(frozen=True, slots=True)
class DecidedReview:
    """A decided item with every decided opinion on it (its own first) and the opinions still open."""

    review_id: str
    text: str
    opinions: list[Opinion]
    pending: list[str]  # review ids of open opinion items on it

    @property
    def id(self) -> str:
        """The corpus id `shenhe review export` writes for it."""
        return f"review:{self.review_id}"


def sampled(key: str, share: float) -> bool:
    """A deterministic draw: the same key always gets the same answer (a retried request is sampled
    the same way), and a share of the keys gets True."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h < share * 2**64


def _ordered_labels(labels: Sequence[str]) -> list[str]:
    return [s for s in CATEGORY_SLUGS if s in set(labels)]


def _stored_labels(labels: Any) -> list[str]:
    """Labels as stored, known slugs in Article 9 order, then anything else (written by an older version or
    by hand) as text, so a reader can report it instead of losing it."""
    if not isinstance(labels, list):
        return [] if labels is None else [str(labels)]
    known = _ordered_labels([x for x in labels if isinstance(x, str)])
    return known + sorted({str(x) for x in labels if x not in CATEGORY_SLUGS})


def _names_field(names: Sequence[str]) -> str | None:
    """Reviewer names stored in one text column, each enclosed by separators (matched with LIKE)."""
    names = [n for n in dict.fromkeys(names) if n]
    return _SEP + _SEP.join(names) + _SEP if names else None


def _claimable_by(actor: str) -> Any:
    """The condition that ``actor`` may claim an item: not a reviewer excluded from giving this opinion."""
    t = review_items
    return and_(or_(t.c.exclude_reviewer.is_(None), t.c.exclude_reviewer != actor),
                or_(t.c.exclude_others.is_(None), ~t.c.exclude_others.contains(_SEP + actor + _SEP, autoescape=True)))


def _excluded(row: Any, reviewer: str) -> bool:
    others = row["exclude_others"] or ""
    return row["exclude_reviewer"] == reviewer or (_SEP + reviewer + _SEP) in others


def _order_by(order: str) -> list[Any]:
    t = review_items
    if order in ("age", "oldest"):
        return [t.c.seq]
    if order == "newest":
        return [t.c.seq.desc()]
    if order == "uncertainty":  # unknown margins last (items queued before margins were stored)
        return [case((t.c.margin.is_(None), 1), else_=0), t.c.margin, t.c.seq]
    raise QueueError(f"unknown claim order {order!r}; expected age, newest or uncertainty")


def _create_private_file(path: Path) -> None:
    """Create the SQLite file readable by the owner only (0600): it holds every queued text. SQLite
    gives its -wal and -shm files the main file's mode. An existing file keeps its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o600)  # whatever the umask


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


def _locked_item(conn: Connection, review_id: str) -> Any:
    """The item's row, locked until the transaction ends (``SELECT ... FOR UPDATE``); 404 if absent."""
    t = review_items
    row = conn.execute(select(t).where(t.c.review_id == review_id).with_for_update()).mappings().first()
    if row is None:
        raise ReviewNotFound(f"no review item {review_id!r}")
    return row


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
        u = make_url(self.url)
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" \
                and not u.database.startswith("file:"):
            _create_private_file(Path(u.database))
        for attempt in range(3):  # several workers may race to create the tables
            try:
                metadata.create_all(self.engine)
                self._add_missing_columns()
                return
            except (IntegrityError, OperationalError, ProgrammingError):
                if attempt == 2:
                    raise
        return

    def _add_missing_columns(self) -> None:
        """Databases created before the review console lack its columns: add them (idempotent)."""
        have = {c["name"] for c in inspect(self.engine).get_columns(review_items.name)}
        missing = [name for name in _ADDED_COLUMNS if name not in have]
        if not missing:
            return
        with self.engine.begin() as conn:
            for name in missing:
                conn.exec_driver_sql(f"ALTER TABLE {review_items.name} ADD COLUMN {name} {_ADDED_COLUMNS[name][0]}")

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
                             "threshold": float(r.threshold), "span": [int(r.span[0]), int(r.span[1])],
                             "action": r.action} for r in p.reasons],
                "matches": [{"category": m.category, "term": m.term, "start": m.start, "end": m.end,
                             "action": m.action, "via": m.via} for m in p.matches],
                "model_name": p.model.name,
                "model_version": p.model.version,
                "policy_version": p.policy_version,
                "request_id": item.request_id,
                "created_at": now,
                "state": "open",
                "claims": 0,
                "kind": item.kind,
                "margin": None if item.margin is None else float(item.margin),
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

    def claim(self, lease_seconds: int, actor: str = "anonymous", *, category: str | None = None,
              band: str | None = None, newest_first: bool = False, skip: Sequence[str] = (),
              order: str = "age") -> ClaimedItem | None:
        """Lease the next open item (None when there is none) to ``actor`` (an API key's name): the oldest
        (``order="age"``), the newest (``"newest"``, or ``newest_first``), or the one whose scores came
        closest to a threshold (``"uncertainty"``; ties and unknown margins by age).
        ``category``/``band`` (the model's decision: review or block) filter; ``skip`` leaves out items
        the reviewer just released. An opinion item is never handed to a reviewer who already gave one."""
        now = utcnow()
        t = review_items
        ordering = _order_by("newest" if newest_first else order)
        cond = [t.c.state == "open", or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now),
                _claimable_by(actor)]
        if category is not None:
            cond.append(t.c.seq.in_(select(review_categories.c.seq).where(review_categories.c.category == category)))
        if band is not None:
            cond.append(t.c.decision == band)
        if skip:
            cond.append(t.c.review_id.not_in(list(skip)))
        try:
            with self.engine.begin() as conn:
                row = conn.execute(
                    select(t).where(*cond)
                    .order_by(*ordering)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).mappings().first()
                if row is None:
                    return None
                token = uuid.uuid4().hex
                expires = now + timedelta(seconds=lease_seconds)
                conn.execute(update(t).where(t.c.seq == row["seq"]).values(
                    lease_token=token, lease_expires_at=expires, lease_holder=actor, claims=t.c.claims + 1))
                self._audit(conn, now, actor, "claim", row["review_id"],
                            {"lease_seconds": lease_seconds, "kind": row["kind"]})
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return self._claimed(row, token, expires)

    @staticmethod
    def _claimed(row: Any, token: str, expires: datetime) -> ClaimedItem:
        return ClaimedItem(
            review_id=row["review_id"], caller_id=row["caller_id"], text=row["text"], decision=row["decision"],
            scores=row["scores"], categories=row["categories"], reasons=row["reasons"], matches=row["matches"],
            model_name=row["model_name"], model_version=row["model_version"], policy_version=row["policy_version"],
            created_at=_aware(row["created_at"]), lease_token=token, lease_expires_at=_aware(expires),
            kind=row["kind"], request_id=row["request_id"],
        )

    @staticmethod
    def _audit(conn: Connection, at: datetime, actor: str, action: str, review_id: str,
               detail: dict[str, Any]) -> None:
        conn.execute(insert(review_audit).values(at=at, actor=actor, action=action, review_id=review_id,
                                                 detail=detail))

    def release(self, review_id: str, lease_token: str, actor: str) -> None:
        """Give a leased item back to the queue (the reviewer skipped it)."""
        now = utcnow()
        t = review_items
        try:
            with self.engine.begin() as conn:
                row = _locked_item(conn, review_id)
                if row["state"] == "decided":
                    raise ReviewConflict(f"review item {review_id} is already decided")
                if row["lease_token"] != lease_token:
                    raise ReviewLeased(f"review item {review_id}: this lease is not yours (it expired or was "
                                       "claimed again)")
                conn.execute(update(t).where(t.c.seq == row["seq"]).values(
                    lease_token=None, lease_expires_at=None, lease_holder=None))
                self._audit(conn, now, actor, "release", review_id, {})
        except QueueError:
            raise
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None

    def decide(self, review_id: str, labels: Sequence[str], reviewer: str, note: str | None = None,
               lease_token: str | None = None, *, second_opinion_share: float = 0.0) -> DecisionRecord:
        """Record a reviewer's labels. Repeating the same labels is a no-op; different labels on a
        decided item are a conflict, and so is a decision while a live lease is held under another
        token (whatever the body says: leaving the token out does not get around it).
        ``second_opinion_share`` of first decisions put a copy back for a different reviewer."""
        unknown = [s for s in labels if s not in CATEGORY_SLUGS]
        if unknown:
            raise QueueError(f"unknown category slug(s): {', '.join(sorted(unknown))}")
        wanted = _ordered_labels(labels)
        now = utcnow()
        t = review_items
        try:
            with self.engine.begin() as conn:
                row = _locked_item(conn, review_id)
                if row["state"] == "decided":
                    if _ordered_labels(row["labels"] or []) == wanted:
                        return DecisionRecord(review_id, wanted, row["reviewer"], row["note"], _aware(row["decided_at"]))
                    raise ReviewConflict(
                        f"review item {review_id} was already decided by {row['reviewer']!r} with other labels")
                lease_live = row["lease_expires_at"] is not None and row["lease_expires_at"] > now
                if lease_live and lease_token != row["lease_token"]:
                    raise ReviewLeased(f"review item {review_id} is leased to another reviewer until "
                                       f"{_aware(row['lease_expires_at']).isoformat()}; claim it again after that")
                if row["kind"] == "second" and _excluded(row, reviewer):
                    raise ReviewConflict(f"review item {review_id} asks for a second opinion: "
                                         "a different reviewer must decide it")
                conn.execute(update(t).where(t.c.seq == row["seq"]).values(
                    state="decided", labels=wanted, reviewer=reviewer, note=note, decided_at=now,
                    lease_token=None, lease_expires_at=None, lease_holder=None))
                second = None
                if row["kind"] != "second" and sampled(f"second:{review_id}", second_opinion_share):
                    second = self._add_second_opinion(conn, row, reviewer, now)
                self._audit(conn, now, reviewer, "decide", review_id,
                            {"labels": wanted, "note": bool(note), "with_lease": lease_token is not None,
                             "second_opinion": second})
        except QueueError:
            raise
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return DecisionRecord(review_id, wanted, reviewer, note, _aware(now))

    def _add_second_opinion(self, conn: Connection, row: Any, first_reviewer: str, now: datetime) -> str:
        t = review_items
        rid = uuid.uuid4().hex
        copy = {c.name: row[c.name] for c in t.columns if c.name != "seq"}
        copy.update(review_id=rid, dedup_key=hashlib.sha256(f"second:{row['review_id']}".encode()).hexdigest(),
                    created_at=now, state="open", lease_token=None, lease_expires_at=None, lease_holder=None,
                    claims=0, labels=None, reviewer=None, note=None, decided_at=None, kind="second",
                    parent_seq=row["seq"], exclude_reviewer=first_reviewer)
        seq = conn.execute(insert(t).values(**copy).returning(t.c.seq)).scalar_one()
        cats = list(dict.fromkeys(row["categories"] or []))
        if cats:
            conn.execute(insert(review_categories), [{"seq": seq, "category": c} for c in cats])
        return rid

    def ask_opinion(self, review_id: str, actor: str, reason: str = "") -> tuple[str, bool]:
        """Put a decided item back in the queue for another reviewer's opinion (e.g. a third one when two
        reviewers disagree): an open ``second`` item that none of the reviewers who already decided it may
        claim. Idempotent: while such an item is open, its id is returned. Returns (review id, created)."""
        now = utcnow()
        t = review_items
        try:
            with self.engine.begin() as conn:
                row = _locked_item(conn, review_id)
                if row["kind"] == "second":
                    raise QueueError(f"review item {review_id} is itself an opinion on another item; ask on that one")
                if row["state"] != "decided":
                    raise ReviewConflict(f"review item {review_id} is not decided yet")
                children = conn.execute(select(t.c.review_id, t.c.state, t.c.reviewer).where(
                    t.c.parent_seq == row["seq"], t.c.kind == "second").order_by(t.c.seq)).tuples().all()
                open_ = [rid for rid, state, _ in children if state == "open"]
                if open_:
                    return open_[0], False
                reviewers = [row["reviewer"], *(who for _, state, who in children if state == "decided")]
                rid = uuid.uuid4().hex
                copy = {c.name: row[c.name] for c in t.columns if c.name != "seq"}
                copy.update(review_id=rid,
                            dedup_key=hashlib.sha256(f"opinion:{row['review_id']}:{len(children) + 1}".encode()).hexdigest(),
                            created_at=now, state="open", lease_token=None, lease_expires_at=None, lease_holder=None,
                            claims=0, labels=None, reviewer=None, note=None, decided_at=None, kind="second",
                            parent_seq=row["seq"], exclude_reviewer=row["reviewer"],
                            exclude_others=_names_field([r for r in reviewers[1:] if r]))
                seq = conn.execute(insert(t).values(**copy).returning(t.c.seq)).scalar_one()
                cats = list(dict.fromkeys(row["categories"] or []))
                if cats:
                    conn.execute(insert(review_categories), [{"seq": seq, "category": c} for c in cats])
                self._audit(conn, now, actor, "ask_opinion", review_id,
                            {"opinion": rid, "exclude": [r for r in reviewers if r], "reason": reason[:500]})
        except QueueError:
            raise
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return rid, True

    def undo(self, review_id: str, actor: str, grace_seconds: int, lease_seconds: int) -> ClaimedItem:
        """Take back ``actor``'s own decision within ``grace_seconds``: the item is open again and leased
        back to ``actor``. A second opinion it started is withdrawn (refused once that is decided)."""
        now = utcnow()
        t = review_items
        try:
            with self.engine.begin() as conn:
                row = _locked_item(conn, review_id)
                if row["state"] != "decided":
                    raise UndoRefused(f"review item {review_id} is not decided")
                if row["reviewer"] != actor:
                    raise UndoRefused(f"review item {review_id} was decided by {row['reviewer']!r}, not by you")
                if row["decided_at"] < now - timedelta(seconds=grace_seconds):
                    raise UndoRefused(f"the decision on {review_id} is older than {grace_seconds} s; it can no "
                                      "longer be undone")
                children = conn.execute(select(t.c.seq, t.c.state).where(
                    t.c.parent_seq == row["seq"], t.c.kind == "second")).tuples().all()
                if any(state == "decided" for _, state in children):
                    raise UndoRefused(f"a second opinion on {review_id} is already decided")
                for seq, _ in children:
                    conn.execute(review_categories.delete().where(review_categories.c.seq == seq))
                    conn.execute(t.delete().where(t.c.seq == seq))
                token = uuid.uuid4().hex
                expires = now + timedelta(seconds=lease_seconds)
                conn.execute(update(t).where(t.c.seq == row["seq"]).values(
                    state="open", labels=None, reviewer=None, note=None, decided_at=None,
                    lease_token=token, lease_expires_at=expires, lease_holder=actor, claims=t.c.claims + 1))
                self._audit(conn, now, actor, "undo", review_id,
                            {"labels": _ordered_labels(row["labels"] or []), "note": row["note"] is not None})
        except QueueError:
            raise
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        return self._claimed(row, token, expires)

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

    def iter_decided(self, page: int = 1000, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Decided items in queue order, as corpus records (``source: review``); second opinions are
        not repeated (the admin page reports agreement). ``since`` (UTC): only items decided at or after it."""
        t = review_items
        last = 0
        extra = [] if since is None else [t.c.decided_at >= _naive_utc(since)]
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(t.c.seq, t.c.review_id, t.c.text, t.c.labels)
                    .where(t.c.state == "decided", t.c.seq > last, t.c.kind != "second", *extra)
                    .order_by(t.c.seq).limit(page)
                ).mappings().all()
            if not rows:
                return
            for r in rows:
                yield {"id": f"review:{r['review_id']}", "text": r["text"],
                       "labels": _ordered_labels(r["labels"] or []), "source": "review"}
            last = rows[-1]["seq"]

    def decided_reviews(self, since: datetime | None = None, page: int = 1000) -> Iterator[DecidedReview]:
        """Decided items (not opinion items) in queue order, each with every decided opinion on it and
        the ids of opinions still open. ``since`` (UTC): items whose decision, or an opinion on them, was
        given at or after it (incremental retraining)."""
        t = review_items
        cond: list[Any] = [t.c.state == "decided", t.c.kind != "second"]
        if since is not None:
            at = _naive_utc(since)
            recent_opinion = select(t.c.parent_seq).where(t.c.kind == "second", t.c.state == "decided",
                                                          t.c.decided_at >= at)
            cond.append(or_(t.c.decided_at >= at, t.c.seq.in_(recent_opinion.scalar_subquery())))
        last = 0
        try:
            while True:
                with self.engine.connect() as conn:
                    rows = conn.execute(
                        select(t.c.seq, t.c.review_id, t.c.text, t.c.labels, t.c.reviewer, t.c.decided_at)
                        .where(t.c.seq > last, *cond).order_by(t.c.seq).limit(page)
                    ).mappings().all()
                    if not rows:
                        return
                    children = conn.execute(
                        select(t.c.parent_seq, t.c.review_id, t.c.state, t.c.labels, t.c.reviewer, t.c.decided_at)
                        .where(t.c.kind == "second", t.c.parent_seq > last, t.c.parent_seq <= rows[-1]["seq"])
                        .order_by(t.c.seq)
                    ).mappings().all()
                by_parent: dict[int, list[Any]] = {}
                for c in children:
                    by_parent.setdefault(c["parent_seq"], []).append(c)
                for r in rows:
                    kids = by_parent.get(r["seq"], [])
                    opinions = [Opinion(r["review_id"], r["reviewer"], _stored_labels(r["labels"]),
                                        _aware(r["decided_at"]))]
                    opinions += [Opinion(c["review_id"], c["reviewer"], _stored_labels(c["labels"]),
                                         _aware(c["decided_at"])) for c in kids if c["state"] == "decided"]
                    yield DecidedReview(r["review_id"], r["text"], opinions,
                                        [c["review_id"] for c in kids if c["state"] != "decided"])
                last = rows[-1]["seq"]
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None

    def get(self, review_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(review_items).where(review_items.c.review_id == review_id)).mappings().first()
        return dict(row) if row is not None else None

    def review_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(review_items.c.review_id)).scalars())

    # ---- the review console --------------------------------------------------------------------

    def overview(self, actor: str) -> list[dict[str, Any]]:
        """Claimable items per category and band (the model's decision), with the oldest one's age."""
        now = utcnow()
        t, rc = review_items, review_categories
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(rc.c.category, t.c.decision, func.count(), func.min(t.c.created_at))
                    .select_from(rc.join(t))
                    .where(t.c.state == "open", or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now),
                           _claimable_by(actor))
                    .group_by(rc.c.category, t.c.decision)
                ).tuples().all()
        except SQLAlchemyError as e:
            raise QueueUnavailable(f"review queue unavailable ({e.__class__.__name__})") from None
        out = [{"category": c, "band": d, "open": int(n), "oldest_age_s": max(0, int((now - oldest).total_seconds()))}
               for c, d, n, oldest in rows]
        order = {s: i for i, s in enumerate(CATEGORY_SLUGS)}
        return sorted(out, key=lambda r: (order.get(r["category"], 99), r["band"]))

    def decided_rows(self) -> list[dict[str, Any]]:
        """Every decided item, light columns only (live precision, throughput, agreement)."""
        t = review_items
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(t.c.seq, t.c.review_id, t.c.kind, t.c.parent_seq, t.c.decision, t.c.categories, t.c.labels,
                       t.c.reviewer, t.c.decided_at, t.c.created_at).where(t.c.state == "decided")
            ).mappings()]

    def audit_log(self, limit: int = 200, review_id: str | None = None) -> list[dict[str, Any]]:
        a = review_audit
        q = select(a).order_by(a.c.id.desc()).limit(limit)
        if review_id is not None:
            q = q.where(a.c.review_id == review_id)
        with self.engine.connect() as conn:
            return [{**dict(r), "at": _aware(r["at"])} for r in conn.execute(q).mappings()]

    # sessions of the console (cookie -> API key digest)

    def create_session(self, key_sha256: str, hours: int) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(console_sessions.delete().where(console_sessions.c.expires_at <= now))
            conn.execute(insert(console_sessions).values(
                token_sha256=hashlib.sha256(token.encode()).hexdigest(), key_sha256=key_sha256,
                created_at=now, expires_at=now + timedelta(hours=hours)))
        return token

    def session_key(self, token: str) -> str | None:
        """The API key digest behind a live session token (None: unknown or expired)."""
        s = console_sessions
        with self.engine.connect() as conn:
            return conn.execute(select(s.c.key_sha256).where(
                s.c.token_sha256 == hashlib.sha256(token.encode()).hexdigest(), s.c.expires_at > utcnow())
            ).scalar_one_or_none()

    def end_session(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(console_sessions.delete().where(
                console_sessions.c.token_sha256 == hashlib.sha256(token.encode()).hexdigest()))

    # traffic counts (for the review rate)

    def add_traffic(self, counts: dict[tuple[str, str], int]) -> None:
        """Add classified-item counts per (category or "*", decision)."""
        if not counts:
            return
        tc = traffic_counts
        with self.engine.begin() as conn:
            for (cat, decision), n in counts.items():
                done = conn.execute(update(tc).where(tc.c.category == cat, tc.c.decision == decision)
                                    .values(n=tc.c.n + n)).rowcount
                if not done:
                    try:
                        with conn.begin_nested():
                            conn.execute(insert(tc).values(category=cat, decision=decision, n=n))
                    except IntegrityError:  # a concurrent first insert
                        conn.execute(update(tc).where(tc.c.category == cat, tc.c.decision == decision)
                                     .values(n=tc.c.n + n))

    def traffic(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            return {(c, d): int(n) for c, d, n in conn.execute(select(traffic_counts)).tuples()}
