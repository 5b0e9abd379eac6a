"""The NA64 raw format, described once (docs/raw-format.md §2–§9).

Everything that reads or writes raw bytes derives from this module: the numba
decoder uses the module-level integer constants (numba freezes globals), the
simulator's encoder packs words with :meth:`BitLayout.pack`, and
``na64-online format`` prints these tables as the format documentation.

Words are 32-bit little-endian unsigned; bit 0 is the least significant bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

WORD = np.dtype("<u4")
WORD_BYTES = 4
WORD_MASK = 0xFFFFFFFF
BYTE_BITS = 8
BYTE_MASK = 0xFF


@dataclass(frozen=True)
class BitField:
    name: str
    shift: int
    width: int
    doc: str = ""

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    def get(self, word: int) -> int:
        return (int(word) >> self.shift) & self.mask


@dataclass(frozen=True)
class BitLayout:
    """Named bit fields of one 32-bit word."""

    title: str
    fields: tuple[BitField, ...]

    def __getitem__(self, name: str) -> BitField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def pack(self, **values: int) -> int:
        """Pack field values into one word; unknown names or overflowing values raise."""
        word = 0
        for name, value in values.items():
            f = self[name]
            if not 0 <= int(value) <= f.mask:
                raise ValueError(f"{self.title}: {name}={value} does not fit {f.width} bits")
            word |= int(value) << f.shift
        return word

    def unpack(self, word: int) -> dict[str, int]:
        return {f.name: f.get(word) for f in self.fields}

    def markdown(self) -> str:
        rows = [f"| {f.shift}–{f.shift + f.width - 1} | {f.name} | {f.doc} |" for f in self.fields]
        return "\n".join([f"**{self.title}**", "", "| bits | field | meaning |", "|---|---|---|", *rows])


@dataclass(frozen=True)
class WordLayout:
    """Word-indexed header: (word index, name, meaning)."""

    title: str
    words: tuple[tuple[int, str, str], ...]

    def index(self, name: str) -> int:
        for i, n, _ in self.words:
            if n == name:
                return i
        raise KeyError(name)

    def markdown(self) -> str:
        rows = [f"| {i} | {n} | {d} |" for i, n, d in self.words]
        return "\n".join([f"**{self.title}**", "", "| word | field | meaning |", "|---|---|---|", *rows])


# ---------------------------------------------------------------------------
# §2 DATE event header
DATE_HEADER = WordLayout(
    "DATE event header (17 words)",
    (
        (0, "size", "event size in bytes, header included"),
        (1, "magic", "0xDA1E5AFE"),
        (2, "header_size", "header length in bytes (>= 68, multiple of 4)"),
        (3, "version", "(major << 16) | minor, written 0x0003000E"),
        (4, "type", "event type, low 16 bits"),
        (5, "run", "run number"),
        (6, "event_in_run", "event number in run"),
        (7, "burst_event", "bits 20-31 burst, bits 0-19 event number in burst"),
        (8, "trigger_pattern_0", "trigger mask = (w8 >> 1) | (w9 << 31)"),
        (9, "trigger_pattern_1", ""),
        (10, "detector_pattern", "0"),
        (11, "attributes_0", ""),
        (12, "attributes_1", ""),
        (13, "attributes_2", "bit 4: super event"),
        (14, "ldc", "LDC id"),
        (15, "gdc", "GDC id"),
        (16, "time", "Unix seconds"),
    ),
)
DATE_HEADER_WORDS = 17
DATE_HEADER_BYTES = 68
DATE_MAGIC = 0xDA1E5AFE
DATE_MAGIC_SWAPPED = 0xFE5A1EDA
DATE_VERSION = 0x0003000E
DATE_MIN_VERSION = 0x00010000  # below: pre-3.6 "old" layout

H_SIZE = DATE_HEADER.index("size")
H_MAGIC = DATE_HEADER.index("magic")
H_HEADER_SIZE = DATE_HEADER.index("header_size")
H_VERSION = DATE_HEADER.index("version")
H_TYPE = DATE_HEADER.index("type")
H_RUN = DATE_HEADER.index("run")
H_EVENT_IN_RUN = DATE_HEADER.index("event_in_run")
H_BURST_EVENT = DATE_HEADER.index("burst_event")
H_TRIGGER_0 = DATE_HEADER.index("trigger_pattern_0")
H_TRIGGER_1 = DATE_HEADER.index("trigger_pattern_1")
H_ATTRIBUTES_2 = DATE_HEADER.index("attributes_2")
H_LDC = DATE_HEADER.index("ldc")
H_GDC = DATE_HEADER.index("gdc")
H_TIME = DATE_HEADER.index("time")

TYPE_MASK = 0xFFFF
SUPER_EVENT_BIT = 1 << 4  # in attributes word 2

BURST_EVENT = BitLayout(
    "DATE event id 1",
    (
        BitField("event", 0, 20, "event number in burst"),
        BitField("burst", 20, 12, "burst (spill) number"),
    ),
)
BURST_SHIFT, BURST_MASK = BURST_EVENT["burst"].shift, BURST_EVENT["burst"].mask
EVENT_IN_BURST_MASK = BURST_EVENT["event"].mask
#: Where an event sorts in its spill (the event builder's keys): START_OF_BURST 0, PHYSICS/CALIBRATION
#: event number in burst + 1, END_OF_BURST after every event number; events of no spill (START_OF_RUN,
#: END_OF_RUN, others) -1.
SOB_KEY = 0
EOB_KEY = EVENT_IN_BURST_MASK + 2
NO_SPILL_KEY = -1

START_OF_RUN = 1
END_OF_RUN = 2
START_OF_BURST = 5
END_OF_BURST = 6
PHYSICS_EVENT = 7
CALIBRATION_EVENT = 8
EVENT_TYPE_NAMES = {
    START_OF_RUN: "START_OF_RUN",
    END_OF_RUN: "END_OF_RUN",
    START_OF_BURST: "START_OF_BURST",
    END_OF_BURST: "END_OF_BURST",
    PHYSICS_EVENT: "PHYSICS_EVENT",
    CALIBRATION_EVENT: "CALIBRATION_EVENT",
}

# Trigger mask from header words 8 and 9: mask = (w8 >> 1) | (w9 << 31), 32 bits
TRIGGER_LOW_SHIFT = 1
TRIGGER_HIGH_SHIFT = 31
#: event types whose super-event bit tells what the stream is made of
KNOWN_EVENT_TYPES = (START_OF_RUN, END_OF_RUN, START_OF_BURST, END_OF_BURST, PHYSICS_EVENT, CALIBRATION_EVENT)

# Trigger mask bits [convention]
TRIGGER_PHYSICS = 1 << 0
TRIGGER_BEAM = 1 << 1
TRIGGER_RANDOM = 1 << 2
TRIGGER_CALIBRATION = 1 << 3


def trigger_words(mask: int) -> tuple[int, int]:
    """Inverse of ``mask = (w8 >> 1) | (w9 << 31)``: the two trigger-pattern words."""
    return (mask << TRIGGER_LOW_SHIFT) & WORD_MASK, (mask >> TRIGGER_HIGH_SHIFT) & 1


# ---------------------------------------------------------------------------
# §3 Equipment header
EQUIPMENT_HEADER = WordLayout(
    "Equipment header (7 words)",
    (
        (0, "size", "equipment size in bytes, header included"),
        (1, "type", "64 = S-Link"),
        (2, "id", "S-Link source id (srcID)"),
        (3, "attributes_0", "0"),
        (4, "attributes_1", "0"),
        (5, "attributes_2", "0"),
        (6, "element_size", "4"),
    ),
)
EQUIPMENT_HEADER_WORDS = 7
EQ_SIZE = EQUIPMENT_HEADER.index("size")
EQ_ID = EQUIPMENT_HEADER.index("id")
EQUIPMENT_TYPE_SLINK = 64
EQUIPMENT_ELEMENT_SIZE = 4

# ---------------------------------------------------------------------------
# §4 S-Link header
SLINK_HEADER_WORDS = 3
SLINK_WORD0 = BitLayout(
    "S-Link word 0",
    (
        BitField("size", 0, 16, "block size in words, header included"),
        BitField("src_id", 16, 10, "srcID (< 1024)"),
        BitField("type", 26, 5, "DATE type & 0x1F"),
        BitField("error", 31, 1, "error flag"),
    ),
)
SLINK_WORD1 = BitLayout(
    "S-Link word 1",
    (
        BitField("event", 0, 20, "event number in burst"),
        BitField("spill", 20, 11, "spill number & 0x7FF"),
        BitField("tcs_mode", 31, 1, "TCS receiver mode (0)"),
    ),
)
SLINK_WORD2 = BitLayout(
    "S-Link word 2",
    (
        BitField("status", 0, 8, ""),
        BitField("tcs_error", 8, 8, "bit 3 set = OK"),
        BitField("error_words", 16, 8, "error-word count"),
        BitField("format", 24, 8, "0"),
    ),
)
SLINK_WORD2_VALUE = 0x00000800
SLINK_SIZE_MASK = SLINK_WORD0["size"].mask
SLINK_SRC_SHIFT, SLINK_SRC_MASK = SLINK_WORD0["src_id"].shift, SLINK_WORD0["src_id"].mask
SLINK_EVENT_MASK = SLINK_WORD1["event"].mask
SLINK_SPILL_SHIFT, SLINK_SPILL_MASK = SLINK_WORD1["spill"].shift, SLINK_WORD1["spill"].mask

# ---------------------------------------------------------------------------
# §5 MSADC data format 3
ADC_HEADER = BitLayout(
    "MSADC ADC block header",
    (
        BitField("event", 0, 12, "event number in burst & 0xFFF"),
        BitField("size", 12, 12, "block size in words, header included"),
        BitField("error", 24, 1, "error bit"),
        BitField("adc_id", 25, 2, "ADC id 0-3"),
        BitField("port", 27, 3, "port 0-7"),
        BitField("key", 30, 2, "3 (0 with size 1: module-missing placeholder)"),
    ),
)
ADC_KEY = 3
ADC_KEY_PLACEHOLDER = 0
ADC_EVENT_MASK = ADC_HEADER["event"].mask
ADC_SIZE_SHIFT, ADC_SIZE_MASK = ADC_HEADER["size"].shift, ADC_HEADER["size"].mask
ADC_ID_SHIFT, ADC_ID_MASK = ADC_HEADER["adc_id"].shift, ADC_HEADER["adc_id"].mask
ADC_PORT_SHIFT, ADC_PORT_MASK = ADC_HEADER["port"].shift, ADC_HEADER["port"].mask
ADC_KEY_SHIFT, ADC_KEY_MASK = ADC_HEADER["key"].shift, ADC_HEADER["key"].mask
#: a module-missing placeholder's detail: its adc_id and port bits together
ADC_MODULE_SHIFT = ADC_ID_SHIFT
ADC_MODULE_MASK = (1 << (ADC_HEADER["adc_id"].width + ADC_HEADER["port"].width)) - 1

CHANNEL_HEADER = BitLayout(
    "MSADC channel header",
    (
        BitField("sum", 0, 16, "sum of samples mod 2^16 (not relied on)"),
        BitField("samples", 16, 9, "number of samples n"),
        BitField("zero", 25, 1, "0"),
        BitField("chan_id", 26, 4, "channel id 0-15"),
        BitField("id", 30, 2, "01"),
    ),
)
CHANNEL_ID = 1
CH_SAMPLES_SHIFT, CH_SAMPLES_MASK = CHANNEL_HEADER["samples"].shift, CHANNEL_HEADER["samples"].mask
CH_CHAN_SHIFT, CH_CHAN_MASK = CHANNEL_HEADER["chan_id"].shift, CHANNEL_HEADER["chan_id"].mask
CH_ID_SHIFT, CH_ID_MASK = CHANNEL_HEADER["id"].shift, CHANNEL_HEADER["id"].mask

DATA_WORD = BitLayout(
    "MSADC data word",
    (
        BitField("sample_even", 0, 12, "sample 2i"),
        BitField("sample_odd", 12, 12, "sample 2i+1 (padding if n odd, last word)"),
        BitField("zero", 24, 6, "0"),
        BitField("marker", 30, 2, "01 first data word, 10 the following"),
    ),
)
DATA_MARKER_FIRST = 1
DATA_MARKER_NEXT = 2
SAMPLE_MASK = DATA_WORD["sample_even"].mask
SAMPLE_ODD_SHIFT = DATA_WORD["sample_odd"].shift
DATA_MARKER_SHIFT, DATA_MARKER_MASK = DATA_WORD["marker"].shift, DATA_WORD["marker"].mask
SAMPLES_PER_WORD = 2
MAX_SAMPLES = CH_SAMPLES_MASK  # n is a 9-bit field
ADC_SATURATION = 4095
CHANNELS_PER_ADC = 16
CHANNELS_PER_PORT = 64
PORTS = 8
MAX_SRC_ID = 1024
SAMPLE_PERIOD_NS = 12.86

# ---------------------------------------------------------------------------
# §6/§7 [convention] scalers and trigger time
SRC_SCALERS = 700
SRC_TRIGGER_TIME = 701
SCALER_NAMES = ("beam", "s0", "triggers_raw", "triggers_accepted", "spill_duration_us")
N_SCALERS = len(SCALER_NAMES)

# ---------------------------------------------------------------------------
# §9 [convention] ZeroMQ envelope
ZMQ_TOPIC = b"na64.raw"
ENVELOPE_DTYPE = np.dtype(
    [
        ("magic", "S4"),
        ("version", "<u2"),
        ("flags", "<u2"),
        ("ldc", "<u4"),
        ("sequence", "<u8"),
        ("events", "<u4"),
    ]
)
ENVELOPE_MAGIC = b"N64Z"
ENVELOPE_VERSION = 1
assert ENVELOPE_DTYPE.itemsize == 24


def markdown() -> str:
    """The bit layouts as Markdown, generated from the definitions above."""
    parts: Iterable[BitLayout | WordLayout] = (
        DATE_HEADER,
        BURST_EVENT,
        EQUIPMENT_HEADER,
        SLINK_WORD0,
        SLINK_WORD1,
        SLINK_WORD2,
        ADC_HEADER,
        CHANNEL_HEADER,
        DATA_WORD,
    )
    return "\n\n".join(p.markdown() for p in parts) + "\n"
