"""How many cores this process may use (the one helper every thread-count default goes through), which
processor they are, and whether idle onnxruntime threads may spin."""

from __future__ import annotations

import os
import platform


def default_threads() -> int:
    """The number of cores this process may run on (respects taskset / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_model() -> str:
    """The processor's model name ("AMD EPYC"), for records of how long something took on which machine;
    ``platform.processor()`` says only "x86_64" on Linux, so /proc/cpuinfo is asked first."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# Idle onnxruntime worker threads spin by default: lowest latency on a dedicated machine, but on a shared one
# measured 2x slower per call (36-44 ms vs 23 ms per window here). SHENHE_ORT_SPINNING=0 turns it off
# (offline commands read it in models.predictor; the service through ServingConfig).
SPIN_ENV = "SHENHE_ORT_SPINNING"
