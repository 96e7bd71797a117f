"""Reading the built splits, label matrices, deterministic subsampling and length-grouped batches."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shenhe.models.jsonl import JsonlError, read_labelled
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS

SPLIT_NAMES = ("train", "dev", "test")


class DataError(ValueError):
    """Unusable training data; the message is one line."""


@dataclass
class Split:
    """One split: original texts, their normalised form, a [n, 9] 0/1 label matrix, sources and sample
    weights (``weight`` in a record, default 1: a row with weight 3 counts three times as much in the
    training loss, e.g. a reviewer's label against a public data set's, see ``shenhe retrain``)."""

    name: str
    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    sources: list[str]
    _normalized: list[str] | None = None
    weights: np.ndarray | None = None  # [n] float32; None: every row weighs 1

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = np.ones(len(self.texts), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def normalized(self) -> list[str]:
        if self._normalized is None:
            self._normalized = [normalize_text(t) for t in self.texts]
        return self._normalized

    def subset(self, index: Sequence[int]) -> Split:
        idx = list(index)
        norm = [self._normalized[i] for i in idx] if self._normalized is not None else None
        assert self.weights is not None
        return Split(self.name, [self.ids[i] for i in idx], [self.texts[i] for i in idx],
                     self.labels[idx], [self.sources[i] for i in idx], norm, self.weights[idx])

    def weights_by_source(self) -> dict[str, float]:
        """The mean sample weight of each source's rows."""
        assert self.weights is not None
        total: dict[str, float] = {}
        for src, w in zip(self.sources, self.weights.tolist(), strict=True):
            total[src] = total.get(src, 0.0) + w
        counts = Counter(self.sources)
        return {src: round(total[src] / counts[src], 3) for src in sorted(total)}

    @property
    def weighted(self) -> bool:
        """Whether any row weighs other than 1."""
        return self.weights is not None and bool(np.any(self.weights != 1.0))

    def positives(self) -> dict[str, int]:
        return {slug: int(self.labels[:, c].sum()) for c, slug in enumerate(CATEGORY_SLUGS)}

    def source_counts(self) -> dict[str, int]:
        return dict(Counter(self.sources))


def read_split(path: Path, name: str | None = None) -> Split:
    """Read a labelled split with :func:`shenhe.models.jsonl.read_labelled` (its rules: ``text`` and
    ``labels`` required, optional ``id``, ``source`` and ``weight``); a bad line is a one-line DataError. A row
    without an ``id`` is keyed by file and line (``train:12``), one without a ``source`` counts as
    ``unknown``."""
    try:
        rows = read_labelled(path)
    except JsonlError as e:
        raise DataError(str(e)) from None
    ids = [ident if ident is not None else f"{path.stem}:{line}" for ident, line in zip(rows.ids, rows.lines, strict=True)]
    sources = [source if source is not None else "unknown" for source in rows.sources]
    return Split(name or path.stem, ids, rows.texts, rows.labels.astype(np.float32), sources,
                 weights=rows.weights)


def read_splits(data_dir: Path, require: Sequence[str] = ("train", "dev")) -> dict[str, Split]:
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found (build it with `shenhe data build`)")
    out: dict[str, Split] = {}
    for name in SPLIT_NAMES:
        p = data_dir / f"{name}.jsonl"
        if p.is_file():
            out[name] = read_split(p, name)
        elif name in require:
            raise DataError(f"{p}: missing")
    for name in require:
        if not len(out[name]):
            raise DataError(f"{data_dir / (name + '.jsonl')}: no rows")
    return out


