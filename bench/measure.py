"""Measurements shared by the benchmarks (run as ``python bench/NAME.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import time

from na64_online.daq.memory import status_bytes


def best_of(repeat: int, fn) -> float:
    """The shortest of ``repeat`` wall-clock runs of ``fn()``, in seconds (the least disturbed by a noisy machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def status_kb(pid: int | str, key: str) -> int:
    """A ``/proc/PID/status`` memory figure (``VmRSS``, ``VmHWM`` …) in kB; 0 if unreadable."""
    return (status_bytes(pid, key) or 0) // 1024
