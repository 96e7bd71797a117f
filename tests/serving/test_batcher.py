"""The micro-batcher on a deterministic fake model: routing, fairness, grouping, back-pressure, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from shenhe.models.windowing import Window
from shenhe.serving.batcher import BatcherConfig, Cancelled, DeadlineExceeded, MicroBatcher, QueueFull

PAD = 0


def fake_model(delay_s: float = 0.0, calls: list[np.ndarray] | None = None):
    """Logits that identify the window: [sum of ids, first id, number of real tokens]."""

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(ids.copy())
        if delay_s:
            time.sleep(delay_s)
        return np.stack([(ids * mask).sum(1), ids[:, 0], mask.sum(1)], axis=1).astype(np.float32)

    return run


def windows_for(request: int, lengths: list[int]) -> list[Window]:
    return [Window(i, tuple(request * 1000 + i * 10 + k + 1 for k in range(n)), 0, n) for i, n in enumerate(lengths)]


def expected(ws: list[Window]) -> np.ndarray:
    return np.array([[sum(w.ids), w.ids[0], len(w.ids)] for w in ws], dtype=np.float32)


def make(run, **config) -> MicroBatcher:
    return MicroBatcher(run, PAD, 3, BatcherConfig(**config))


def test_concurrent_requests_each_get_their_own_results() -> None:
    batcher = make(fake_model(delay_s=0.001), wait_ms=2)
    rng = np.random.default_rng(0)
    requests = [windows_for(r, list(rng.integers(1, 60, size=rng.integers(1, 12)))) for r in range(40)]

    async def go() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.score(ws, timeout_s=30) for ws in requests))

    try:
        results = asyncio.run(go())
    finally:
        batcher.close()
    for ws, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got, expected(ws))
    assert batcher.stats.calls < sum(len(ws) for ws in requests)  # requests were batched together


def test_threads_submitting_at_once_get_their_own_results() -> None:
    batcher = make(fake_model(), wait_ms=1)
    out: dict[int, np.ndarray] = {}

    def client(r: int) -> None:
        ws = windows_for(r, [5 + r % 7, 30, 2])
        out[r] = asyncio.run(batcher.score(ws, timeout_s=30))

    threads = [threading.Thread(target=client, args=(r,)) for r in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for r, got in out.items():
        np.testing.assert_array_equal(got, expected(windows_for(r, [5 + r % 7, 30, 2])))
    assert len(out) == 16


def test_a_huge_request_does_not_starve_small_ones() -> None:
    calls: list[np.ndarray] = []
    batcher = make(fake_model(delay_s=0.004, calls=calls), max_windows=16, wait_ms=1)
    huge = windows_for(1, [20] * 256)
    finished: dict[str, float] = {}

    async def timed(name: str, ws: list[Window], delay: float) -> None:
        await asyncio.sleep(delay)
        await batcher.score(ws, timeout_s=30)
        finished[name] = time.monotonic()

    async def go() -> None:
        await asyncio.gather(timed("huge", huge, 0), *(timed(f"small{i}", windows_for(10 + i, [12]), 0.02)
                                                         for i in range(5)))

    try:
        asyncio.run(go())
    finally:
        batcher.close()
    assert all(finished[f"small{i}"] < finished["huge"] for i in range(5))
    # The small requests' windows rode along within a couple of calls, not after the 256 huge windows.
    first_call_with_small = min(k for k, ids in enumerate(calls) if (ids[:, 0] >= 10_000).any())
    assert first_call_with_small < len(calls) // 2


def test_windows_of_very_different_lengths_go_to_separate_calls() -> None:
    calls: list[np.ndarray] = []
    batcher = make(fake_model(calls=calls), max_windows=32, wait_ms=50)
    ws = windows_for(1, [8] * 8 + [90] * 8)

    try:
        got = asyncio.run(batcher.score(ws, timeout_s=30))
    finally:
        batcher.close()
    np.testing.assert_array_equal(got, expected(ws))
    assert sorted(c.shape for c in calls) == [(8, 8), (8, 90)]  # not one call padded to 90


def test_call_size_is_bounded_by_padded_tokens() -> None:
    calls: list[np.ndarray] = []
    batcher = make(fake_model(calls=calls), max_windows=64, max_call_tokens=512, wait_ms=20)
    try:
        asyncio.run(batcher.score(windows_for(1, [96] * 20), timeout_s=30))
    finally:
        batcher.close()
    assert max(c.size for c in calls) <= 512 and sum(c.shape[0] for c in calls) == 20


def test_full_queue_refuses_at_once() -> None:
    gate = threading.Event()

    def blocked(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return np.zeros((ids.shape[0], 3), dtype=np.float32)

    batcher = make(blocked, queue_max_tokens=1024, max_windows=1, wait_ms=0)
    done = threading.Event()
    batcher.submit(windows_for(1, [10]), time.monotonic() + 30, lambda job: None)  # occupies the model
    time.sleep(0.05)
    batcher.submit(windows_for(2, [100] * 9), time.monotonic() + 30, lambda job: done.set())  # 900 tokens wait
    with pytest.raises(QueueFull) as e:
        batcher.submit(windows_for(3, [100] * 2), time.monotonic() + 30, lambda job: None)
    assert e.value.retry_after_s >= 1 and batcher.stats.jobs_refused == 1
    gate.set()
    assert done.wait(5)
    batcher.close()


def test_expired_request_is_dropped_by_its_deadline() -> None:
    batcher = make(fake_model(delay_s=0.02), max_windows=2, wait_ms=0)
    batcher.stats.keep_log = True
    ws = windows_for(1, [30] * 100)  # 50 calls of 20 ms: far longer than the deadline

    async def go() -> None:
        await batcher.score(ws, timeout_s=0.1)

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        asyncio.run(go())
    deadline = started + 0.1
    try:
        assert batcher.pending_tokens() == 0  # its pending windows are gone from the queue
        log = list(batcher.stats.call_log)
        assert log and all(start < deadline for start, _end, _jobs in log)  # no call started after it
        assert max(end for _s, end, _j in log) < deadline + 0.1  # the one running call ended soon after
        assert batcher.stats.jobs_expired == 1
    finally:
        batcher.close()


def test_disconnect_cancels_pending_work() -> None:
    batcher = make(fake_model(delay_s=0.02), max_windows=1, wait_ms=0)

    async def go() -> None:
        gone = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, gone.set)
        await batcher.score(windows_for(1, [10] * 100), timeout_s=30, disconnected=gone)

    with pytest.raises(Cancelled):
        asyncio.run(go())
    try:
        assert batcher.pending_tokens() == 0 and batcher.stats.jobs_cancelled == 1
        assert batcher.stats.windows_scored < 10
    finally:
        batcher.close()


def test_a_model_error_reaches_the_requests_in_that_call() -> None:
    def broken(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime failed")

    batcher = make(broken, wait_ms=0)
    try:
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            asyncio.run(batcher.score(windows_for(1, [5, 6]), timeout_s=5))
        assert batcher.pending_tokens() == 0
    finally:
        batcher.close()


def test_empty_request_needs_no_model_call() -> None:
    calls: list[np.ndarray] = []
    batcher = make(fake_model(calls=calls))
    try:
        assert asyncio.run(batcher.score([], timeout_s=1)).shape == (0, 3)
    finally:
        batcher.close()
    assert calls == []


def test_a_lone_request_does_not_wait_but_an_announced_one_is_waited_for() -> None:
    calls: list[np.ndarray] = []
    batcher = make(fake_model(calls=calls), wait_ms=300)
    try:
        started = time.monotonic()
        asyncio.run(batcher.score(windows_for(1, [10]), timeout_s=5))
        assert time.monotonic() - started < 0.2  # nobody announced: no batching wait

        async def two() -> None:
            batcher.expect(1)  # a second request is being tokenised

            async def late() -> None:
                await asyncio.sleep(0.05)
                batcher.expect(-1)
                await batcher.score(windows_for(3, [10]), timeout_s=5)

            await asyncio.gather(batcher.score(windows_for(2, [10]), timeout_s=5), late())

        calls.clear()
        asyncio.run(two())
        assert [c.shape[0] for c in calls] == [2]  # the first waited and both went in one call
    finally:
        batcher.close()
