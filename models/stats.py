"""The Wilson score interval: the one confidence interval for a proportion used across shenhe (block
precision in reports, in threshold fitting and on live reviewer audits)."""

from __future__ import annotations

import numpy as np

Z95 = 1.959964


def wilson_bounds(successes: np.ndarray | int, n: np.ndarray | int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of ``successes / n`` (element-wise); (0, 1) where n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible for small n or a proportion near 1
    (20 / 20 gives [0.84, 1.0], not [1.0, 1.0])."""
    k = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    safe = np.maximum(m, 1.0)
    p = k / safe
    denom = 1 + z * z / safe
    centre = (p + z * z / (2 * safe)) / denom
    half = z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe)) / denom
    lo = np.where(m > 0, np.maximum(0.0, centre - half), 0.0)
    hi = np.where(m > 0, np.minimum(1.0, centre + half), 1.0)
    return lo, hi


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Scalar :func:`wilson_bounds`."""
    lo, hi = wilson_bounds(successes, n, z)
    return float(lo), float(hi)
