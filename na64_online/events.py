"""One event as ``na64-online dump`` shows it: every channel with its samples, decoded and reconstructed
from the raw data (the dashboard's event display uses the same).

Two sources of raw events answer the dashboard's ``(run, spill, event)``: the files a replay read
(:class:`RawFileEvents`) and, in the live service, the candidates' raw events that the decoder workers
return with each spill's result (:class:`LiveCandidateEvents`, reading the spill snapshots). Both decode
with :func:`event_from_words`, the code of ``dump``."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Iterable

import numpy as np

from .errors import DaqError
from .daq.rawfile import RawFile
from .decoders.channelmap import ChannelMap


def dump_event(raw: RawFile, spill: int, event: int, run: int | None, config, channel_map: ChannelMap) -> dict | None:
    """The event's dict (``decoders.reconstruct.event_dict``), or None if ``raw`` does not hold it;
    :class:`DaqError` if it is in several runs and ``run`` is None."""
    rows = raw.find_event(spill, event, run)
    if len(rows) == 0:
        return None
    if len(rows) > 1 and len(set(rows.run.tolist())) > 1:
        raise DaqError(f"{raw.path}: event {event} of spill {spill} is in several runs; pass --run")
    return event_from_words(raw.words, rows.take(np.array([0])), config, channel_map)


def event_from_words(words: np.ndarray, rows, config, channel_map: ChannelMap) -> dict:
    """The event in ``rows`` of ``words`` (an ``EventIndex``: one built event, or the plain fragments of one
    trigger) decoded with every sample, reconstructed, as ``dump`` shows it."""
    from .decoders.decode import decode_events, fragment_starts, merge_fragments
    from .decoders.reconstruct import DetectorGeometry, event_dict, reconstruct

    decoded = decode_events(words, rows, channel_map, config.monitor.reconstruction,
                            with_samples=True, max_samples=511)
    decoded = merge_fragments(decoded, fragment_starts(rows))
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


class LiveCandidateEvents:
    """``(run, spill, event) -> dump dict`` for the live service: the raw events of the first candidates of
    each spill (``[monitor] candidate_events_per_spill``, returned by the decoder workers with their results
    and carried by the spill's snapshot), kept for the last ``spills`` spills — memory bounded by
    spills × candidates per spill × event size (a few kB)."""

    def __init__(self, config, channel_map: ChannelMap, spills: int) -> None:
        self.config, self.channel_map = config, channel_map
        self.spills = int(spills)
        self._kept: OrderedDict[tuple[int, int], dict[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()  # added by the service thread, read by the web's

    def add(self, snapshot) -> None:
        """Keep the candidates' raw events of a published spill snapshot (once per spill)."""
        if snapshot is None or snapshot.record.run is None:
            return
        key = (int(snapshot.record.run), int(snapshot.record.spill))
        with self._lock:
            self._kept[key] = dict(snapshot.candidate_events)
            self._kept.move_to_end(key)
            while len(self._kept) > self.spills:
                self._kept.popitem(last=False)

    def __call__(self, run: int, spill: int, event: int) -> dict:
        from .decoders.decode import index_events

        with self._lock:
            spill_events = self._kept.get((run, spill))
            raw = spill_events.get(event) if spill_events is not None else None
            per_spill = self.config.monitor.candidate_events_per_spill
        if raw is None:
            why = ("of another spill than the last {0}".format(self.spills) if spill_events is None
                   else f"beyond the first {per_spill} candidates of its spill")
            return {"error": f"this event's raw data are not kept by the live service (it keeps the first "
                             f"{per_spill} candidates of each of the last {self.spills} spills; this one is {why}); "
                             "na64-online dump on the raw file shows it"}
        words = np.frombuffer(raw, dtype="<u4")
        return event_from_words(words, index_events(words), self.config, self.channel_map)
