"""Tiny simulated spills that load (or, on a cold numba cache, compile) the kernels before real data.

The live path (``daq/``) knows nothing of the simulator; the service and the
``worker`` command hand these in: :func:`warm_up_processor` to
:func:`~na64_online.daq.workers.run_worker`, :func:`ldc_sample` to
:class:`~na64_online.daq.ingest.IngestService` (``warm_up_events``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..decoders import layout
from .simulator import LDC_IDS, ReadoutSimulator, SimulationConfig


def warm_up_processor(processor: Any) -> None:
    """Decode a tiny simulated spill once with ``processor`` (its channel map, if it has one); with a worker's
    per-task step (``task_decoder``), once more as a worker decodes a task: where its sub-events were received
    (the planned-rows kernels)."""
    from ..daq.builder import BuiltChunk, plan_headers

    sim = ReadoutSimulator(SimulationConfig(events_per_spill=4, run_events=False),
                           getattr(processor, "channel_map", None))
    for spill in sim.spills():
        words = np.frombuffer(bytearray(spill.raw()), dtype=layout.WORD)  # writable, as tasks are
        processor.accumulate(words)
        if hasattr(processor, "task_decoder"):
            chunk = BuiltChunk.from_words(0, 0, 0, words)  # run, spill, chunk: only the plan is used
            processor.task_decoder()(*plan_headers(chunk.payloads, chunk.subs, chunk.groups, chunk.gdc))


def ldc_sample(events_per_spill: int = 8) -> dict[int, list[bytes]]:
    """One simulated spill as the readout nodes publish it: LDC id -> its plain events (§9)."""
    sim = ReadoutSimulator(SimulationConfig(spills=1, events_per_spill=events_per_spill, run_events=False))
    spill = next(iter(sim.spills()))
    return {ldc: list(spill.ldc_events(ldc)) for ldc in LDC_IDS}
