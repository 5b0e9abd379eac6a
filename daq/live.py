"""What only the live path knows about a spill (spec §12, last paragraph)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LiveExtras:
    """Per-spill facts of the live ingest, handed to the per-spill processing.

    ``dropped_event_numbers``: events that readout nodes sent but the service
    dropped because decoding fell behind; they are ``dropped_events``, not
    ``lost_events`` (which are events no node sent). ``interrupted``: the spill
    was cut short because the service stopped — archived, but not judged.
    ``bad_messages``: bad envelopes, damaged payloads, duplicates, reordered
    messages and sequence jumps, by LDC.
    """

    lost_messages: dict[int, int] = field(default_factory=dict)
    incomplete_events: int = 0
    late_events: int = 0
    header_mismatch: int = 0  # sub-events left out by the builder: (run, burst) disagreeing with their spill
    dropped_events: int = 0
    missing_ldcs: tuple[int, ...] = ()
    dropped_event_numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    interrupted: bool = False
    #: bad messages reported with this spill: LDC label -> kind -> count (daq.subscriber.BAD_MESSAGE_KINDS)
    bad_messages: dict[str, dict[str, int]] = field(default_factory=dict)
    #: (LDC label, size) of sequence jumps reported with this spill
    sequence_jumps: tuple[tuple[str, int], ...] = ()
