"""Reviewer decisions as training rows, for ``shenhe retrain``.

Reads the decided review items, from the queue's database or from a ``shenhe review export`` file, and
turns each text into at most one labelled row. Nothing is left out silently: every item that is not used
is in :attr:`Reviews.dropped` with its reason.

- *Empty text*: a text with nothing but white space teaches nothing.
- *Unknown label*: a label that is not one of the nine category slugs (an older export, a hand-edited file).
- *Conflicting labels*: the opinions on a text (its own decision, second opinions, and the decisions on
  other queue items with the same text) are pooled; labels chosen by more than half of them win. Without
  such a majority the text is not trained on and, read from the database, goes back to the queue for
  another reviewer (:meth:`ReviewStore.ask_opinion`: none of the reviewers who already decided it may take
  it); the next retraining uses the majority that opinion makes. While that opinion is open the text
  stays out ("waiting for ..."). An export file has no queue to send it to: the reason says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shenhe.models.jsonl import JsonlError, iter_values
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS

RETRAIN_ACTOR = "shenhe retrain"  # the actor of the audit rows when retraining asks for another opinion


class ReviewSourceError(ValueError):
    """The reviews cannot be read (a missing file or database, a malformed line); one-line message."""


@dataclass(frozen=True)
class ReviewedRow:
    """One text with the labels its reviewers settled on (a corpus record with ``source: review``)."""

    id: str
    text: str
    labels: list[str]
    opinions: int = 1  # how many reviewer decisions stand behind the labels
    note: str = ""  # e.g. "majority of 3 opinions"

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "labels": list(self.labels), "source": "review"}


@dataclass(frozen=True)
class Dropped:
    id: str
    reason: str
    text: str = ""

    def line(self) -> str:
        preview = self.text.strip().replace("\n", " ")
        preview = preview if len(preview) <= 30 else preview[:29] + "…"
        return f"{self.id}: {self.reason}" + (f" ({preview!r})" if preview else "")


@dataclass
class Reviews:
    """What was read: rows to train on, items left out (with reasons), items sent back for an opinion."""

    source: str
    rows: list[ReviewedRow] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    sent_back: list[dict[str, str]] = field(default_factory=list)  # {"id", "opinion_review_id"}
    items_read: int = 0

    def summary(self) -> dict[str, Any]:
        reasons = Counter(_reason_kind(d.reason) for d in self.dropped)
        return {"source": self.source, "items_read": self.items_read, "rows": len(self.rows),
                "dropped": len(self.dropped), "dropped_by_reason": dict(reasons),
                "sent_back_for_another_opinion": len(self.sent_back)}

    def dropped_records(self) -> list[dict[str, Any]]:
        return [asdict(d) for d in self.dropped]


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].split(" (", 1)[0]


def parse_since(value: str) -> datetime:
    """An ISO 8601 time (``2026-05-01``, ``2026-05-01T08:00``, ``...+08:00``, ``...Z``) as an aware UTC
    datetime; a time without a zone is UTC."""
    v = value.strip()
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ReviewSourceError(f"--since {value!r} is not an ISO 8601 time (e.g. 2026-05-01 or "
                                "2026-05-01T08:00:00+08:00)") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def is_url(spec: str) -> bool:
    return "://" in spec


# ---- resolving opinions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Opinion:
    item_id: str  # corpus id of the item it was given on
    reviewer: str
    labels: tuple[str, ...]


def _fmt(labels: Sequence[str]) -> str:
    return "[" + ", ".join(labels) + "]" if labels else "[] (acceptable)"


def _majority(opinions: Sequence[_Opinion]) -> tuple[tuple[str, ...], int] | None:
    counts = Counter(o.labels for o in opinions)
    labels, n = counts.most_common(1)[0]
    return (labels, n) if n * 2 > len(opinions) else None


def _conflict_text(opinions: Sequence[_Opinion]) -> str:
    per: dict[tuple[str, ...], list[str]] = {}
    for o in opinions:
        per.setdefault(o.labels, []).append(o.reviewer)
    parts = [f"{', '.join(who)}: {_fmt(labels)}" for labels, who in per.items()]
    return (f"conflicting labels from {len(opinions)} reviewers" if len(opinions) == 2 else
            f"no majority among {len(opinions)} opinions") + " (" + "; ".join(parts) + ")"


@dataclass
class _Group:
    """Every decided item with one (normalised) text."""

    items: list[tuple[str, str]] = field(default_factory=list)  # (corpus id, review id or "")
    text: str = ""
    opinions: list[_Opinion] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # open opinion items (review ids)


def _group_key(text: str) -> str:
    return normalize_text(text).strip()


def _resolve(groups: Iterable[_Group], out: Reviews, send_back: Any) -> None:
    """Rows from consistent groups; the rest dropped (and, through ``send_back``, returned to the queue)."""
    for g in groups:
        first_id = g.items[0][0]
        also = [cid for cid, _ in g.items[1:]]
        if len(g.opinions) == 1 or len({o.labels for o in g.opinions}) == 1:
            out.rows.append(ReviewedRow(first_id, g.text, list(g.opinions[0].labels), len(g.opinions),
                                        f"same labels from {len(g.opinions)} opinions" if len(g.opinions) > 1 else ""))
            for cid in also:
                out.dropped.append(Dropped(cid, f"duplicate text of {first_id} (same labels: trained once)", g.text))
            continue
        won = _majority(g.opinions)
        if won is not None:
            labels, n = won
            out.rows.append(ReviewedRow(first_id, g.text, list(labels), len(g.opinions),
                                        f"majority of {n} in {len(g.opinions)} opinions"))
            for cid in also:
                out.dropped.append(Dropped(cid, f"duplicate text of {first_id} (its labels are the majority's: "
                                                "trained once)", g.text))
            continue
        conflict = _conflict_text(g.opinions)
        if g.pending:
            why = f"{conflict}; waiting for the opinion already asked for (review id {g.pending[0]})"
        else:
            why = f"{conflict}; {send_back(g)}"
        for cid, _ in g.items:
            out.dropped.append(Dropped(cid, why, g.text))


def _check_row(item_id: str, text: Any, labels: Any) -> str | None:
    """The reason an item cannot be trained on by itself, or None."""
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return "labels are not a list of category slugs"
    unknown = sorted({x for x in labels if x not in CATEGORY_SLUGS})
    if unknown:
        return f"unknown label(s) {', '.join(unknown)} (expected category slugs: {', '.join(CATEGORY_SLUGS)})"
    return None


def _ordered(labels: Sequence[str]) -> tuple[str, ...]:
    return tuple(s for s in CATEGORY_SLUGS if s in set(labels))


# ---- from the queue ----------------------------------------------------------------------------------


def read_from_store(store: Any, since: datetime | None = None, send_back: bool = True,
                    actor: str = RETRAIN_ACTOR) -> Reviews:
    """Decided items of a :class:`~serving.queue.ReviewStore`; conflicts go back to the queue (``send_back``)."""
    out = Reviews(source=store.describe())
    groups: dict[str, _Group] = {}
    for item in store.decided_reviews(since=since):
        out.items_read += 1
        cid = item.id
        reasons = [_check_row(cid, item.text, o.labels) for o in item.opinions]
        bad = next((r for r in reasons if r is not None), None)
        if bad is not None:
            out.dropped.append(Dropped(cid, bad, item.text if isinstance(item.text, str) else ""))
            continue
        g = groups.setdefault(_group_key(item.text), _Group(text=item.text))
        g.items.append((cid, item.review_id))
        g.opinions += [_Opinion(cid, o.reviewer or "?", _ordered(o.labels)) for o in item.opinions]
        g.pending += item.pending

    def ask(g: _Group) -> str:
        if not send_back:
            return "not sent back (--no-send-back): ask for another opinion in the review console"
        cid, rid = g.items[-1]  # the most recent item with this text
        opinion_id, _created = store.ask_opinion(rid, actor, reason=_conflict_text(g.opinions))
        out.sent_back.append({"id": cid, "opinion_review_id": opinion_id})
        return f"sent back to the queue for a third opinion (review id {opinion_id})" if len(g.opinions) == 2 \
            else f"sent back to the queue for another opinion (review id {opinion_id})"

    _resolve(groups.values(), out, ask)
    return out


def open_store(url: str) -> Any:
    """A ReviewStore on ``url`` for reading; a missing SQLite file or a bad URL is a ReviewSourceError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from shenhe.serving.queue import ReviewStore

    try:
        u = make_url(url)
        db = u.database
        if u.get_backend_name() == "sqlite" and db and db != ":memory:" and not db.startswith("file:") \
                and not Path(db).is_file():
            raise ReviewSourceError(f"no review database at {u.render_as_string(hide_password=True)} (start the "
                                    "service first, or give the URL of the queue's database)")
        return ReviewStore(url)
    except (ArgumentError, SQLAlchemyError, ValueError) as e:
        if isinstance(e, ReviewSourceError):
            raise
        raise ReviewSourceError(f"cannot use the review database URL: {str(e).splitlines()[0][:200]}") from None