def _stable_key(seed: int, text_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{text_id}".encode(), digest_size=8).digest(), "big")


def subsample(split: Split, max_rows: int | None, max_per_source: int | None, rare_category_rows: int,
              seed: int) -> Split:
    """A deterministic subsample (same rows for the same ids and seed, whatever the file order).

    Rows with a positive label in a *rare* category (fewer than ``rare_category_rows`` positives) are
    always kept; the other rows are taken in a seeded hash order, per source up to ``max_per_source``,
    then overall up to ``max_rows``."""
    if max_rows is None and max_per_source is None:
        return split
    counts = split.labels.sum(axis=0)
    rare = (counts > 0) & (counts < rare_category_rows)
    keep_always = split.labels[:, rare].sum(axis=1) > 0 if rare.any() else np.zeros(len(split), dtype=bool)
    order = sorted(range(len(split)), key=lambda i: _stable_key(seed, split.ids[i]))
    chosen: list[int] = [i for i in order if keep_always[i]]
    per_source: Counter[str] = Counter(split.sources[i] for i in chosen)
    budget = None if max_rows is None else max(0, max_rows - len(chosen))
    for i in order:
        if keep_always[i]:
            continue
        if budget is not None and budget <= 0:
            break
        src = split.sources[i]
        if max_per_source is not None and per_source[src] >= max_per_source:
            continue
        per_source[src] += 1
        chosen.append(i)
        if budget is not None:
            budget -= 1
    return split.subset(sorted(chosen))


def oversample_rare(split: Split, min_positives: int, max_repeat: int = 8) -> tuple[Split, dict[str, int]]:
    """Repeat the positive rows of categories with fewer than ``min_positives`` positives (at most
    ``max_repeat`` copies each) so every such category shows up about ``min_positives`` times per epoch.

    Deterministic; a row positive for several rare categories takes the largest factor. Returns the
    split (rows in original order, repeats adjacent) and the repeat factor per category. The same rule
    as :func:`sampling_plan` without source weights (whole factors), which the trainer uses."""
    if min_positives <= 0:
        return split, {}
    plan = sampling_plan(split, oversample_rare=min_positives, max_repeat=max_repeat)
    if not plan.rare_factors:
        return split, {}
    index, _ = epoch_rows(plan.epoch_counts(0, 0))
    return split.subset(index.tolist()), plan.rare_factors


@dataclass
class SamplingPlan:
    """Expected copies of each training row per epoch, and how they came about (for run.json)."""

    weights: np.ndarray  # [n] expected draws per epoch of each row
    rare_factors: dict[str, int]  # category -> factor applied to its positives (oversample_rare)
    info: dict[str, object]

    def epoch_counts(self, seed: int, epoch: int) -> np.ndarray:
        """Copies of each row in ``epoch``: ``floor(weight + u)`` with ``u`` uniform, seeded by (seed, epoch).

        Unbiased (the mean is the weight), as even as possible (a weight of 2.3 gives 2 or 3 copies, never 0),
        and exact for whole weights (1 -> once; an oversampled row with factor 4 -> 4 copies every epoch)."""
        w = self.weights
        if np.array_equal(w, np.round(w)):
            return w.astype(np.int64)
        rng = np.random.default_rng([seed, epoch, 0x5A4D])
        return np.floor(w + rng.random(len(w))).astype(np.int64)


def sampling_plan(split: Split, source_power: float | None = None, source_shares: dict[str, float] | None = None,
                  harmless_boost: dict[str, float] | None = None, oversample_rare: int = 0,
                  max_repeat: int = 8) -> SamplingPlan:
    """Per-row sampling weights (expected copies per epoch) that balance sources and labels without dropping rows.

    1. Sources (when ``source_power`` or ``source_shares`` is given): a named source gets its fixed share of
       the epoch, the others share the rest in proportion to ``rows ** source_power``; each row of source s
       weighs ``share_s * n / rows_s``, so the epoch keeps ``n`` draws in expectation.
    2. Labels within a source: ``harmless_boost[s]`` multiplies the weight of s's harmless rows against its
       harmful ones, the source keeping its share.
    3. Rare categories (``oversample_rare`` = N): a category expected fewer than N times per epoch under
       these weights has its positives' weights multiplied by ``min(max_repeat, ceil(N / expected))`` (a row
       positive for several takes the largest). With steps 1-2 off this is exactly the former repetition
       of rare positives (whole factors, every copy every epoch).
    All weights 1 (every row once per epoch) when everything is off."""
    n = len(split)
    shares_in = dict(source_shares or {})
    boost = dict(harmless_boost or {})
    counts = Counter(split.sources)
    weights = np.ones(n, dtype=np.float64)
    info: dict[str, object] = {}
    src = np.array(split.sources, dtype=object)
    harmless = split.labels.sum(axis=1) == 0
    if source_power is not None or shares_in:
        power = 1.0 if source_power is None else source_power
        fixed = {s: v for s, v in shares_in.items() if s in counts}
        free = max(0.0, 1.0 - sum(fixed.values()))
        mass = {s: counts[s] ** power for s in counts if s not in fixed}
        total = sum(mass.values())
        share = {**fixed, **{s: (free * m / total if total else 0.0) for s, m in mass.items()}}
        for s, c in counts.items():
            weights[src == s] = share[s] * n / c
        info["source_power"] = power
        info["fixed_source_shares"] = fixed
        unknown = sorted(set(shares_in) - set(counts))
        if unknown:
            info["unknown_sources"] = unknown
    for s, b in boost.items():
        rows = src == s
        if not rows.any():
            continue
        before = weights[rows].sum()
        weights[rows & harmless] *= b
        weights[rows] *= before / weights[rows].sum()
    rare_factors: dict[str, int] = {}
    if oversample_rare > 0:
        expected = weights @ split.labels.astype(np.float64)
        per_row = np.ones(n, dtype=np.float64)
        for c, slug in enumerate(CATEGORY_SLUGS):
            e = float(expected[c])
            if 0 < e < oversample_rare:
                f = min(max_repeat, int(np.ceil(oversample_rare / e - 1e-9)))
                if f > 1:
                    rare_factors[slug] = f
                    rows = split.labels[:, c] > 0
                    per_row[rows] = np.maximum(per_row[rows], f)
        weights = weights * per_row
    near = np.round(weights)
    weights = np.where(np.abs(weights - near) < 1e-9, near, weights)  # rows ** 1 gives whole weights, exactly
    epoch = float(weights.sum())
    info.update({
        "rows": n,
        "expected_rows_per_epoch": round(epoch, 1),
        "sources": {s: {"rows": c, "natural_share": round(c / n, 4),
                        "epoch_share": round(float(weights[src == s].sum()) / epoch, 4) if epoch else 0.0,
                        "expected_draws": round(float(weights[src == s].sum()), 1)}
                    for s, c in sorted(counts.items())},
        "expected_positives_per_epoch": {slug: round(float(v), 1) for slug, v in
                                         zip(CATEGORY_SLUGS, weights @ split.labels.astype(np.float64), strict=True)},
        "expected_harmless_share": round(float(weights[harmless].sum()) / epoch, 4) if epoch else 0.0,
        "rare_factors": rare_factors,
        "harmless_boost": boost,
    })
    return SamplingPlan(weights, rare_factors, info)


def epoch_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index of every draw of an epoch (rows in order, copies adjacent) and each draw's copy number."""
    index = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return index, np.arange(len(index)) - starts


def eval_subsample(split: Split, n: int | None, seed: int) -> Split:
    """A deterministic dev subsample for evaluations during training (all of it when small)."""
    if n is None or len(split) <= n:
        return split
    order = sorted(range(len(split)), key=lambda i: _stable_key(seed + 1, split.ids[i]))
    # Keep the positives of every category represented, then fill with the rest in hash order.
    chosen: list[int] = []
    seen: set[int] = set()
    per_cat = max(1, n // (4 * len(CATEGORY_SLUGS)))
    for c in range(len(CATEGORY_SLUGS)):
        pos = [i for i in order if split.labels[i, c] > 0][:per_cat]
        for i in pos:
            if i not in seen:
                seen.add(i)
                chosen.append(i)
    for i in order:
        if len(chosen) >= n:
            break
        if i not in seen:
            seen.add(i)
            chosen.append(i)
    return split.subset(sorted(chosen))


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           mega_batch_factor: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length rows (little padding), deterministic for ``seed``.

    Rows are shuffled, cut into mega-batches of ``batch_size * mega_batch_factor``, sorted by length
    inside each, cut into batches; batch order is shuffled again so lengths vary over time."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_factor
    batches: list[list[int]] = []
    for k in range(0, len(perm), mega):
        chunk = sorted(perm[k: k + mega].tolist(), key=lambda i: lengths[i])
        batches.extend(chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def pos_weights(labels: np.ndarray, power: float, max_weight: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-category BCE positive weights: ``clip((neg / pos) ** power, 1, max_weight)`` (1 where pos = 0).

    ``weights``: expected copies of each row per epoch (sampling_plan); the counts are those of an epoch."""
    if weights is None:
        pos = labels.sum(axis=0)
        neg = len(labels) - pos
    else:
        pos = (weights[:, None] * labels).sum(axis=0).astype(np.float32)
        neg = np.float32(weights.sum()) - pos
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(ratio ** power, 1.0, max_weight).astype(np.float32)


def iter_chunks(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for k in range(0, len(seq), size):
        yield seq[k: k + size]
