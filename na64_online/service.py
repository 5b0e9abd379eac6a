"""Wiring of the layers: raw files or live spills → SpillProcessor → QA records (→ archive, alarms)."""

from __future__ import annotations

import os
from typing import Iterator

from .config import Config
from .daq.rawfile import RawFile
from .decoders.channelmap import ChannelMap
from .monitor.pipeline import SpillProcessor


class Replayer:
    """Replay raw files through exactly the per-spill code of the live service."""

    def __init__(self, config: Config, channel_map: ChannelMap, archive_path: str | os.PathLike | None = None):
        self.config = config
        self.channel_map = channel_map
        self.processor = SpillProcessor(config.monitor, channel_map)
        self.archive_path = archive_path

    def replay_file(self, path, progress: bool = False) -> Iterator[tuple[dict | None, str | None]]:
        """Yield (QA record dict, note) per spill; notes tell of truncation and the like."""
        raw = RawFile(path)
        segments = raw.spills()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=raw.size, unit="B", unit_scale=True, desc=str(path), leave=False)
        try:
            for segment in segments:
                record = self.processor.process(segment.words, segment.index, complete=segment.complete)
                if bar is not None:
                    bar.update(record.bytes_decoded)
                yield record.to_dict(), None
        finally:
            if bar is not None:
                bar.close()
        stats = raw.stats
        if not segments:
            yield None, "no spill found (every event rejected or of a run-level type)"
        if stats.truncated:
            yield None, (
                f"truncated: the file ends inside an event ({stats.trailing_bytes} stray trailing bytes); "
                "decoded up to the last whole event"
            )
        if stats.late_events:
            yield None, f"{stats.late_events} late events after their spill's END_OF_BURST were not merged"

    def close(self) -> None:
        pass
