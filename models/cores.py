"""How many cores this process may use: the one helper every thread-count default goes through."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The number of cores this process may run on (respects taskset / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
