"""Beam profiles: the NA64 beam set-ups as named data (``decoders/beam-profiles.toml``).

A profile gives the beam (particle, energy, mode) and what to expect of it: the
hadron contamination and its limits, which spectrum's peak must sit at the beam
energy, the quality checks that do not apply, and roles the channel map must
have. :func:`profile_settings` turns it into configuration values: the cuts and
histogram ranges that depend on the beam energy scale with it (:data:`SCALED`,
from the spec's values at 100 GeV) unless the profile gives them explicitly;
the configuration file and environment still override any of them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import ClassVar

from pydantic import field_validator

from ..config_section import ConfigSection
from ..errors import ConfigError

DEFAULT_PROFILE = "electrons-100"
PROFILES_FILE = "beam-profiles.toml"
PARTICLES = ("electron", "positron", "hadron")
MODES = ("invisible", "visible", "calibration")
REFERENCE_ENERGY_GEV = 100.0  # the spec's cuts and the default binning are for a 100 GeV beam
#: configuration values proportional to the beam energy: (section, ..., key) -> value at 100 GeV; a
#: histogram range (bins, lo, hi) scales its edges
SCALED = {
    ("monitor", "cuts", "hadron_hcal_min_gev"): 10.0,  # spec §11: E_HCAL > 10 GeV
    ("monitor", "cuts", "candidate_ecal_max_gev"): 50.0,  # spec §11: E_ECAL < 50 GeV
    ("histograms", "e_ecal"): (300, 0.0, 150.0),
    ("histograms", "e_hcal"): (300, 0.0, 150.0),
    ("histograms", "e_total"): (200, 0.0, 200.0),
    ("histograms", "plane"): (75, 0.0, 150.0),
}
_KEYS = {"title", "particle", "energy_gev", "mode", "hadron_fraction_expected", "hadron_fraction_warning",
         "hadron_fraction_bad", "energy_spectrum", "energy_trigger", "energy_peak_fraction", "requires",
         "checks_off", "cuts", "quality", "histograms"}


class BeamConfig(ConfigSection):
    """``[beam]``: the beam profile in use (a name in ``decoders/beam-profiles.toml``)."""

    section: ClassVar[str] = "beam"

    profile: str = DEFAULT_PROFILE

    @field_validator("profile")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in profiles():
            raise ValueError(f"beam profile {name!r} unknown; known: {', '.join(profiles())}")
        return name


@dataclass(frozen=True)
class BeamProfile:
    name: str
    title: str
    particle: str
    energy_gev: float
    mode: str
    hadron_fraction_expected: float
    hadron_fraction_warning: float
    hadron_fraction_bad: float
    energy_spectrum: str = "e_ecal"
    energy_trigger: str = "electron"
    energy_peak_fraction: float = 1.0
    requires: tuple[str, ...] = ()
    checks_off: tuple[str, ...] = ()
    cuts: tuple[tuple[str, object], ...] = ()  # explicit values, not scaled
    quality: tuple[tuple[str, object], ...] = ()
    histograms: tuple[tuple[str, object], ...] = ()

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) and k in ("requires", "checks_off") else
                    dict(v) if k in ("cuts", "quality", "histograms") else v) for k, v in vars(self).items()}


def profile_settings(profile: BeamProfile) -> dict:
    """Configuration values of ``profile`` as nested tables ``{section: {key: value}}``."""
    e = profile.energy_gev
    scale = e / REFERENCE_ENERGY_GEV
    out: dict = {}

    def put(path, value):
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value

    for path, at_reference in SCALED.items():
        if isinstance(at_reference, tuple):
            bins, lo, hi = at_reference
            put(path, [bins, lo * scale, hi * scale])
        else:
            put(path, at_reference * scale)
    put(("quality", "beam_energy_gev"), e)
    for key in ("hadron_fraction_warning", "hadron_fraction_bad", "energy_spectrum", "energy_trigger",
                "energy_peak_fraction"):
        put(("quality", key), getattr(profile, key))
    put(("quality", "checks_off"), list(profile.checks_off))
    for section, values in (("monitor", profile.cuts), ("quality", profile.quality),
                            ("histograms", profile.histograms)):
        for key, value in values:
            put(("monitor", "cuts", key) if section == "monitor" else (section, key), value)
    return out


def profiles() -> dict[str, BeamProfile]:
    """The packaged profiles by name."""
    return _packaged()


def profile(name: str) -> BeamProfile:
    try:
        return profiles()[name]
    except KeyError:
        raise ConfigError(f"beam profile {name!r} unknown; known: {', '.join(profiles())}") from None


def from_toml_text(text: str, source: str = "<memory>") -> dict[str, BeamProfile]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"beam profiles {source} are not valid TOML: {exc}") from None
    out = {}
    for name, row in data.items():
        where = f"{source}: profile {name}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = sorted(set(row) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        try:
            p = BeamProfile(
                name=name, title=str(row.get("title", name)), particle=row["particle"],
                energy_gev=float(row["energy_gev"]), mode=row["mode"],
                hadron_fraction_expected=float(row["hadron_fraction_expected"]),
                hadron_fraction_warning=float(row["hadron_fraction_warning"]),
                hadron_fraction_bad=float(row["hadron_fraction_bad"]),
                energy_spectrum=row.get("energy_spectrum", "e_ecal"),
                energy_trigger=row.get("energy_trigger", "electron"),
                energy_peak_fraction=float(row.get("energy_peak_fraction", 1.0)),
                requires=tuple(row.get("requires", ())), checks_off=tuple(row.get("checks_off", ())),
                cuts=tuple(dict(row.get("cuts", {})).items()), quality=tuple(dict(row.get("quality", {})).items()),
                histograms=tuple(dict(row.get("histograms", {})).items()),
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing key {exc.args[0]}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        problems = []
        if p.particle not in PARTICLES:
            problems.append(f"particle {p.particle!r} not one of {', '.join(PARTICLES)}")
        if p.mode not in MODES:
            problems.append(f"mode {p.mode!r} not one of {', '.join(MODES)}")
        if not 0 < p.energy_gev <= 1000:
            problems.append(f"energy_gev {p.energy_gev} not within (0, 1000]")
        if not 0 <= p.hadron_fraction_expected <= 1:
            problems.append("hadron_fraction_expected not within [0, 1]")
        if problems:
            raise ConfigError(f"{where}: {'; '.join(problems)}")
        out[name] = p
    if not out:
        raise ConfigError(f"beam profiles {source}: none")
    return out


@lru_cache(maxsize=1)
def _packaged() -> dict[str, BeamProfile]:
    text = resources.files(__package__).joinpath(PROFILES_FILE).read_text()
    return from_toml_text(text, source=f"<package {PROFILES_FILE}>")
