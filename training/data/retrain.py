"""The training folder of a retraining on reviewer labels (``shenhe retrain``).

Reviewed rows (``{"id","text","labels"}``, labels settled by the reviewers) are split by a hash of their
id: a held-apart share never goes into training and joins the promotion gate's evaluation set; the rest is
trained on with a sample weight above the public rows' (``weight`` in the record, read by
``training.finetune.dataset``). Then one of three layouts:

- ``corpus``: the built corpus (``shenhe data build``) with the reviewed rows added to train. A corpus row
  whose text (dedup key) a reviewer labelled is replaced by the reviewer's label (in train and dev), and
  held-apart reviewed texts are taken out of train and dev so they stay unseen. test is the corpus's own.
- ``replay``: continuing from the bundle on the reviewed rows plus a deterministic sample of what the
  bundle was trained on (the build's train rows of the sources its ``bundle.json`` lists, every positive
  of a rare category kept), so the model does not forget the rest while it learns the new labels;
  dev and test are the build's.
- ``reviews``: neither a corpus nor replay data: the reviewed rows only, a hashed share of them as dev.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shenhe.models.jsonl import JsonlError, atomic_jsonl, iter_values
from shenhe.training.data.dedup import dedup_key

HOLDOUT_SALT = "shenhe-review-holdout-v1"
DEV_SALT = "shenhe-review-dev-v1"
REVIEW_SOURCE = "review"


class RetrainDataError(ValueError):
    """The retraining data cannot be assembled; one-line message."""


def in_share(item_id: str, share: float, salt: str = HOLDOUT_SALT) -> bool:
    """A deterministic draw by the id's hash: the same id always lands on the same side."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(f"{salt}:{item_id}".encode()).digest()[:8], "big")
    return h < share * 2**64


def held_apart(item_id: str, share: float) -> bool:
    """Whether a reviewed item belongs to the held-apart slice the gate evaluates on (never trained on)."""
    return in_share(item_id, share, HOLDOUT_SALT)


def _key(text: str) -> str:
    k = dedup_key(text)
    return k or f"raw:{text.strip()}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records as they are (every field kept), read by models.jsonl's line rules."""
    rows: list[dict[str, Any]] = []
    try:
        for lineno, obj in iter_values(path):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise RetrainDataError(f"{path}:{lineno}: expected a JSON object with 'text' and 'labels'")
            rows.append(obj)
    except JsonlError as e:
        raise RetrainDataError(str(e)) from None
    return rows


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    with atomic_jsonl(path) as f:
        for r in rows:
            f.write(r)
    return f.written


def _corpus_row(r: dict[str, Any]) -> dict[str, Any]:
    out = {"id": r.get("id"), "text": r["text"], "labels": list(r.get("labels", [])), "source": r.get("source", "unknown")}
    if "weight" in r:
        out["weight"] = r["weight"]
    return out


def _label_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for r in rows:
        c.update(r.get("labels") or ["(none)"])
    return dict(sorted(c.items()))


@dataclass
class RetrainData:
    """What :func:`assemble` wrote and why (printed by ``shenhe retrain`` and kept in its summary)."""

    folder: Path
    mode: str  # corpus | replay | reviews
    reviewed_train: int = 0
    reviewed_held_apart: int = 0
    review_weight: float = 1.0
    corpus: str | None = None
    replay: str | None = None
    replay_rows: int = 0
    replay_sources: list[str] = field(default_factory=list)
    replaced_by_reviewers: int = 0  # corpus/replay rows whose text a reviewer labelled
    splits: dict[str, int] = field(default_factory=dict)
    held_apart_file: Path | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["folder"] = str(self.folder)
        d["held_apart_file"] = str(self.held_apart_file) if self.held_apart_file else None
        return d


