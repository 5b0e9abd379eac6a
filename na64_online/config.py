"""One typed, immutable configuration, loaded once at start-up and passed down.

Sources, later ones winning: the dataclass defaults, a TOML file
(``--config FILE`` or ``NA64_CONFIG``), environment variables
``NA64_<SECTION>__<KEY>`` (e.g. ``NA64_MONITOR__CHUNK_EVENTS=8192``; values
parsed as TOML literals, bare words taken as strings), then command-line
options. Unknown sections or keys and values of the wrong type are errors
that name the offending key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .daq.ingest import IngestConfig
from .decoders import beam as beam_profiles
from .decoders.beam import BeamConfig
from .decoders.channelmap import ChannelMap
from .decoders.detectors import DetectorTable
from .errors import ConfigError
from .monitor.alarms import AlarmConfig
from .monitor.archive import ArchiveConfig
from .monitor.health import HealthConfig
from .monitor.histograms import HistogramConfig
from .monitor.pipeline import MonitorConfig
from .monitor.quality import QualityConfig
from .web.config import WebConfig

ENV_PREFIX = "NA64_"


@dataclass(frozen=True)
class Config:
    """The service configuration; each section belongs to one layer."""

    channel_map: str | None = None  # path of a channel-map CSV; None: the packaged default
    detectors: str | None = None  # path of a detector table (TOML); None: the packaged decoders/detectors.toml
    reference: tuple[int, int] | None = None  # (run, spill) in the archive whose spectra are the reference
    reference_run: int | None = None  # or: a whole archived run, summed
    beam: BeamConfig = field(default_factory=BeamConfig)  # the beam profile (decoders/beam-profiles.toml)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    histograms: HistogramConfig = field(default_factory=HistogramConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    archive: ArchiveConfig | None = None  # None: no archive
    ingest: IngestConfig = field(default_factory=IngestConfig)
    web: WebConfig = field(default_factory=WebConfig)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: Mapping[str, Any], where: str = "config") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking names and types."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_table(environ: Mapping[str, str]) -> dict:
    table: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return table


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults ← TOML file ← environment ← ``overrides``."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    data: dict = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = _merge(data, _env_table(environ))
    data = _merge(data, overrides or {})
    return build(Config, with_beam_profile(data), where=str(path) if path else "config")


def with_beam_profile(data: Mapping[str, Any]) -> dict:
    """``data`` (the merged configuration tables) over the values its ``[beam] profile`` implies: cuts,
    histogram ranges and quality expectations of the beam; what ``data`` sets explicitly wins."""
    beam = data.get("beam") if isinstance(data.get("beam"), Mapping) else {}
    name = beam.get("profile", BeamConfig.profile)
    if not isinstance(name, str) or name not in beam_profiles.profiles():
        return dict(data)  # building [beam] names the bad profile
    return _merge(beam_profiles.profile_settings(beam_profiles.profile(name)), data)


def load_channel_map(config: Config) -> ChannelMap:
    """The configured channel map (``channel_map``, else the packaged one) over the configured detector
    table (``detectors``, else the packaged ``decoders/detectors.toml``)."""
    table = DetectorTable.load(config.detectors) if config.detectors else DetectorTable.default()
    return ChannelMap.load(config.channel_map, table) if config.channel_map else ChannelMap.default(table)
