"""What one serving worker holds: the predictor, the review store, the keys, the metrics, and the
way model calls are scheduled (one at a time per worker, or BentoML's adaptive batching)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from serving.auth import KeyRing
from serving.config import ServingConfig
from serving.logging import get_logger, log_event
from serving.metrics import Metrics, get_metrics, queue_depth_text
from serving.queue import NewReviewItem, ReviewStore

if TYPE_CHECKING:
    from models.predictor import Predictor
    from models.types import Prediction


class Overloaded(Exception):
    """Adaptive batching could not serve a request within its latency budget (HTTP 503)."""


def worker_threads(config: ServingConfig) -> int:
    """onnxruntime intra-op threads per worker: the worker's share of the cores."""
    if config.ort_threads:
        return config.ort_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // config.workers)


class DirectScheduler:
    """Each request's items go to the model as one call; calls run one at a time per worker, so
    onnxruntime's threads are not oversubscribed by concurrent requests."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._limiter = anyio.CapacityLimiter(1)

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return await anyio.to_thread.run_sync(self.predictor.predict, list(texts), limiter=self._limiter)

    def close(self) -> None:
        pass


class AdaptiveBatchScheduler:
    """BentoML's adaptive batching (its CorkDispatcher, the engine behind ``@bentoml.api(batchable=True)``)
    merging the items of concurrent requests into one model call. A request that cannot be served
    within ``max_latency_ms`` is refused (:class:`Overloaded`, HTTP 503)."""

    def __init__(self, predictor: Predictor, max_batch_size: int, max_latency_ms: int) -> None:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher

        self.predictor = predictor

        def refuse() -> Any:
            raise Overloaded(f"adaptive batching could not answer within {max_latency_ms} ms; retry later")

        self._dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=refuse,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        self._call = self._dispatcher(self._run_batch)

    async def _run_batch(self, jobs: Sequence[list[str]]) -> list[list[Prediction]]:
        flat = [text for job in jobs for text in job]
        preds = await anyio.to_thread.run_sync(self.predictor.predict, flat)
        out: list[list[Prediction]] = []
        start = 0
        for job in jobs:
            out.append(preds[start:start + len(job)])
            start += len(job)
        return out

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return await self._call(list(texts))

    def close(self) -> None:
        self._dispatcher.shutdown()


@dataclass
class Runtime:
    config: ServingConfig
    predictor: Predictor
    store: ReviewStore
    keys: KeyRing
    metrics: Metrics
    scheduler: DirectScheduler | AdaptiveBatchScheduler
    logger: logging.Logger

    @classmethod
    def start(cls, config: ServingConfig) -> Runtime:
        """Load the bundle, open the database (creating the tables if needed) and read the keys."""
        from models.predictor import Predictor  # onnxruntime: load in the worker, not at import

        logger = get_logger()
        keys = KeyRing.load(config.keys_file)
        predictor = Predictor(config.bundle, policy=config.policy, intra_op_threads=worker_threads(config))
        store = ReviewStore(config.db_url)
        store.create_schema()
        scheduler: DirectScheduler | AdaptiveBatchScheduler
        if config.adaptive_batching:
            scheduler = AdaptiveBatchScheduler(predictor, config.batch_max_size, config.batch_max_latency_ms)
        else:
            scheduler = DirectScheduler(predictor)
        runtime = cls(config=config, predictor=predictor, store=store, keys=keys, metrics=get_metrics(),
                      scheduler=scheduler, logger=logger)
        log_event(
            logger, "worker ready", model=predictor.info.name, model_version=predictor.info.version,
            policy_version=predictor.policy.version, database=store.describe(), api_keys=len(keys),
            adaptive_batching=config.adaptive_batching, ort_threads=predictor.intra_op_threads,
            max_text_chars=config.max_text_chars, log_texts=config.log_texts,
        )
        return runtime

    def ready(self) -> bool:
        return self.store.ping()

    async def enqueue(self, items: list[NewReviewItem]) -> list[str]:
        result = await anyio.to_thread.run_sync(self.store.enqueue, items)
        self.metrics.review_enqueued.inc(result.new)
        return result.review_ids

    def queue_metrics_text(self) -> str:
        try:
            return queue_depth_text(self.store.counts(), self.store.category_counts())
        except Exception:  # a scrape must not fail because the database is briefly away
            return "# shenhe_review_queue_depth unavailable: database unreachable\n"

    def close(self) -> None:
        self.scheduler.close()
        self.store.close()
