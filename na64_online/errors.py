"""The project's error hierarchy, and the numbered issue kinds the numba kernels report.

Every error about data or configuration is a :class:`DaqError` carrying, where
known, srcID, run, spill, event and byte offset::

    DaqError
    ├── FormatError (ValueError)      bytes that do not follow docs/raw-format.md
    │   ├── TruncatedError            a buffer or file ends inside an event
    │   ├── NotDateStreamError        not a DATE stream
    │   ├── EnvelopeError             a ZeroMQ message that breaks the §9 envelope
    │   └── ResultFormatError         a worker's result that breaks monitor/wire.py's format
    ├── ChannelMapError (ValueError)  a channel map / calibration that cannot be used
    ├── ConfigError (ValueError)      a wrong configuration file, variable or option
    └── ArchiveError                  an archive file that cannot be used

Kernels cannot raise Python exceptions with context, so they log issues as
small integers (:class:`Issue`) with srcID, event index and byte offset; the
Python side turns them into counts, and into exceptions where a caller asked
for one event that cannot be read.
"""

from __future__ import annotations

from enum import IntEnum


class DaqError(Exception):
    """Base of every error this project raises about data or configuration.

    Carries, where known, the srcID, run, spill, event number in burst and
    byte offset in the buffer or file being read.
    """

    def __init__(
        self,
        message: str,
        *,
        src_id: int | None = None,
        run: int | None = None,
        spill: int | None = None,
        event: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.reason = message
        self.src_id = src_id
        self.run = run
        self.spill = spill
        self.event = event
        self.offset = offset
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = [
            f"{name} {value}"
            for name, value in (
                ("srcID", self.src_id),
                ("run", self.run),
                ("spill", self.spill),
                ("event", self.event),
                ("byte offset", self.offset),
            )
            if value is not None
        ]
        return f"{self.reason} ({', '.join(where)})" if where else self.reason


class FormatError(DaqError, ValueError):
    """Bytes that do not follow docs/raw-format.md."""


class TruncatedError(FormatError):
    """A buffer or file ends inside an event."""


class NotDateStreamError(FormatError):
    """The input does not start with a DATE event."""


class ChannelMapError(DaqError, ValueError):
    """A channel-map / calibration file that cannot be used."""


class ConfigError(DaqError, ValueError):
    """A configuration file, environment variable or option that is wrong."""


class EnvelopeError(FormatError):
    """A ZeroMQ message that does not follow docs/raw-format.md §9."""


class ResultFormatError(FormatError):
    """A worker's result that does not follow monitor/wire.py's format; it is refused, never used."""


class ArchiveError(DaqError):
    """The archive file cannot be used (newer schema, read-only misuse, corrupt blob)."""


class ArchiveUnavailable(ArchiveError):
    """The archive's database does not answer in time, or refuses the connection: try again later."""


FIRST_NOTICE = 64  # issue values from here on are notices, not decode errors


class Issue(IntEnum):
    """What a kernel can report. Values below ``FIRST_NOTICE`` are decode errors (spec §5)."""

    NONE = 0
    # chip data (MSADC data format 3)
    ADC_BAD_KEY = 1
    ADC_BAD_SIZE = 2
    ADC_EVENT_MISMATCH = 3
    CHANNEL_BAD_ID = 4
    CHANNEL_BAD_SAMPLES = 5
    DATA_BAD_MARKER = 6
    # S-Link / equipment
    SLINK_EVENT_MISMATCH = 7
    SLINK_SIZE_MISMATCH = 8
    SLINK_SRC_MISMATCH = 9
    SLINK_SPILL_MISMATCH = 10
    EQUIPMENT_BAD_SIZE = 11
    # whole events (rejected)
    EVENT_TRUNCATED = 12
    EVENT_BYTE_SWAPPED = 13
    EVENT_OLD_LAYOUT = 14
    EVENT_BAD_HEADER_SIZE = 15
    EVENT_BAD_MAGIC = 16
    SUBEVENT_MISMATCH = 17
    EVENT_BAD_SIZE = 18  # rejected: size past the end of the buffer while a later event starts
    HEADER_MISMATCH = 19  # rejected: run or burst disagrees with its neighbours inside a spill
    # notices (>= FIRST_NOTICE): counted, not decode errors
    MODULE_MISSING = 64
    UNKNOWN_CHANNEL = 65
    UNKNOWN_SRC_ID = 66
    SCALERS_SHORT = 67
    DUPLICATE_EVENT = 68  # an event number seen again in the same spill: counted, decoded once

    @property
    def is_error(self) -> bool:
        return 0 < self.value < FIRST_NOTICE

    @property
    def rejects_event(self) -> bool:
        return Issue.EVENT_TRUNCATED <= self.value <= Issue.EVENT_BAD_MAGIC or self in (
            Issue.EVENT_BAD_SIZE, Issue.HEADER_MISMATCH, Issue.DUPLICATE_EVENT)

    @property
    def label(self) -> str:
        return self.name.lower()


ISSUE_DESCRIPTIONS = {
    Issue.ADC_BAD_KEY: "ADC block header key is not 3 (and not a module-missing placeholder)",
    Issue.ADC_BAD_SIZE: "ADC block size is 0 or runs past the end of the chip data",
    Issue.ADC_EVENT_MISMATCH: "ADC block event number differs from the S-Link one (& 0xFFF)",
    Issue.CHANNEL_BAD_ID: "MSADC channel header id is not 01",
    Issue.CHANNEL_BAD_SAMPLES: "MSADC sample count is 0 or runs past the end of the ADC block",
    Issue.DATA_BAD_MARKER: "MSADC data word has the wrong marker",
    Issue.SLINK_EVENT_MISMATCH: "S-Link event number differs from the DATE event number in burst",
    Issue.SLINK_SIZE_MISMATCH: "S-Link block size does not fill the equipment",
    Issue.SLINK_SRC_MISMATCH: "S-Link srcID differs from the equipment id",
    Issue.SLINK_SPILL_MISMATCH: "S-Link spill number differs from the DATE burst (& 0x7FF)",
    Issue.EQUIPMENT_BAD_SIZE: "equipment size runs past the end of the event (or is below its header)",
    Issue.EVENT_TRUNCATED: "event size runs past the end of the buffer (truncated)",
    Issue.EVENT_BYTE_SWAPPED: "byte-swapped DATE event (magic 0xFE5A1EDA)",
    Issue.EVENT_OLD_LAYOUT: "pre-3.6 DATE header layout (version < 0x10000) is not supported",
    Issue.EVENT_BAD_HEADER_SIZE: "DATE header or event size is not a multiple of 4, below 68 or beyond the event",
    Issue.EVENT_BAD_MAGIC: "no DATE magic where an event should start; skipped to the next one",
    Issue.SUBEVENT_MISMATCH: "sub-event header disagrees with its super event",
    Issue.EVENT_BAD_SIZE: "event size runs past the end of the buffer but a later event starts: the size is damaged;"
                          " skipped to the next event",
    Issue.HEADER_MISMATCH: "event run or burst number disagrees with its neighbours inside a spill (header damage)",
    Issue.DUPLICATE_EVENT: "event number already seen in this spill: counted, decoded once",
    Issue.MODULE_MISSING: "module-missing placeholder",
    Issue.UNKNOWN_CHANNEL: "(srcID, port, channel) not in the channel map",
    Issue.UNKNOWN_SRC_ID: "equipment srcID not in the channel map",
    Issue.SCALERS_SHORT: "END_OF_BURST scaler block has fewer counters than expected",
}
