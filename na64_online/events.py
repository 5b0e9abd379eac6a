"""One event as ``na64-online dump`` shows it: every channel with its samples, decoded and reconstructed
from the raw data (the dashboard's event display uses the same)."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from .errors import DaqError
from .daq.rawfile import RawFile
from .decoders.channelmap import ChannelMap


def dump_event(raw: RawFile, spill: int, event: int, run: int | None, config, channel_map: ChannelMap) -> dict | None:
    """The event's dict (``decoders.reconstruct.event_dict``), or None if ``raw`` does not hold it;
    :class:`DaqError` if it is in several runs and ``run`` is None."""
    from .decoders.decode import decode_events
    from .decoders.reconstruct import DetectorGeometry, event_dict, reconstruct

    rows = raw.find_event(spill, event, run)
    if len(rows) == 0:
        return None
    if len(rows) > 1 and len(set(rows.run.tolist())) > 1:
        raise DaqError(f"{raw.path}: event {event} of spill {spill} is in several runs; pass --run")
    first = rows.take(np.array([0]))
    decoded = decode_events(raw.words, first, channel_map, config.monitor.reconstruction,
                            with_samples=True, max_samples=511)
    physics = reconstruct(decoded, DetectorGeometry.from_map(channel_map), config.monitor.cuts)
    return event_dict(decoded, physics, channel_map, 0)


class RawFileEvents:
    """``(run, spill, event) -> dump dict`` over raw files (a replay's): the dashboard's event display."""

    def __init__(self, config, channel_map: ChannelMap, paths: Iterable[str | os.PathLike] = ()) -> None:
        self.config, self.channel_map = config, channel_map
        self._paths: list[str | os.PathLike] = list(paths)
        self._opened: dict[int, RawFile] = {}  # opened and indexed at the first look-up (~100 bytes per event)

    def add(self, path: str | os.PathLike) -> None:
        self._paths.append(path)

    @property
    def _files(self) -> list[RawFile]:
        for i, path in enumerate(self._paths):
            if i not in self._opened:
                self._opened[i] = RawFile(path)
        return [self._opened[i] for i in range(len(self._paths))]

    def __call__(self, run: int, spill: int, event: int) -> dict | None:
        for raw in self._files:
            out = dump_event(raw, spill, event, run, self.config, self.channel_map)
            if out is not None:
                return out
        return None
