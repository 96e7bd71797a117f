"""Live precision: how the model does on real traffic, measured by the reviewers' decisions.

- Every ``review`` item is decided by a person, so the review band's precision per category is the
  share of items whose reviewer confirmed that category.
- Auto-blocked items are never seen by a person, so a share of them (``SHENHE_AUDIT_BLOCK_SHARE``,
  default 2%, drawn deterministically from the item's caller id and text) is queued as ``audit`` items;
  their decisions estimate the block band's precision.
- The review rate per category is the share of classified items that went to review for it, from
  counts each worker adds to the database every few seconds.

Each estimate has a 95% Wilson score interval. A block band whose estimate is below the policy's
``targets.block_precision`` (with at least :data:`MIN_FLAG_SAMPLES` audited items) is flagged on the
admin page, in ``/metrics`` (``shenhe_live_precision_below_target``) and in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from shenhe.models.policy import CATEGORY_SLUGS, Policy
from shenhe.models.stats import wilson
from shenhe.serving.logging import log_event
from shenhe.serving.queue import NewReviewItem, ReviewStore, dedup_key, sampled

if TYPE_CHECKING:
    from shenhe.models.types import Prediction
    from shenhe.serving.runtime import Runtime

MIN_FLAG_SAMPLES = 10  # fewer audited blocks than this: too few to raise a flag
CACHE_SECONDS = 10.0
TRAFFIC_FLUSH_SECONDS = 5.0
BANDS = ("block", "review")


@dataclass(frozen=True, slots=True)
class BandEstimate:
    category: str
    band: str  # block | review
    n: int  # decided items the model put in this band for this category
    confirmed: int  # ... whose reviewer confirmed the category
    low: float
    high: float
    target: float | None  # the policy's block precision target (block band only)

    @property
    def precision(self) -> float | None:
        return self.confirmed / self.n if self.n else None

    @property
    def flagged(self) -> bool:
        p = self.precision
        return (self.band == "block" and self.target is not None and p is not None
                and self.n >= MIN_FLAG_SAMPLES and p < self.target)


@dataclass(frozen=True, slots=True)
class RateEstimate:
    category: str
    reviews: int
    classified: int
    low: float
    high: float

    @property
    def rate(self) -> float | None:
        return self.reviews / self.classified if self.classified else None


@dataclass(frozen=True, slots=True)
class LiveReport:
    bands: list[BandEstimate]
    rates: list[RateEstimate]
    target: float

    @property
    def flagged(self) -> list[BandEstimate]:
        return [b for b in self.bands if b.flagged]


def estimate(rows: Sequence[dict[str, Any]], traffic: dict[tuple[str, str], int], policy: Policy) -> LiveReport:
    """Estimates from decided items (``ReviewStore.decided_rows``) and traffic counts."""
    n: Counter[tuple[str, str]] = Counter()
    k: Counter[tuple[str, str]] = Counter()
    for r in rows:
        if r["kind"] == "second" or r["decision"] not in BANDS:
            continue
        labels = set(r["labels"] or [])
        for cat in dict.fromkeys(r["categories"] or []):
            n[(cat, r["decision"])] += 1
            k[(cat, r["decision"])] += cat in labels
    target = policy.targets.block_precision
    bands = []
    for cat in CATEGORY_SLUGS:
        for band in BANDS:
            key = (cat, band)
            lo, hi = wilson(k[key], n[key])
            bands.append(BandEstimate(cat, band, n[key], k[key], lo, hi, target if band == "block" else None))
    total = traffic.get(("*", "all"), 0)
    rates = []
    for cat in CATEGORY_SLUGS:
        reviews = traffic.get((cat, "review"), 0)
        lo, hi = wilson(reviews, total)
        rates.append(RateEstimate(cat, reviews, total, lo, hi))
    return LiveReport(bands, rates, target)


def metrics_text(report: LiveReport) -> str:
    """Prometheus text lines (appended to ``/metrics``); bands without decisions are left out."""
    out = [
        "# HELP shenhe_live_precision Share of decided items in a band whose reviewer confirmed the category",
        "# TYPE shenhe_live_precision gauge",
    ]
    out += [f'shenhe_live_precision{{category="{b.category}",band="{b.band}"}} {b.precision:.6f}'
            for b in report.bands if b.n]
    for name, attr, what in (("lower", "low", "Lower"), ("upper", "high", "Upper")):
        out += [f"# HELP shenhe_live_precision_{name} {what} end of the 95% Wilson interval of shenhe_live_precision",
                f"# TYPE shenhe_live_precision_{name} gauge"]
        out += [f'shenhe_live_precision_{name}{{category="{b.category}",band="{b.band}"}} {getattr(b, attr):.6f}'
                for b in report.bands if b.n]
    out += ["# HELP shenhe_live_precision_samples Decided items behind shenhe_live_precision",
            "# TYPE shenhe_live_precision_samples gauge"]
    out += [f'shenhe_live_precision_samples{{category="{b.category}",band="{b.band}"}} {b.n}' for b in report.bands]
    out += ["# HELP shenhe_live_precision_below_target 1 when the block band's live precision is below the policy target",
            "# TYPE shenhe_live_precision_below_target gauge"]
    out += [f'shenhe_live_precision_below_target{{category="{b.category}"}} {int(b.flagged)}'
            for b in report.bands if b.band == "block"]
    out += ["# HELP shenhe_live_review_rate Share of classified items sent to review for the category",
            "# TYPE shenhe_live_review_rate gauge"]
    out += [f'shenhe_live_review_rate{{category="{r.category}"}} {r.rate:.6f}' for r in report.rates if r.classified]
    return "\n".join(out) + "\n"


class LivePrecision:
    """One per worker: cached estimates, the traffic counter and the below-target log lines."""

    def __init__(self, store: ReviewStore, policy: Policy, logger: logging.Logger) -> None:
        self.store = store
        self.policy = policy
        self.logger = logger
        self._lock = threading.Lock()
        self._cached: tuple[float, LiveReport] | None = None
        self._flagged: set[str] = set()
        self._traffic: Counter[tuple[str, str]] = Counter()
        self._last_flush = time.monotonic()

    def report(self, fresh: bool = False) -> LiveReport:
        now = time.monotonic()
        with self._lock:
            if not fresh and self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
        self.flush_traffic()
        rep = estimate(self.store.decided_rows(), self.store.traffic(), self.policy)
        with self._lock:
            self._cached = (now, rep)
            flagged = {b.category for b in rep.flagged}
            new, self._flagged = flagged - self._flagged, flagged
        for b in rep.flagged:
            if b.category in new:
                log_event(self.logger, "live precision below target", level=logging.WARNING, category=b.category,
                          band=b.band, precision=round(b.precision or 0.0, 4), low=round(b.low, 4),
                          high=round(b.high, 4), samples=b.n, target=b.target)
        return rep

    # traffic: counted in memory, added to the database at most every few seconds

    def count(self, predictions: Sequence[Prediction]) -> bool:
        """Count classified items; True when a flush is due."""
        with self._lock:
            self._traffic[("*", "all")] += len(predictions)
            for p in predictions:
                for cat in dict.fromkeys(p.categories):
                    self._traffic[(cat, p.decision)] += 1
            return time.monotonic() - self._last_flush >= TRAFFIC_FLUSH_SECONDS

    def flush_traffic(self) -> None:
        with self._lock:
            pending, self._traffic = dict(self._traffic), Counter()
            self._last_flush = time.monotonic()
        try:
            self.store.add_traffic(pending)
        except Exception:  # counts are an estimate: keep them for the next flush
            with self._lock:
                self._traffic.update(pending)


_instances: dict[int, LivePrecision] = {}


def for_runtime(runtime: Runtime) -> LivePrecision:
    """The worker's :class:`LivePrecision` (created on first use; no change to Runtime needed)."""
    live = _instances.get(id(runtime))
    if live is None or live.store is not runtime.store:
        live = LivePrecision(runtime.store, runtime.predictor.policy, runtime.logger)
        _instances[id(runtime)] = live
    live.policy = runtime.predictor.policy  # a hot-reloaded policy brings its own target (serving/reload.py)
    return live


async def after_classify(runtime: Runtime, caller_ids: Sequence[str | None], texts: Sequence[str],
                         predictions: Sequence[Prediction], request_id: str) -> int:
    """The classify hook: queue a share of the auto-blocked items as audit items (committed before the
    response, like review items) and count the traffic. Returns how many audit items were new."""
    share = runtime.config.audit_block_share
    audit = [NewReviewItem(caller_id=caller_ids[i], text=texts[i], prediction=p, request_id=request_id, kind="audit")
             for i, p in enumerate(predictions)
             if p.decision == "block" and sampled(f"audit:{dedup_key(caller_ids[i], texts[i])}", share)]
    new = 0
    if audit:
        new = (await anyio.to_thread.run_sync(runtime.store.enqueue, audit)).new
    live = for_runtime(runtime)
    if live.count(predictions):
        await anyio.to_thread.run_sync(live.flush_traffic)
    return new
