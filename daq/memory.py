"""The live service's memory budget in bytes (``[ingest] max_memory_mb``).

The service process's own footprint — interpreter, libraries, compiled
kernels, histograms, measured as its resident memory once warm, before any
message is taken — comes first; of the rest, 10 % is kept as headroom for
transient copies and allocator slack, and the remainder (the *buffers*) is
shared between the stages that hold data in flight:

* ``receive``: the SUB socket's receive queues (high-water mark derived from
  the message size seen, :class:`~.subscriber.Subscriber`);
* ``builder``: message payloads of unbuilt sub-events and built events not
  handed on, all open spills together (:class:`~.builder.EventBuilder`);
* ``tasks``: built events waiting for a worker or at a worker, kept for a
  retry (:class:`~.workers.WorkerPool`).

What does not fit is dropped and counted as before: messages beyond the
receive queue are dropped by ZeroMQ at the readout node and counted as
sequence gaps (``lost_messages``); a spill holding too much is built at once
(``memory_builds``, incomplete events counted); a task that does not fit
drops its PHYSICS/CALIBRATION events (``dropped_events``). Local worker
processes are outside the budget (each holds at most ``worker_capacity``
tasks); in-process worker threads decode inside it (within the headroom).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: shares of the buffers per stage
SHARES = {"receive": 0.4, "builder": 0.3, "tasks": 0.3}
#: fraction of the budget kept free for transient copies and allocator slack
HEADROOM = 0.10
#: buffers never get less than this (a budget below the footprint cannot be kept: then a warning)
MIN_BUFFER_BYTES = 8 << 20


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
MAX_HEAP_BLOCK_BYTES = 32 << 20


def retain_freed_memory(keep_bytes: int, block_bytes: int = MAX_HEAP_BLOCK_BYTES) -> bool:
    """glibc only: serve blocks up to ``block_bytes`` from the heap and keep up to ``keep_bytes`` of freed
    heap memory mapped (``mallopt`` ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``); False where not glibc.

    A decoder worker receives each task (up to ``chunk_bytes``, 32 MB) into a new buffer: by default glibc
    maps a block that large afresh, or gives freed memory back to the system, so that every page of every
    task is faulted in and zeroed again; with this the next task lands in the pages the last one freed."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    block = max(0, min(int(block_bytes), MAX_HEAP_BLOCK_BYTES))
    keep = max(0, min(int(keep_bytes), (1 << 31) - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, block)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))


def status_bytes(pid: int | str, key: str) -> int | None:
    """A memory figure of ``/proc/PID/status`` (``VmRSS``, ``VmHWM`` …) in bytes, None where unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process (``VmRSS``), None where unavailable."""
    return status_bytes(pid, "VmRSS")


def peak_resident_bytes(pid: int | str = "self") -> int | None:
    """Peak resident set size (``VmHWM``), None where unavailable."""
    return status_bytes(pid, "VmHWM")


@dataclass(frozen=True)
class MemoryBudget:
    """How ``max_memory_mb`` is spent: the footprint, headroom, and the buffers per stage (bytes)."""

    total_bytes: int
    footprint_bytes: int
    buffer_bytes: int
    receive_bytes: int
    builder_bytes: int
    task_bytes: int
    fits: bool  # False: the footprint alone leaves less than MIN_BUFFER_BYTES

    @classmethod
    def plan(cls, max_memory_mb: int, footprint_bytes: int | None = None) -> "MemoryBudget":
        """The budget for a process whose footprint is ``footprint_bytes`` (default: its RSS now)."""
        total = int(max_memory_mb) << 20
        if footprint_bytes is None:
            footprint_bytes = resident_bytes() or 0
        free = total - int(footprint_bytes) - int(total * HEADROOM)
        fits = free >= MIN_BUFFER_BYTES
        buffers = max(free, MIN_BUFFER_BYTES)
        return cls(total_bytes=total, footprint_bytes=int(footprint_bytes), buffer_bytes=buffers,
                   receive_bytes=int(buffers * SHARES["receive"]), builder_bytes=int(buffers * SHARES["builder"]),
                   task_bytes=int(buffers * SHARES["tasks"]), fits=fits)

    def describe(self) -> str:
        mb = 1 << 20
        return (f"memory budget {self.total_bytes / mb:.0f} MB: footprint {self.footprint_bytes / mb:.0f} MB, "
                f"buffers {self.buffer_bytes / mb:.0f} MB (receive {self.receive_bytes / mb:.0f}, "
                f"builder {self.builder_bytes / mb:.0f}, tasks {self.task_bytes / mb:.0f})")