def assemble(reviewed: Sequence[dict[str, Any]], out: Path, *, corpus: Path | None = None,
             replay: Path | None = None, replay_sources: Sequence[str] = (), replay_rows: int = 5000,
             review_weight: float = 3.0, holdout_share: float = 0.2, dev_share: float = 0.2,
             seed: int = 42) -> RetrainData:
    """Write ``out/{train,dev,test}.jsonl`` and ``out/reviewed_held_apart.jsonl`` (see the module doc)."""
    if review_weight <= 0:
        raise RetrainDataError("--review-weight must be above 0")
    out.mkdir(parents=True, exist_ok=True)
    held = [r for r in reviewed if held_apart(str(r["id"]), holdout_share)]
    train_rev = [r for r in reviewed if not held_apart(str(r["id"]), holdout_share)]
    held_keys = {_key(r["text"]) for r in held}
    rev_keys = {_key(r["text"]) for r in train_rev}
    reviewed_keys = held_keys | rev_keys

    def review_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": r["id"], "text": r["text"], "labels": list(r["labels"]), "source": REVIEW_SOURCE,
                 "weight": review_weight} for r in rows]

    info = RetrainData(folder=out, mode="reviews", reviewed_train=len(train_rev), reviewed_held_apart=len(held),
                       review_weight=review_weight)
    splits: dict[str, list[dict[str, Any]]] = {}
    if corpus is not None:
        info.mode, info.corpus = "corpus", str(corpus)
        for name in ("train", "dev"):
            if not (corpus / f"{name}.jsonl").is_file():
                raise RetrainDataError(f"--corpus {corpus}: {name}.jsonl missing (build it with `shenhe data build`)")
        base = {name: _read_jsonl(corpus / f"{name}.jsonl") for name in ("train", "dev")}
        kept: dict[str, list[dict[str, Any]]] = {}
        for name, rows in base.items():
            kept[name] = [_corpus_row(r) for r in rows if _key(r["text"]) not in reviewed_keys]
            info.replaced_by_reviewers += sum(1 for r in rows if _key(r["text"]) in rev_keys)
        splits["train"] = kept["train"] + review_rows(train_rev)
        splits["dev"] = kept["dev"]
        if (corpus / "test.jsonl").is_file():
            splits["test"] = [_corpus_row(r) for r in _read_jsonl(corpus / "test.jsonl")]
    elif replay is not None and (replay / "train.jsonl").is_file():
        info.mode, info.replay = "replay", str(replay)
        rows = [r for r in _read_jsonl(replay / "train.jsonl")
                if not replay_sources or r.get("source") in set(replay_sources)]
        info.replay_sources = sorted({str(r.get("source")) for r in rows})
        fresh = [r for r in rows if _key(r["text"]) not in reviewed_keys]
        info.replaced_by_reviewers = len(rows) - len(fresh)
        sample = _replay_sample(fresh, replay_rows, seed)
        info.replay_rows = len(sample)
        splits["train"] = [_corpus_row(r) for r in sample] + review_rows(train_rev)
        if (replay / "dev.jsonl").is_file():
            splits["dev"] = [_corpus_row(r) for r in _read_jsonl(replay / "dev.jsonl")
                             if _key(r["text"]) not in reviewed_keys]
        if (replay / "test.jsonl").is_file():
            splits["test"] = [_corpus_row(r) for r in _read_jsonl(replay / "test.jsonl")]
        if not splits.get("dev"):
            dev = [r for r in train_rev if in_share(str(r["id"]), dev_share, DEV_SALT)]
            splits["dev"] = review_rows(dev)
            splits["train"] = [r for r in splits["train"] if r not in splits["dev"]]
            info.note = f"{replay}/dev.jsonl missing or empty: dev is {len(dev)} reviewed rows"
    else:
        dev = [r for r in train_rev if in_share(str(r["id"]), dev_share, DEV_SALT)]
        train = [r for r in train_rev if not in_share(str(r["id"]), dev_share, DEV_SALT)]
        if not dev or not train:  # too few rows to split: dev is the training rows themselves
            dev, train = train_rev, train_rev
            info.note = "too few reviewed rows to split off a dev set: dev is the training rows"
        splits["train"], splits["dev"] = review_rows(train), review_rows(dev)
        info.reviewed_train = len(train)
    if not splits["train"]:
        raise RetrainDataError("nothing to train on: no reviewed row outside the held-apart slice and no "
                               "corpus or replay rows")
    if not splits.get("dev"):
        raise RetrainDataError("no dev rows: the corpus's dev.jsonl is empty")
    for name in ("train", "dev", "test"):
        path = out / f"{name}.jsonl"
        if name in splits:
            info.splits[name] = _write_jsonl(path, splits[name])
        elif path.exists():
            path.unlink()
    info.held_apart_file = out / "reviewed_held_apart.jsonl"
    _write_jsonl(info.held_apart_file, [{"id": r["id"], "text": r["text"], "labels": list(r["labels"]),
                                         "source": REVIEW_SOURCE} for r in held])
    (out / "retrain_data.json").write_text(json.dumps(
        {**info.to_json(), "labels": {name: _label_counts(rows) for name, rows in splits.items()},
         "held_apart_labels": _label_counts(held)}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return info


def _replay_sample(rows: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows in a seeded hash order, every positive of a rare category first (categories with
    fewer positives than a tenth of ``n`` keep all of them), so no category disappears from training."""
    if n <= 0:
        return []
    if len(rows) <= n:
        return list(rows)
    counts: Counter[str] = Counter(s for r in rows for s in (r.get("labels") or []))
    rare = {s for s, c in counts.items() if c < max(1, n // 10)}

    def order(r: dict[str, Any]) -> int:
        return int.from_bytes(hashlib.blake2b(f"{seed}:{r.get('id')}:{r['text']}".encode(), digest_size=8).digest(), "big")

    ranked = sorted(rows, key=order)
    first = [r for r in ranked if rare & set(r.get("labels") or [])]
    rest = [r for r in ranked if not rare & set(r.get("labels") or [])]
    chosen = first + rest[: max(0, n - len(first))]
    return sorted(chosen, key=order)
