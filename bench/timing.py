"""Timing shared by the benchmarks (run as ``python bench/NAME.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import time


def best_of(repeat: int, fn) -> float:
    """The shortest of ``repeat`` wall-clock runs of ``fn()``, in seconds (the least disturbed by a noisy machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
