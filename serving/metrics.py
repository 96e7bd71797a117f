"""Prometheus metrics of the API, exposed on BentoML's ``/metrics`` next to BentoML's own.

prometheus_client is imported inside :func:`get_metrics`: BentoML workers switch it to multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``) after the service module is imported, and a metric created
before that would be invisible. The queue depth is read from the database at scrape time."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shenhe.serving.queue import QueueCounts

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

if TYPE_CHECKING:
    from shenhe.serving.batcher import BatcherStats


@dataclass(frozen=True)
class Metrics:
    requests: Any  # Counter[endpoint, status]
    latency: Any  # Histogram[endpoint]
    items: Any  # Counter[decision]
    category_decisions: Any  # Counter[category, decision]
    review_enqueued: Any  # Counter

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    """The process's metrics (created once: prometheus_client refuses duplicate names)."""
    from prometheus_client import Counter, Histogram

    return Metrics(
        requests=Counter("shenhe_requests_total", "Requests to the /v1 API by endpoint and HTTP status",
                         ["endpoint", "status"]),
        latency=Histogram("shenhe_request_latency_seconds", "Latency of /v1 requests", ["endpoint"],
                          buckets=LATENCY_BUCKETS),
        items=Counter("shenhe_items_total", "Classified items by decision", ["decision"]),
        category_decisions=Counter("shenhe_category_decisions_total",
                                   "Categories behind review and block decisions", ["category", "decision"]),
        review_enqueued=Counter("shenhe_review_enqueued_total", "Items newly written to the review queue"),
    )


def queue_depth_text(counts: QueueCounts, per_category: dict[str, QueueCounts]) -> str:
    """Prometheus text lines for the review queue depth (appended to ``/metrics``)."""
    lines = [
        "# HELP shenhe_review_queue_depth Review queue items by state (read from the database at scrape time)",
        "# TYPE shenhe_review_queue_depth gauge",
    ]
    for state in ("open", "claimed", "decided"):
        lines.append(f'shenhe_review_queue_depth{{state="{state}"}} {getattr(counts, state)}')
    lines += [
        "# HELP shenhe_review_queue_category_depth Review queue items by category behind the model's decision and state",
        "# TYPE shenhe_review_queue_category_depth gauge",
    ]
    for cat, c in per_category.items():
        for state in ("open", "claimed", "decided"):
            lines.append(f'shenhe_review_queue_category_depth{{category="{cat}",state="{state}"}} {getattr(c, state)}')
    return "\n".join(lines) + "\n"


def batcher_text(stats: BatcherStats, queued_tokens: int) -> str:
    """Prometheus text lines for the worker's micro-batcher (appended to ``/metrics``)."""
    counters = {
        "shenhe_model_calls_total": ("Model (onnxruntime) calls", stats.calls),
        "shenhe_model_windows_total": ("Token windows scored", stats.windows_scored),
        "shenhe_model_padded_tokens_total": ("Padded tokens computed (batch x longest window per call)",
                                             stats.padded_tokens),
    }
    lines: list[str] = []
    for name, (help_text, value) in counters.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
    lines += ["# HELP shenhe_batcher_requests_total Requests through the batcher by outcome",
              "# TYPE shenhe_batcher_requests_total counter"]
    for outcome, value in (("done", stats.jobs_done), ("expired", stats.jobs_expired),
                           ("cancelled", stats.jobs_cancelled), ("refused", stats.jobs_refused)):
        lines.append(f'shenhe_batcher_requests_total{{outcome="{outcome}"}} {value}')
    lines += ["# HELP shenhe_batcher_queued_tokens Tokens waiting for the model",
              "# TYPE shenhe_batcher_queued_tokens gauge", f"shenhe_batcher_queued_tokens {queued_tokens}"]
    return "\n".join(lines) + "\n"
