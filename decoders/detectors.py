"""The detector table: which detectors exist, what the selection does with each, their geometry.

Data, not code: ``decoders/detectors.toml`` (packaged) or a file of the same form
(``detectors = "PATH"`` in the configuration). Each ``[[detector]]`` names what the
channel map's ``detector`` column says, its *role* in the spec §11 selection, the
quality *subsystem* it belongs to, its geometry (``modules`` of ``nx`` × ``ny``
cells) and how the dashboard draws it. A detector's code in a
:class:`~.channelmap.ChannelMap` is its position in the table.

The table drives the channel map's validation, the reconstruction's sums (by
role), the per-detector values of the QA record, the quality subsystems and
their channel checks, the metrics' ``detector`` labels and the dashboard's
occupancy maps. Adding a detector is a table entry plus its channel-map rows.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

DEFAULT_TABLE = "detectors.toml"

#: roles the reconstruction knows (decoders/reconstruct.py); "monitor": read out and monitored only
ROLES = ("ecal", "hcal", "electron_tag", "veto", "wcal", "beam_counter", "monitor")
#: roles a table may give to one detector at most (the selection sums them)
UNIQUE_ROLES = ("ecal", "hcal", "electron_tag", "veto", "wcal")
LAYOUTS = ("modules", "side_by_side", "none")
#: quality subsystems every spill has, whatever the table (beam intensity and the DAQ are always judged)
BASE_SUBSYSTEMS = ("beam", "ecal", "hcal", "srd", "veto", "daq")
_KEYS = {"name", "title", "role", "subsystem", "modules", "nx", "ny", "module_names", "layout"}
_MAX_DETECTORS = 127  # codes are int8


@dataclass(frozen=True)
class Detector:
    """One row of the table."""

    code: int
    name: str
    title: str
    role: str
    subsystem: str
    modules: int
    nx: int
    ny: int
    module_names: tuple[str, ...]
    layout: str

    @property
    def cells(self) -> int:
        """Cells per module (nx × ny)."""
        return self.nx * self.ny

    def module_name(self, module: int) -> str:
        return self.module_names[module] if module < len(self.module_names) else f"{self.name} module {module}"

    def to_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "title": self.title, "role": self.role,
                "subsystem": self.subsystem, "modules": self.modules, "nx": self.nx, "ny": self.ny,
                "module_names": [self.module_name(m) for m in range(self.modules)], "layout": self.layout}


class DetectorTable:
    """The detectors in table order (code = position); immutable."""

    def __init__(self, detectors: tuple[Detector, ...], source: str = "<memory>") -> None:
        self.detectors = tuple(detectors)
        self.source = source
        self._by_name = {d.name: d for d in self.detectors}

    def __iter__(self) -> Iterator[Detector]:
        return iter(self.detectors)

    def __len__(self) -> int:
        return len(self.detectors)

    def __getitem__(self, code: int) -> Detector:
        return self.detectors[code]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DetectorTable) and self.detectors == other.detectors

    def __hash__(self) -> int:
        return hash(self.detectors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detectors)

    def by_name(self, name: str) -> Detector:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no detector {name!r} in {self.source} (known: {', '.join(self.names)})") from None

    def by_role(self, role: str) -> Detector | None:
        """The detector of a unique role, or None if the table has none."""
        for d in self.detectors:
            if d.role == role:
                return d
        return None

    def code(self, name: str) -> int:
        return self.by_name(name).code

    def subsystems(self, present: set[str] | None = None) -> tuple[str, ...]:
        """Quality subsystems: the base ones, then those of the detectors in ``present`` (all if None)."""
        out = list(BASE_SUBSYSTEMS)
        for d in self.detectors:
            if (present is None or d.name in present) and d.subsystem not in out:
                out.append(d.subsystem)
        return tuple(out)

    def to_toml_text(self) -> str:
        """The table as TOML that :meth:`from_toml_text` reads back (the workers' set-up sends it)."""
        lines = []
        for d in self.detectors:
            lines += ["[[detector]]", f'name = "{d.name}"', f'title = "{d.title}"', f'role = "{d.role}"',
                      f'subsystem = "{d.subsystem}"', f"modules = {d.modules}", f"nx = {d.nx}", f"ny = {d.ny}"]
            if d.module_names:
                lines.append("module_names = [" + ", ".join(f'"{n}"' for n in d.module_names) + "]")
            lines += [f'layout = "{d.layout}"', ""]
        return "\n".join(lines)

    # ---------------------------------------------------------------- loading
    @classmethod
    def default(cls) -> "DetectorTable":
        return _default_table()

    @classmethod
    def load(cls, path: str | Path) -> "DetectorTable":
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read detector table {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"detector table {path} is not a text file") from None
        return cls.from_toml_text(text, source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<memory>") -> "DetectorTable":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"detector table {source} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - {"detector"})
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; expected [[detector]] tables")
        rows = data.get("detector")
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{source}: no [[detector]] tables")
        if len(rows) > _MAX_DETECTORS:
            raise ConfigError(f"{source}: {len(rows)} detectors, at most {_MAX_DETECTORS}")
        detectors, seen_roles = [], {}
        for code, row in enumerate(rows):
            where = f"{source}: detector {code + 1}" + (f" ({row.get('name')})" if isinstance(row, dict) else "")
            detectors.append(_detector(code, row, where))
            d = detectors[-1]
            if d.name in {e.name for e in detectors[:-1]}:
                raise ConfigError(f"{where}: name {d.name!r} used twice")
            if d.role in UNIQUE_ROLES:
                if d.role in seen_roles:
                    raise ConfigError(f"{where}: role {d.role!r} already given to {seen_roles[d.role]}")
                seen_roles[d.role] = d.name
        return cls(tuple(detectors), source=source)


def _detector(code: int, row, where: str) -> Detector:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(row) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    missing = sorted({"name", "role", "subsystem", "modules", "nx", "ny"} - set(row))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")

    def text(key: str, default: str | None = None) -> str:
        value = row.get(key, default)
        if not isinstance(value, str) or not value.strip() or any(c in value for c in '",\n\\'):
            raise ConfigError(f"{where}: {key} must be a non-empty string without quotes, commas or "
                              f"backslashes, got {value!r}")
        return value.strip()

    def count(key: str, high: int) -> int:
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ConfigError(f"{where}: {key} must be an integer within 1..{high}, got {value!r}")
        return value

    name = text("name")
    role, layout = text("role"), text("layout", "none")
    if role not in ROLES:
        raise ConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"{where}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    subsystem = text("subsystem")
    if not subsystem.isidentifier() or subsystem != subsystem.lower() or subsystem == "overall":
        raise ConfigError(f"{where}: subsystem {subsystem!r} must be a lower-case identifier (not 'overall')")
    modules = count("modules", 1 << 15)
    names = row.get("module_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names) or (
            names and len(names) != modules):
        raise ConfigError(f"{where}: module_names must be a list of {modules} names")
    if role == "ecal" and modules < 2:
        raise ConfigError(f"{where}: the ecal role needs 2 modules (preshower, main)")
    return Detector(code=code, name=name, title=text("title", name), role=role, subsystem=subsystem,
                    modules=modules, nx=count("nx", 1 << 15), ny=count("ny", 1 << 15),
                    module_names=tuple(n.strip() for n in names), layout=layout)


@lru_cache(maxsize=1)
def _default_table() -> DetectorTable:
    text = resources.files(__package__).joinpath(DEFAULT_TABLE).read_text()
    return DetectorTable.from_toml_text(text, source=f"<package default {DEFAULT_TABLE}>")
