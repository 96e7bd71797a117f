"""How many cores this process may use (the one helper every thread-count default goes through), and
whether idle onnxruntime threads may spin."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The number of cores this process may run on (respects taskset / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# Idle onnxruntime worker threads spin by default: lowest latency on a dedicated machine, but on a shared one
# measured 2x slower per call (36-44 ms vs 23 ms per window here). SHENHE_ORT_SPINNING=0 turns it off
# (offline commands read it in models.predictor; the service through ServingConfig).
SPIN_ENV = "SHENHE_ORT_SPINNING"
