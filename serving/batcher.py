"""Micro-batching of model calls across concurrent requests, with fairness, bounded queue and deadlines.

One batcher per serving worker owns the model: a single thread makes every onnxruntime call, so calls never
compete for the worker's cores. Requests hand it their token windows and await the logits:

- **Batching**: when other requests are on their way (announced with :meth:`MicroBatcher.expect` while they
  are tokenised), the worker waits up to ``wait_ms`` for them to join; a lone request never waits. It takes up to
  ``max_windows`` windows and splits them, sorted by length, into groups whose padding costs little (one
  model call per group, each call at most ``max_call_tokens`` padded tokens, which bounds how long one call
  can hold the model).
- **Fairness**: windows are taken round-robin across requests (one window per request per turn), starting
  at a rotating request, so a 256-item request gets one share of each batch, not all of it.
- **Back-pressure**: at most ``queue_max_tokens`` tokens wait; a request that would exceed it is refused at
  once (:class:`QueueFull`, HTTP 503 with Retry-After) instead of waiting behind work it cannot outlast.
- **Deadlines and disconnects**: a request that times out or whose client left is cancelled: its pending
  windows are dropped at once and never reach the model (only a call already running finishes).

Results come back to each request by its own job object, so no result can reach another request.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shenhe.models.windowing import CALL_OVERHEAD_TOKENS, Window, length_groups, pad_batch

RunModel = Callable[[np.ndarray, np.ndarray], np.ndarray]


class QueueFull(Exception):
    """The batcher holds as much work as it may; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before its windows were scored (they were dropped)."""


class Cancelled(Exception):
    """The request was cancelled (its client disconnected); its windows were dropped."""


@dataclass(frozen=True)
class BatcherConfig:
    max_windows: int = 32  # windows taken per batch (then split into length groups)
    max_call_tokens: int = 2048  # padded tokens per model call (bounds one call's time)
    wait_ms: float = 2.0  # how long a batch waits for more work to join
    queue_max_tokens: int = 65_536  # tokens that may wait; more is refused with 503
    call_overhead_tokens: int = CALL_OVERHEAD_TOKENS  # one extra model call, in padded tokens


@dataclass(eq=False)
class _Job:
    windows: Sequence[Window]
    deadline: float
    on_done: Callable[[_Job], None]
    logits: np.ndarray
    pending: list[int]  # indices into windows not yet taken, next first
    tokens_pending: int
    remaining: int  # windows not yet scored
    seq: int
    error: BaseException | None = None
    finished: bool = False


@dataclass
class BatcherStats:
    """Counters a test or /metrics can read."""

    calls: int = 0
    windows_scored: int = 0
    padded_tokens: int = 0
    jobs_done: int = 0
    jobs_expired: int = 0
    jobs_cancelled: int = 0
    jobs_refused: int = 0
    call_log: list[tuple[float, float, tuple[int, ...]]] = field(default_factory=list)  # (start, end, job seqs)
    keep_log: bool = False


class MicroBatcher:
    def __init__(self, run: RunModel, pad_token_id: int, n_outputs: int, config: BatcherConfig | None = None) -> None:
        self.run = run
        self.pad_token_id = pad_token_id
        self.n_outputs = n_outputs
        self.config = config or BatcherConfig()
        self.stats = BatcherStats()
        self._lock = threading.Condition()
        self._jobs: list[_Job] = []  # jobs with pending windows, in arrival order
        self._queued_tokens = 0
        self._seq = itertools.count()
        self._rotate = 0
        self._expected = 0  # requests announced (being tokenised) but not submitted yet
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="shenhe-batcher", daemon=True)
        self._thread.start()

    # -- request side ----------------------------------------------------------------------------------

    def expect(self, n: int = 1) -> None:
        """Announce ``n`` requests that will submit soon (``n=-1``: one fewer): a batch waits up to ``wait_ms``
        for them, and does not wait at all when nobody is expected (no latency added to a lone request)."""
        with self._lock:
            self._expected = max(0, self._expected + n)

    def submit(self, windows: Sequence[Window], deadline: float, on_done: Callable[[_Job], None]) -> _Job:
        """Queue ``windows`` (deadline on ``time.monotonic()``); ``on_done(job)`` runs on the worker thread."""
        tokens = sum(len(w.ids) for w in windows)
        job = _Job(windows=windows, deadline=deadline, on_done=on_done,
                   logits=np.zeros((len(windows), self.n_outputs), dtype=np.float32),
                   # Each request's own windows go shortest first: neighbours in a batch then pad less.
                   pending=sorted(range(len(windows)), key=lambda i: len(windows[i].ids)),
                   tokens_pending=tokens, remaining=len(windows), seq=next(self._seq))
        with self._lock:
            if self._closed:
                raise QueueFull("the service is shutting down", 5)
            if not windows:
                job.finished = True
            elif self._queued_tokens and self._queued_tokens + tokens > self.config.queue_max_tokens:
                self.stats.jobs_refused += 1
                raise QueueFull(f"the model queue is full ({self._queued_tokens} tokens waiting, limit "
                                f"{self.config.queue_max_tokens}); retry shortly", self._retry_after())
            else:
                self._jobs.append(job)
                self._queued_tokens += tokens
                self._lock.notify_all()
        if job.finished:
            on_done(job)
        return job

    async def score(self, windows: Sequence[Window], timeout_s: float,
                    disconnected: asyncio.Event | None = None) -> np.ndarray:
        """Logits [len(windows), n_outputs] for ``windows`` within ``timeout_s``, else :class:`DeadlineExceeded`;
        :class:`Cancelled` when ``disconnected`` is set first."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_done(_job: _Job) -> None:
            loop.call_soon_threadsafe(lambda: None if done.done() else done.set_result(None))

        job = self.submit(windows, time.monotonic() + timeout_s, on_done)
        waiters: set[asyncio.Future[Any]] = {done}
        watcher: asyncio.Task[bool] | None = None
        if disconnected is not None:
            watcher = asyncio.ensure_future(disconnected.wait())
            waiters.add(watcher)
        try:
            await asyncio.wait(waiters, timeout=max(0.0, job.deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancel(job, Cancelled("request cancelled"))
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if not done.done():
            reason: Exception = (Cancelled("the client disconnected") if disconnected is not None and disconnected.is_set()
                                 else DeadlineExceeded(f"the model did not finish within {timeout_s:g} s; "
                                                       "its remaining work was dropped"))
            self.cancel(job, reason)  # no effect if the job finished in the meantime
        if job.error is not None:
            raise job.error
        return job.logits

    def cancel(self, job: _Job, reason: BaseException) -> None:
        """Drop the job's pending windows now; a result arriving later for it is discarded."""
        with self._lock:
            self._drop(job, reason)

    def pending_tokens(self, job: _Job | None = None) -> int:
        """Tokens still waiting (for one job, or in all): what a test reads to see work was dropped."""
        with self._lock:
            if job is not None:
                return job.tokens_pending if job in self._jobs else 0
            return self._queued_tokens

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in list(self._jobs):
                self._drop(job, Cancelled("the service is shutting down"))
            self._lock.notify_all()
        self._thread.join(timeout=5)

    # -- worker side -----------------------------------------------------------------------------------

    def _retry_after(self) -> int:
        # Rough drain time of the queue at ~20k tokens/s on two cores; at least one second.
        return max(1, round(self._queued_tokens / 20_000))

    def _drop(self, job: _Job, reason: BaseException) -> None:
        """Under the lock: remove ``job`` from the queue and finish it with ``reason``."""
        if job in self._jobs:
            self._jobs.remove(job)
            self._queued_tokens -= job.tokens_pending
            job.tokens_pending = 0
            job.pending = []
        if not job.finished:
            job.finished = True
            job.error = reason
            if isinstance(reason, DeadlineExceeded):
                self.stats.jobs_expired += 1
            else:
                self.stats.jobs_cancelled += 1
            job.on_done(job)

    def _take(self) -> list[tuple[_Job, int]]:
        """Under the lock: up to ``max_windows`` windows, round-robin over the jobs from a rotating start."""
        now = time.monotonic()
        for job in [j for j in self._jobs if j.deadline <= now]:
            self._drop(job, DeadlineExceeded("deadline passed while queued"))
        if not self._jobs:
            return []
        start = self._rotate % len(self._jobs)
        self._rotate += 1
        order = self._jobs[start:] + self._jobs[:start]
        taken: list[tuple[_Job, int]] = []
        while len(taken) < self.config.max_windows:
            progressed = False
            for job in order:
                if job.pending and len(taken) < self.config.max_windows:
                    i = job.pending.pop(0)
                    n = len(job.windows[i].ids)
                    job.tokens_pending -= n
                    self._queued_tokens -= n
                    taken.append((job, i))
                    progressed = True
            if not progressed:
                break
        self._jobs = [j for j in self._jobs if j.pending]
        return taken

    def _groups(self, taken: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """Split windows sorted by length into model calls minimising padded tokens + per-call overhead."""
        lengths = [len(job.windows[i].ids) for job, i in taken]
        return [[taken[k] for k in group] for group in
                length_groups(lengths, len(taken), self.config.max_call_tokens, self.config.call_overhead_tokens)]

    def _loop(self) -> None:
        wait_s = self.config.wait_ms / 1000.0
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
            if wait_s > 0:
                # Let announced requests join this batch (unless there is already a full one).
                with self._lock:
                    waited_until = time.monotonic() + wait_s
                    while (self._expected > 0 and not self._closed and time.monotonic() < waited_until
                           and sum(len(j.pending) for j in self._jobs) < self.config.max_windows):
                        self._lock.wait(timeout=max(0.0, waited_until - time.monotonic()))
            with self._lock:
                taken = self._take()
            for group in self._groups(taken) if taken else []:
                self._run_group(group)

    def _run_group(self, group: list[tuple[_Job, int]]) -> None:
        live = [(job, i) for job, i in group if not job.finished]  # cancelled since it was taken: skip
        if not live:
            return
        ids, mask = pad_batch([job.windows[i] for job, i in live], self.pad_token_id)
        started = time.monotonic()
        try:
            out = self.run(ids, mask)
            error: BaseException | None = None
        except Exception as e:  # the model failed: every request in this call gets the error
            out, error = None, e
        ended = time.monotonic()
        with self._lock:
            self.stats.calls += 1
            self.stats.windows_scored += len(live)
            self.stats.padded_tokens += int(ids.size)
            if self.stats.keep_log:
                self.stats.call_log.append((started, ended, tuple(sorted({job.seq for job, _ in live}))))
            for row, (job, i) in enumerate(live):
                if job.finished:
                    continue
                if error is not None:
                    self._drop(job, error)
                    continue
                assert out is not None
                job.logits[i] = out[row]
                job.remaining -= 1
                if job.remaining == 0 and not job.pending:
                    job.finished = True
                    self.stats.jobs_done += 1
                    job.on_done(job)
