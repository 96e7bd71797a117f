"""`shenhe data build`: read every source, deduplicate, resolve labels, split, write the corpus.

Outputs in ``--out``: ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (one ``{"id", "text", "labels",
"source"}`` per line, sorted by id), ``holdout.jsonl`` (held-apart rows, the same fields plus ``part``;
see :mod:`training.data.holdout`), ``hf/`` (train/dev/test as a `datasets.DatasetDict`) and
``stats.json`` (the counts the data cards render). Deterministic: same input, byte-identical output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shenhe.models.jsonl import atomic_jsonl
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.training.data.dedup import key_of_normalized, resolve_labels
from shenhe.training.data.holdout import (
    DEFAULT_HELDOUT_DIR,
    HOLDOUT_SHARE,
    HOLDOUT_SPLIT,
    MIN_DEV_ROWS_TO_SPLIT,
    PART_DEV,
    PART_SEED,
    SALT,
    SEED_HELDOUT_SOURCE,
    is_held_apart,
    load_heldout_seeds,
    split_sources,
)
from shenhe.training.data.records import NORMAL, SPLITS, IssueLog, Record
from shenhe.training.data.sources import ALL_SOURCES, PUBLIC_SOURCES, SEED_SPEC, SourceSpec, get_source
from shenhe.training.data.sources.jsonl import EXTRA_ORIGIN, load_extra
from shenhe.training.data.split import assign_split

STATS_FORMAT = 1
DEFAULT_SEED_DIR = Path(__file__).resolve().parent / "seed"
TABLE_ROWS: tuple[str, ...] = (*CATEGORY_SLUGS, NORMAL, "total")
OUT_SPLITS: tuple[str, ...] = (*SPLITS, HOLDOUT_SPLIT)  # files written; stats count rows per each


class BuildError(ValueError):
    """Bad build options (unknown source name...): reported as a one-line CLI error."""


@dataclass(frozen=True)
class BuildConfig:
    raw: Path
    out: Path
    sources: tuple[str, ...] | None = None  # None = all (public sources + seed_synthetic)
    commercial_only: bool = False
    extra: tuple[Path, ...] = ()
    seed_dir: Path = DEFAULT_SEED_DIR
    write_hf: bool = True
    policy_path: Path | None = None
    # Held-apart hand-written seeds (read only when the seed set is one of the sources);
    # None = ``seed_dir / "heldout"`` when that folder exists.
    heldout_dir: Path | None = None


@dataclass
class _SourceStats:
    rows_read: int = 0
    no_content: int = 0
    untrained_dropped: int = 0
    duplicates_removed: int = 0
    dropped_from_test: int = 0
    label_conflicts: int = 0
    rows: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in OUT_SPLITS})


def select_sources(config: BuildConfig) -> tuple[list[SourceSpec], list[str]]:
    """The sources to read, and notes on the ones left out by --commercial-only."""
    if config.sources is None:
        chosen = list(ALL_SOURCES)
    else:
        chosen = []
        for name in config.sources:
            try:
                spec = get_source(name)
            except KeyError:
                known = ", ".join(s.name for s in ALL_SOURCES)
                raise BuildError(f"unknown source {name!r}; known sources: {known}") from None
            if spec not in chosen:
                chosen.append(spec)
        chosen.sort(key=ALL_SOURCES.index)
    notes = []
    if config.commercial_only:
        notes = [f"{s.name}: excluded by --commercial-only ({s.licence})" for s in chosen if not s.commercial]
        chosen = [s for s in chosen if s.commercial]
    return chosen, notes


def _read_all(config: BuildConfig, specs: list[SourceSpec], log: IssueLog, progress: Any) -> list[Record]:
    records: list[Record] = []
    task = progress.add_task("reading sources", total=len(specs) + len(config.extra))
    for spec in specs:
        progress.update(task, description=f"reading {spec.name}")
        folder = config.seed_dir if spec is SEED_SPEC else config.raw / spec.name
        if spec is not SEED_SPEC and not folder.is_dir():
            log.warn(f"{spec.name}: source folder {folder} is missing; skipped")
        else:
            try:
                records.extend(spec.load(folder, log))
            except (OSError, UnicodeError) as e:  # unreadable folder: skip, never crash the build
                log.warn(f"{spec.name}: cannot read {folder} ({e.__class__.__name__}: {e}); skipped")
        progress.advance(task)
    reserved = {s.name for s in ALL_SOURCES}
    for path in config.extra:
        progress.update(task, description=f"reading {path.name}")
        records.extend(load_extra(path, log, reserved))
        progress.advance(task)
    return records


def _is_supplement(record: Record) -> bool:
    """Synthetic seed or --extra rows: train/dev only."""
    return record.meta.get("origin") in (SEED_SPEC.name, EXTRA_ORIGIN)


def _count(counter: Counter[str], labels: Iterable[str]) -> None:
    labels = list(labels)
    counter["total"] += 1
    if not labels:
        counter[NORMAL] += 1
    for slug in labels:
        counter[slug] += 1


def _table(counter: Counter[str]) -> dict[str, int]:
    return {row: counter.get(row, 0) for row in TABLE_ROWS}


def _group_kind(record: Record) -> str:
    origin = record.meta.get("origin")
    if origin == SEED_SPEC.name:
        return "synthetic"
    if origin == EXTRA_ORIGIN:
        return "extra"
    return "real"


def build(config: BuildConfig, progress: Any = None) -> dict[str, Any]:
    """Run the build; returns the stats written to ``stats.json``. ``progress`` is a
    ``rich.progress.Progress`` (or None for no display)."""
    specs, notes = select_sources(config)
    log = IssueLog()
    for note in notes:
        log.warn(note)
    progress = progress or _NullProgress()
    policy = load_policy(config.policy_path)
    untrained = {c.slug for c in policy.categories if not c.trained}

    records = _read_all(config, specs, log, progress)
    stats: dict[str, _SourceStats] = defaultdict(_SourceStats)
    for r in records:
        stats[r.source].rows_read += 1

    # Group rows by near-duplicate key, in read order (deterministic: loaders read sorted files).
    groups: dict[str, list[Record]] = {}
    norms: dict[str, str] = {}
    task = progress.add_task("normalising + dedup", total=len(records))
    for r in records:
        progress.advance(task)
        if untrained & set(r.labels):
            # The policy does not train these categories: a row labelled only with them would
            # teach "normal", so it is dropped; other labels on the row are kept.
            kept = tuple(s for s in r.labels if s not in untrained)
            if not kept:
                stats[r.source].untrained_dropped += 1
                continue
            r = Record(r.id, r.text, kept, r.source, r.meta)
        norm = normalize_text(r.text)
        key = key_of_normalized(norm)
        if not key:
            stats[r.source].no_content += 1
            continue
        norms[r.id] = norm
        groups.setdefault(key, []).append(r)

    dev_from_train = {s.name for s in PUBLIC_SOURCES if s.dev_from_train}
    out_rows: dict[str, list[dict[str, Any]]] = {s: [] for s in OUT_SPLITS}
    totals = {kind: {s: Counter() for s in OUT_SPLITS} for kind in ("real", "synthetic", "extra")}
    row_keys: dict[str, str] = {}  # output row id -> dedup key (for the held-apart partition of dev)
    dedup = Counter()
    seen_ids: set[str] = set()
    task = progress.add_task("resolving labels + splitting", total=len(groups))
    for key, members in groups.items():
        progress.advance(task)
        public = [m for m in members if not _is_supplement(m)]
        split = assign_split(key, public, dev_from_train)
        if split == "test":
            for m in members:
                if _is_supplement(m):
                    stats[m.source].dropped_from_test += 1
            members = public
        reviewer = [m.meta.get("origin") == EXTRA_ORIGIN for m in members]
        resolution = resolve_labels(members, reviewer)
        if resolution.rule == "reviewer":
            rep = [m for m, is_rev in zip(members, reviewer, strict=True) if is_rev][-1]
        else:  # the first row read, preferring one whose official split is the group's split
            rep = next((m for m in members if m.official_split == split), members[0])
        rep_id = rep.id
        if rep_id in seen_ids:  # two sources' rows can never share an id, but an --extra file might
            n = 2
            while f"{rep.id}#{n}" in seen_ids:
                n += 1
            rep_id = f"{rep.id}#{n}"
        seen_ids.add(rep_id)
        row_keys[rep_id] = key
        out_rows[split].append({"id": rep_id, "text": rep.text, "labels": list(resolution.labels),
                                "source": rep.source})
        _count(stats[rep.source].rows[split], resolution.labels)
        _count(totals[_group_kind(rep)][split], resolution.labels)
        if resolution.conflict:
            dedup[f"conflicts_{resolution.rule}"] += 1
            for src in sorted({m.source for m in members}):
                stats[src].label_conflicts += 1
        if len(members) > 1:
            dedup["groups_with_duplicates"] += 1
            if len({m.source for m in members}) > 1:
                dedup["cross_source_groups"] += 1
            distinct_norm = len({norms[m.id] for m in members})
            dedup["exact_duplicates"] += len(members) - distinct_norm
            dedup["near_duplicates"] += distinct_norm - 1
            for m in members:
                if m is not rep:
                    stats[m.source].duplicates_removed += 1

    holdout = _hold_apart(config, specs, out_rows, row_keys, groups, stats, totals, log)

    for split in OUT_SPLITS:
        out_rows[split].sort(key=lambda row: row["id"])
    _write_outputs(config, out_rows, progress)

    result = _stats_json(config, specs, stats, totals, dedup, log, len(records), len(groups))
    result["holdout"] = holdout
    (config.out / "stats.json").write_text(json.dumps(result, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                           encoding="utf-8")
    return result


def _uncount(counter: Counter[str], labels: Iterable[str]) -> None:
    labels = list(labels)
    counter["total"] -= 1
    if not labels:
        counter[NORMAL] -= 1
    for slug in labels:
        counter[slug] -= 1


def _hold_apart(config: BuildConfig, specs: list[SourceSpec], out_rows: dict[str, list[dict[str, Any]]],
                row_keys: dict[str, str], groups: dict[str, list[Record]], stats: dict[str, _SourceStats],
                totals: dict[str, dict[str, Counter[str]]], log: IssueLog) -> dict[str, Any]:
    """Move half the dev rows of each large public source to the held-apart split, and add the
    held-apart hand-written seeds (see :mod:`training.data.holdout`). Train and test are untouched."""
    public_names = {s.name for s in PUBLIC_SOURCES}
    dev_counts = Counter(row["source"] for row in out_rows["dev"])
    chosen = split_sources(dev_counts, public_names)
    keep, moved = [], []
    for row in out_rows["dev"]:
        if row["source"] in chosen and is_held_apart(row_keys[row["id"]]):
            moved.append({**row, "part": PART_DEV})
        else:
            keep.append(row)
    out_rows["dev"] = keep
    for row in moved:
        src = stats[row["source"]]
        _uncount(src.rows["dev"], row["labels"])
        _count(src.rows[HOLDOUT_SPLIT], row["labels"])
        _uncount(totals["real"]["dev"], row["labels"])
        _count(totals["real"][HOLDOUT_SPLIT], row["labels"])
    out_rows[HOLDOUT_SPLIT].extend(moved)

    seeds_read = seeds_kept = seeds_dropped = 0
    folder = config.heldout_dir or config.seed_dir / DEFAULT_HELDOUT_DIR.name
    if SEED_SPEC in specs and (config.heldout_dir is not None or folder.is_dir()):
        seen: set[str] = set()
        for r in load_heldout_seeds(folder, log):
            seeds_read += 1
            key = key_of_normalized(normalize_text(r.text))
            if not key or key in groups or key in seen:  # never a copy of a corpus row or of another seed
                seeds_dropped += 1
                continue
            seen.add(key)
            seeds_kept += 1
            out_rows[HOLDOUT_SPLIT].append({**r.to_json(), "part": PART_SEED})
            _count(stats[SEED_HELDOUT_SOURCE].rows[HOLDOUT_SPLIT], r.labels)
            _count(totals["synthetic"][HOLDOUT_SPLIT], r.labels)
    if seeds_read:
        stats[SEED_HELDOUT_SOURCE].rows_read = seeds_read
        stats[SEED_HELDOUT_SOURCE].duplicates_removed = seeds_dropped
    return {
        "rule": (f"public sources with >= {MIN_DEV_ROWS_TO_SPLIT} dev rows: dedup-key hash (salt {SALT!r}) "
                 f"< {HOLDOUT_SHARE} of 100 -> held apart ({PART_DEV}); dev.jsonl keeps the rest (the fit part)"),
        "dev_split_sources": sorted(chosen),
        "dev_rows_before": dict(sorted(dev_counts.items())),
        "parts": {PART_DEV: len(moved), PART_SEED: seeds_kept},
        "seed_heldout": {"read": seeds_read, "kept": seeds_kept, "dropped_duplicates": seeds_dropped},
    }


def _write_outputs(config: BuildConfig, out_rows: dict[str, list[dict[str, Any]]], progress: Any) -> None:
    config.out.mkdir(parents=True, exist_ok=True)
    for split in OUT_SPLITS:
        with atomic_jsonl(config.out / f"{split}.jsonl") as f:
            for row in out_rows[split]:
                f.write(row)
    if config.write_hf:
        task = progress.add_task("writing datasets DatasetDict", total=1)
        _write_hf(config.out / "hf", {split: out_rows[split] for split in SPLITS})
        progress.advance(task)


def _write_hf(path: Path, out_rows: dict[str, list[dict[str, Any]]]) -> None:
    import datasets  # heavy: only when writing

    datasets.disable_progress_bars()  # the build shows its own progress

    features = datasets.Features({
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "source": datasets.Value("string"),
    })
    splits = {}
    for split, rows in out_rows.items():
        columns = {name: [row[name] for row in rows] for name in features}
        ds = datasets.Dataset.from_dict(columns, features=features, split=datasets.Split(split))
        # The default fingerprint is random; derive it from the content so reruns are byte-identical.
        digest = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]
        ds._fingerprint = digest
        splits[split] = ds
    if path.exists():
        shutil.rmtree(path)
    datasets.DatasetDict(splits).save_to_disk(str(path))


def _stats_json(config: BuildConfig, specs: list[SourceSpec], stats: dict[str, _SourceStats],
                totals: dict[str, dict[str, Counter[str]]], dedup: Counter[str], log: IssueLog,
                rows_in: int, groups: int) -> dict[str, Any]:
    by_name = {s.name: s for s in ALL_SOURCES}
    sources: dict[str, Any] = {}
    for name in sorted(set(stats) | {s.name for s in specs} | set(log.malformed)):
        st = stats.get(name, _SourceStats())
        spec = by_name.get(name)
        heldout_seed = name == SEED_HELDOUT_SOURCE
        sources[name] = {
            "kind": "synthetic" if spec is SEED_SPEC or heldout_seed else ("public" if spec else "extra"),
            "title": spec.title if spec else ("shenhe held-apart hand-written seeds (test only)" if heldout_seed
                                              else "extra labelled rows (--extra)"),
            "licence": spec.licence if spec else ("Apache-2.0 (written for this project)" if heldout_seed
                                                  else "supplied by the user"),
            "commercial": spec.commercial if spec else True,
            "rows_read": st.rows_read,
            "malformed": log.malformed.get(name, 0),
            "malformed_examples": log.examples.get(name, []),
            "no_content": st.no_content,
            "untrained_label_dropped": st.untrained_dropped,
            "duplicates_removed": st.duplicates_removed,
            "dropped_from_test": st.dropped_from_test,
            "label_conflict_groups": st.label_conflicts,
            "rows": {split: _table(st.rows[split]) for split in OUT_SPLITS},
        }
    return {
        "format": STATS_FORMAT,
        "options": {
            "sources": [s.name for s in specs],
            "commercial_only": config.commercial_only,
            "extra": [p.name for p in config.extra],
        },
        "rows_read": rows_in,
        "rows_out": {split: sum(t[split]["total"] for t in totals.values()) for split in OUT_SPLITS},
        "groups": groups,
        "dedup": {k: dedup.get(k, 0) for k in ("groups_with_duplicates", "cross_source_groups",
                                               "exact_duplicates", "near_duplicates",
                                               "conflicts_majority+union", "conflicts_reviewer")},
        "totals": {kind: {split: _table(t[split]) for split in OUT_SPLITS} for kind, t in totals.items()},
        "sources": sources,
        "warnings": log.warnings,
    }


class _NullProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Read a corpus JSONL file (used by tests and downstream tools)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
