"""What one serving worker holds: the predictor, the review store, the keys, the metrics, and the
scheduler that batches model calls across concurrent requests (serving/batcher.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from shenhe.models.cores import default_threads
from shenhe.serving.auth import KeyRing
from shenhe.serving.batcher import BatcherConfig, MicroBatcher
from shenhe.serving.config import ServingConfig
from shenhe.serving.logging import get_logger, log_event
from shenhe.serving.metrics import Metrics, batcher_text, get_metrics, queue_depth_text
from shenhe.serving.queue import NewReviewItem, ReviewStore

if TYPE_CHECKING:
    from shenhe.models.predictor import Predictor
    from shenhe.models.types import Prediction
    from shenhe.serving.reload import Reloader


class TokenBudgetExceeded(Exception):
    """A request whose texts need more model tokens than one request may use (HTTP 413)."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the texts in this request need {tokens} model tokens; one request may use at most "
                         f"{limit} (send fewer or shorter texts per request)")
        self.tokens = tokens
        self.limit = limit


def worker_threads(config: ServingConfig) -> int:
    """onnxruntime intra-op threads per worker: the worker's share of the cores."""
    return config.ort_threads or max(1, default_threads() // config.workers)


def load_predictor(config: ServingConfig, policy: Path | None = None) -> Predictor:
    """A predictor on the configured bundle, deciding by ``policy`` (None: the bundle's own), with the
    worker's threads and spinning: every setting from ``config``, none from the environment."""
    from shenhe.models.predictor import Predictor  # onnxruntime: load in the worker, not at import

    return Predictor(config.bundle_dir, policy=policy, intra_op_threads=worker_threads(config),
                     allow_spinning=config.ort_spinning)


class Scheduler:
    """Scores requests through one :class:`MicroBatcher` per worker: texts are normalised and cut into windows
    in a thread, checked against the per-request token budget, scored together with concurrent requests'
    windows, and turned into decisions. A deadline or a disconnect drops the request's pending windows."""

    def __init__(self, predictor: Predictor, config: ServingConfig) -> None:
        from shenhe.models.policy import CATEGORY_SLUGS

        self.predictor = predictor
        self.config = config
        self.batcher = MicroBatcher(predictor.run_model, predictor.manifest.pad_token_id, len(CATEGORY_SLUGS),
                                    BatcherConfig(max_windows=config.batch_max_windows,
                                                  max_call_tokens=config.batch_call_tokens,
                                                  wait_ms=config.batch_wait_ms,
                                                  queue_max_tokens=config.queue_max_tokens))
        # Hot reload (serving/reload.py): requests in flight on this scheduler, and the scheduler that took
        # over from this one (a request arriving here after the swap is passed on to it).
        self._state = threading.Condition()
        self._inflight = 0
        self._successor: Scheduler | None = None

    async def predict(self, texts: Sequence[str], disconnected: asyncio.Event | None = None,
                      timeout_s: float | None = None) -> list[Prediction]:
        with self._state:
            successor = self._successor
            if successor is None:
                self._inflight += 1
        if successor is not None:
            return await successor.predict(texts, disconnected, timeout_s)
        try:
            return await self._predict(self.predictor, texts, disconnected, timeout_s)
        finally:
            with self._state:
                self._inflight -= 1
                self._state.notify_all()

    async def _predict(self, predictor: Predictor, texts: Sequence[str], disconnected: asyncio.Event | None,
                       timeout_s: float | None) -> list[Prediction]:
        """One request on one predictor throughout (a policy swap replaces ``self.predictor``, never mutates it)."""
        started = time.monotonic()
        timeout = float(timeout_s if timeout_s is not None else self.config.request_timeout_s)
        self.batcher.expect(1)  # a batch forming now may wait a moment for this request
        try:
            prepared = await anyio.to_thread.run_sync(predictor.prepare, list(texts))
        finally:
            self.batcher.expect(-1)
        if prepared.tokens > self.config.max_request_tokens:
            raise TokenBudgetExceeded(prepared.tokens, self.config.max_request_tokens)
        logits = await self.batcher.score(prepared.windows, timeout - (time.monotonic() - started), disconnected)
        if len(texts) <= 8:  # a few texts: deciding inline is cheaper than a thread hop
            return predictor.finish(prepared, logits)
        return await anyio.to_thread.run_sync(predictor.finish, prepared, logits)

    def retire(self, successor: Scheduler, drain_s: float) -> int:
        """Hand new requests to ``successor``, wait (up to ``drain_s``) for the requests in flight here to
        finish on this scheduler's model, then close it. Returns how many were still in flight at the end."""
        deadline = time.monotonic() + drain_s
        with self._state:
            self._successor = successor
            while self._inflight and time.monotonic() < deadline:
                self._state.wait(timeout=max(0.0, deadline - time.monotonic()))
            left = self._inflight
        self.batcher.close()
        return left

    def close(self) -> None:
        self.batcher.close()


@dataclass
class Runtime:
    config: ServingConfig
    predictor: Predictor
    store: ReviewStore
    keys: KeyRing
    metrics: Metrics
    scheduler: Scheduler
    logger: logging.Logger
    reloader: Reloader | None = None

    @classmethod
    def start(cls, config: ServingConfig) -> Runtime:
        """Load the bundle, open the database (creating the tables if needed) and read the keys."""
        logger = get_logger()
        keys = KeyRing.load(config.keys_file)
        predictor = load_predictor(config, config.policy)
        store = ReviewStore(config.db_url)
        store.create_schema()
        scheduler = Scheduler(predictor, config)
        runtime = cls(config=config, predictor=predictor, store=store, keys=keys, metrics=get_metrics(),
                      scheduler=scheduler, logger=logger)
        log_event(
            logger, "worker ready", model=predictor.info.name, model_version=predictor.info.version,
            policy_version=predictor.policy.version, database=store.describe(), api_keys=len(keys),
            ort_threads=predictor.intra_op_threads, batch_max_windows=config.batch_max_windows,
            batch_wait_ms=config.batch_wait_ms, max_request_tokens=config.max_request_tokens,
            request_timeout_s=config.request_timeout_s,
            max_text_chars=config.max_text_chars, log_texts=config.log_texts,
            reload_interval_s=config.reload_interval_s,
        )
        from shenhe.serving.reload import Reloader

        runtime.reloader = Reloader(runtime)
        runtime.reloader.start()
        return runtime

    def swap_predictor(self, predictor: Predictor) -> None:
        """Serve with ``predictor`` from now on. Same model session (a policy change): the scheduler's
        predictor is replaced (requests in flight keep the one they captured). A new model: a new scheduler
        takes new requests while the old one drains its in-flight requests on the old model, then closes."""
        old = self.scheduler
        if predictor.session is old.predictor.session:
            old.predictor = predictor
            self.predictor = predictor
            return
        self.scheduler = Scheduler(predictor, self.config)
        self.predictor = predictor

        def drain() -> None:
            left = old.retire(self.scheduler, self.config.request_timeout_s + 5)
            log_event(self.logger, "old model closed", model_version=old.predictor.info.version,
                      requests_cut=left, level=logging.WARNING if left else logging.INFO)

        threading.Thread(target=drain, name="shenhe-drain", daemon=True).start()

    def ready(self) -> bool:
        return self.store.ping()

    async def enqueue(self, items: list[NewReviewItem]) -> list[str]:
        policy = self.predictor.policy  # the uncertainty order: how close the scores came to a threshold
        items = [i if i.margin is not None else replace(i, margin=policy.threshold_margin(i.prediction.scores))
                 for i in items]
        result = await anyio.to_thread.run_sync(self.store.enqueue, items)
        self.metrics.review_enqueued.inc(result.new)
        return result.review_ids

    def queue_metrics_text(self) -> str:
        batcher = self.scheduler.batcher
        model = batcher_text(batcher.stats, batcher.pending_tokens())
        try:
            return model + queue_depth_text(self.store.counts(), self.store.category_counts())
        except Exception:  # a scrape must not fail because the database is briefly away
            return model + "# shenhe_review_queue_depth unavailable: database unreachable\n"

    def close(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
        self.scheduler.close()
        self.store.close()