# ---- from an export file -----------------------------------------------------------------------------


def read_from_file(path: Path) -> Reviews:
    """Records of ``shenhe review export`` (``{"id","text","labels","source"}``); each line counts as one
    opinion. A conflict cannot go back to a queue from a file: it is listed as dropped."""
    if not path.is_file():
        raise ReviewSourceError(f"--from-reviews {path}: no such file (write one with `shenhe review export --out "
                                f"{path}`, or give the queue's database URL)")
    out = Reviews(source=str(path))
    groups: dict[str, _Group] = {}
    try:
        lines = list(iter_values(path))  # models.jsonl's line rules (UTF-8, BOM, JSON)
    except JsonlError as e:
        raise ReviewSourceError(str(e)) from None
    for lineno, obj in lines:
        if not isinstance(obj, dict):
            raise ReviewSourceError(f"{path}:{lineno}: not a JSON object")
        out.items_read += 1
        cid = str(obj.get("id") or f"{path.name}:{lineno}")
        text, labels = obj.get("text"), obj.get("labels", [])
        bad = _check_row(cid, text, labels)
        if bad is not None:
            out.dropped.append(Dropped(cid, bad, text if isinstance(text, str) else ""))
            continue
        g = groups.setdefault(_group_key(text), _Group(text=text))
        if any(c == cid for c, _ in g.items):  # the same item twice (two exports concatenated)
            prior = next(o for o in g.opinions if o.item_id == cid)
            if prior.labels == _ordered(labels):
                out.dropped.append(Dropped(cid, f"repeated line {lineno} (same item, same labels)", text))
                continue
        g.items.append((cid, ""))
        g.opinions.append(_Opinion(cid, cid, _ordered(labels)))
    _resolve(groups.values(), out, lambda g: "not sent back: an export file has no queue (retrain from the "
                                             "queue's database URL to ask for a third opinion)")
    return out


def read_reviews(spec: str, since: datetime | None = None, send_back: bool = True) -> Reviews:
    """``spec``: the queue's database URL (``sqlite:///var/shenhe.db``, ``postgresql+psycopg://...``) or an
    export file."""
    if not is_url(spec):
        if since is not None:
            raise ReviewSourceError("--since needs the queue's database URL; for a file, export with "
                                    "`shenhe review export --since TIME`")
        return read_from_file(Path(spec))
    store = open_store(spec)
    try:
        from sqlalchemy.exc import SQLAlchemyError

        from shenhe.serving.queue import QueueError

        try:
            return read_from_store(store, since=since, send_back=send_back)
        except (QueueError, SQLAlchemyError) as e:
            raise ReviewSourceError(f"cannot read the review database {store.describe()}: "
                                    f"{str(e).splitlines()[0][:200]}") from None
    finally:
        store.close()

