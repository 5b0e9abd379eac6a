"""Measurements shared by the benchmarks (run as ``python bench/NAME.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a service started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (``/proc/*/stat``: children of any of its threads)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def status_kb(pid: int | str, key: str) -> int:
    """A ``/proc/PID/status`` memory figure (``VmRSS``, ``VmHWM`` …) in kB; 0 if unreadable."""
    return (status_bytes(pid, key) or 0) // 1024
