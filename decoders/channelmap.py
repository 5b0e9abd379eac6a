"""Channel map and calibration (docs/raw-format.md §8).

CSV columns ``src_id,port,channel,detector,module,x,y,gain_gev``. Each row is
one MSADC channel, addressed by (srcID, port, channel) with channel =
adc_id × 16 + chan_id. Rows are numbered in file order as *slots*: the decoder
writes channel ``slot`` of every event, and ``lookup`` turns an address into a
slot (−1 when unmapped).

The ``detector`` column names a detector of the map's :class:`~.detectors.DetectorTable`
(``decoders/detectors.toml`` unless another is given); a row's module, x and y must lie
within that detector's geometry. ``detector`` codes are positions in the table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import layout
from .detectors import DetectorTable
from ..errors import ChannelMapError

COLUMNS = ("src_id", "port", "channel", "detector", "module", "x", "y", "gain_gev")
#: detector names and codes of the packaged table (decoders/detectors.toml); a map's own table is
#: ``ChannelMap.detectors``
DETECTORS = DetectorTable.default().names
DETECTOR_CODE = {name: code for code, name in enumerate(DETECTORS)}
ECAL, HCAL, SRD, VETO, BEAM_COUNTER = (DETECTOR_CODE[n] for n in ("ECAL", "HCAL", "SRD", "VETO", "S"))
DEFAULT_MAP = "default-channel-map.csv"

# What the decoder does with an equipment, by srcID.
SRC_UNKNOWN, SRC_MSADC, SRC_SCALERS, SRC_TRIGGER_TIME = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class ChannelMap:
    """Immutable channel table; arrays are indexed by slot."""

    src_id: np.ndarray
    port: np.ndarray
    channel: np.ndarray
    detector: np.ndarray  # int8 codes into ``detectors``
    module: np.ndarray
    x: np.ndarray
    y: np.ndarray
    gain_gev: np.ndarray
    source: str = "<memory>"
    detectors: DetectorTable = field(default_factory=DetectorTable.default)
    lookup: np.ndarray = field(init=False, repr=False)
    src_kind: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lookup = np.full(layout.MAX_SRC_ID * layout.PORTS * layout.CHANNELS_PER_PORT, -1, dtype=np.int32)
        lookup[self.address(self.src_id, self.port, self.channel)] = np.arange(len(self), dtype=np.int32)
        src_kind = np.zeros(layout.MAX_SRC_ID, dtype=np.int8)
        src_kind[self.src_id] = SRC_MSADC  # (not np.unique: it imports numpy.ma, ≈ 10 % of numpy's import)
        src_kind[layout.SRC_SCALERS] = SRC_SCALERS
        src_kind[layout.SRC_TRIGGER_TIME] = SRC_TRIGGER_TIME
        for name, value in (("lookup", lookup), ("src_kind", src_kind)):
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.src_id)

    @staticmethod
    def address(src_id, port, channel):
        """Flat index of (srcID, port, channel) into :attr:`lookup`."""
        src_id, port, channel = (np.asarray(v, dtype=np.int64) for v in (src_id, port, channel))
        return (src_id * layout.PORTS + port) * layout.CHANNELS_PER_PORT + channel

    def slots(self, detector: int | str, module: int | None = None) -> np.ndarray:
        """Slots of one detector (code or name; and module), in map order."""
        if isinstance(detector, str):
            detector = self.detectors.code(detector)
        mask = self.detector == detector
        if module is not None:
            mask &= self.module == module
        return np.flatnonzero(mask)

    def describe(self, slot: int) -> dict:
        return {
            "detector": self.detectors[int(self.detector[slot])].name,
            "module": int(self.module[slot]),
            "x": int(self.x[slot]),
            "y": int(self.y[slot]),
            "src_id": int(self.src_id[slot]),
            "port": int(self.port[slot]),
            "channel": int(self.channel[slot]),
        }

    def present_detectors(self) -> tuple[str, ...]:
        """Names of the table's detectors that have channels in this map, in table order."""
        codes = set(self.detector.tolist())
        return tuple(d.name for d in self.detectors if d.code in codes)

    def detector_subsystems(self) -> dict[str, str]:
        """Detector name -> quality subsystem, for the detectors with channels in this map."""
        return {name: self.detectors.by_name(name).subsystem for name in self.present_detectors()}

    @classmethod
    def default(cls, detectors: DetectorTable | None = None) -> "ChannelMap":
        text = resources.files(__package__).joinpath(DEFAULT_MAP).read_text()
        return cls.from_csv_text(text, source=f"<package default {DEFAULT_MAP}>", detectors=detectors)

    @classmethod
    def load(cls, path: str | Path, detectors: DetectorTable | None = None) -> "ChannelMap":
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ChannelMapError(f"cannot read channel map {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ChannelMapError(f"channel map {path} is not a text file") from None
        return cls.from_csv_text(text, source=str(path), detectors=detectors)

    def to_csv_text(self) -> str:
        """The map as CSV (the columns :meth:`from_csv_text` reads; gains round-trip exactly)."""
        lines = [",".join(COLUMNS)]
        for row in zip(self.src_id.tolist(), self.port.tolist(), self.channel.tolist(), self.detector.tolist(),
                       self.module.tolist(), self.x.tolist(), self.y.tolist(), self.gain_gev.tolist()):
            src, port, channel, det, module, x, y, gain = row
            lines.append(f"{src},{port},{channel},{self.detectors[det].name},{module},{x},{y},{gain!r}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_csv_text(cls, text: str, source: str = "<memory>", detectors: DetectorTable | None = None
                      ) -> "ChannelMap":
        table = detectors if detectors is not None else DetectorTable.default()
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise ChannelMapError(f"{source}: first line must be {','.join(COLUMNS)}, got {header!r}")
        rows: list[tuple] = []
        seen: dict[tuple[int, int, int], int] = {}
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(COLUMNS):
                raise ChannelMapError(f"{source}:{line_no}: expected {len(COLUMNS)} columns, got {len(row)}")
            try:
                src_id, port, channel = (int(v) for v in row[:3])
                module, x, y = (int(v) for v in row[4:7])
                gain = float(row[7])
            except ValueError as exc:
                raise ChannelMapError(f"{source}:{line_no}: {exc}") from None
            detector = row[3].strip()
            problems = []
            if not 0 <= src_id < layout.MAX_SRC_ID or src_id in (layout.SRC_SCALERS, layout.SRC_TRIGGER_TIME):
                problems.append(f"src_id {src_id} is not an MSADC srcID below {layout.MAX_SRC_ID}")
            if not 0 <= port < layout.PORTS:
                problems.append(f"port {port} not in 0-{layout.PORTS - 1}")
            if not 0 <= channel < layout.CHANNELS_PER_PORT:
                problems.append(f"channel {channel} not in 0-{layout.CHANNELS_PER_PORT - 1}")
            if detector not in table:
                problems.append(f"detector {detector!r} not one of {', '.join(table.names)} ({table.source})")
            else:
                d = table.by_name(detector)
                if module >= d.modules or x >= d.nx or y >= d.ny:
                    problems.append(f"module {module}, x {x}, y {y} outside {detector}'s geometry "
                                    f"({d.modules} modules of {d.nx} x {d.ny})")
            if not np.isfinite(gain) or gain < 0:
                problems.append(f"gain_gev {gain} must be finite and >= 0")
            if min(module, x, y) < 0:
                problems.append("module, x and y must be >= 0")
            key = (src_id, port, channel)
            if key in seen:
                problems.append(f"(src_id, port, channel) {key} already mapped on line {seen[key]}")
            if problems:
                raise ChannelMapError(f"{source}:{line_no}: {'; '.join(problems)}")
            seen[key] = line_no
            rows.append((src_id, port, channel, table.code(detector), module, x, y, gain))
        if not rows:
            raise ChannelMapError(f"{source}: no channels")
        columns = list(zip(*rows))
        dtypes = (np.int16, np.int8, np.int8, np.int8, np.int16, np.int16, np.int16, np.float64)
        arrays = [np.array(col, dtype=dt) for col, dt in zip(columns, dtypes)]
        for a in arrays:
            a.flags.writeable = False
        return cls(*arrays, source=source, detectors=table)
