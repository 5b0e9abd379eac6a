"""One typed, immutable configuration, loaded once at start-up and passed down.

:class:`Config` is a frozen pydantic model composed of the sections each
layer declares (:class:`~.config_section.ConfigSection`). :func:`load_config`
reads it with pydantic-settings' sources (:mod:`.config_sources`, imported only
when there is a file or a ``NA64_`` setting variable to read) from, highest
precedence first:

1. arguments (``overrides``: the command-line options such as ``--map``);
2. environment variables ``NA64_<SECTION>__<KEY>`` (``__`` also separates
   sub-tables: ``NA64_MONITOR__CUTS__CANDIDATE_ECAL_MAX_GEV=45``); values are
   TOML literals (``8192``, ``[1, 2]``, ``{ alice = "sha256:…" }``), bare
   words are strings. ``NA64_<KEY>`` sets a top-level key (``NA64_CHANNEL_MAP``);
   other ``NA64_*`` variables without ``__`` (``NA64_CONFIG``, ``NA64_DEBUG``)
   are the program's own and not configuration;
3. the TOML file (``--config FILE``, else ``$NA64_CONFIG``);
4. the defaults of the section classes.

Settings that must agree are derived from one place (:data:`DERIVED`): left
unset, ``health.hit_threshold`` is ``monitor.reconstruction.amplitude_threshold``;
the beam profile (``[beam] profile``) sets the energy-dependent cuts, histogram
ranges and quality expectations not set explicitly.

Unknown sections or keys and bad values are one :class:`ConfigError` naming
each failing key (``monitor.chunk_events``), the reason and the source (the
file's path or the environment variable). ``Config(**values)`` alone is the
defaults updated by ``values`` (no file, no environment).
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from .config_section import ConfigSection, Problem, config_error, problems_of, section_class, validate_section
from .daq.ingest_config import IngestConfig
from .decoders import beam as beam_profiles
from .decoders.beam import BeamConfig
from .decoders.channelmap import ChannelMap
from .decoders.detectors import DetectorTable
from .errors import ConfigError
from .monitor.alarms import AlarmConfig
from .monitor.archive.config import ArchiveConfig
from .monitor.health import HealthConfig
from .monitor.histograms import HistogramConfig
from .monitor.pipeline import MonitorConfig
from .monitor.quality import QualityConfig
from .cluster_config import ClusterConfig
from .web.config import WebConfig

ENV_PREFIX = "NA64_"
ENV_NESTED_DELIMITER = "__"
#: the variable naming the configuration file when no ``--config`` is given
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"

Key = tuple[str, ...]

#: settings that must agree: key → the key whose value it takes when it is not set explicitly
DERIVED: dict[Key, Key] = {
    ("health", "hit_threshold"): ("monitor", "reconstruction", "amplitude_threshold"),
}


# --------------------------------------------------------------------------- sources
@dataclass
class _Loading:
    """What one :func:`load_config` call reads; its sources record which keys they gave."""

    path: Path | None
    environment: dict[str, Any] = field(default_factory=dict)  # the NA64_ setting variables as tables
    environment_names: dict[Key, str] = field(default_factory=dict)  # key → its variable
    given: dict[Key, str] = field(default_factory=dict)  # key → origin, lowest precedence first


_LOADING: contextvars.ContextVar[_Loading | None] = contextvars.ContextVar("na64_config_loading", default=None)


def _leaves(data: Mapping[str, Any], model: type | None, prefix: Key = ()) -> Iterator[Key]:
    """Keys of the values in ``data`` (sub-tables of sections descended into; other tables are values)."""
    for name, value in data.items():
        key = prefix + (name,)
        field_info = model.model_fields.get(name) if model is not None else None
        sub = section_class(field_info.annotation) if field_info is not None else None
        if sub is not None and isinstance(value, Mapping):
            yield from _leaves(value, sub, key)
        else:
            yield key


def parse_env_value(raw: str) -> Any:
    """An environment variable's value: a TOML literal (number, true/false, list, inline table) or a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def environment_tables(environ: Mapping[str, str], fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[Key, str]]:
    """``NA64_<SECTION>__<KEY>`` variables as nested tables, and each key's variable.

    A variable with ``__`` whose section is unknown is kept, so that validation
    refuses it as an unknown key; one without ``__`` that names no top-level
    key (``fields``: ``NA64_CONFIG``, ``NA64_DEBUG``) is the program's own and skipped.
    """
    data: dict[str, Any] = {}
    names: dict[Key, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        key = tuple(name[len(ENV_PREFIX):].lower().split(ENV_NESTED_DELIMITER))
        if not all(key) or (len(key) == 1 and key[0] not in fields):
            continue
        node = data
        for part in key[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[key[-1]] = parse_env_value(environ[name])
        names[key] = name
    return data, names


# --------------------------------------------------------------------------- the configuration
class Config(BaseModel):
    """The service configuration; each section belongs to one layer."""

    # what pydantic-settings' BaseSettings sets, so that values validate as they did when Config was one
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, arbitrary_types_allowed=True)

    channel_map: str | None = None  # path of a channel-map CSV; None: the packaged default
    detectors: str | None = None  # path of a detector table (TOML); None: the packaged decoders/detectors.toml
    reference: tuple[int, int] | None = None  # (run, spill) in the archive whose spectra are the reference
    reference_run: int | None = None  # or: a whole archived run, summed
    beam: BeamConfig = BeamConfig()  # the beam profile (decoders/beam-profiles.toml): cuts and expectations
    monitor: MonitorConfig = MonitorConfig()
    histograms: HistogramConfig = HistogramConfig()
    health: HealthConfig = HealthConfig()
    quality: QualityConfig = QualityConfig()
    alarms: AlarmConfig = AlarmConfig()
    archive: ArchiveConfig | None = None  # None: no archive
    ingest: IngestConfig = IngestConfig()
    web: WebConfig = WebConfig()
    cluster: ClusterConfig = ClusterConfig()  # reprocess on Dask

    #: key → where its value came from (keys at their defaults or derived are absent)
    _given: dict[Key, str] = PrivateAttr(default_factory=dict)
    #: key → "profile:NAME" for the keys the beam profile set (not given explicitly)
    _implied: dict[Key, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        loading = _LOADING.get()

        def given() -> dict[Key, str]:  # what the sources gave (recorded while they were read), then arguments
            out = dict(loading.given) if loading is not None else {}
            return out | {key: "argument" for key in _leaves(values, type(self))}

        data = values
        if loading is not None and (loading.path is not None or loading.environment):
            from .config_sources import read_sources  # pydantic-settings: only with a file or variables to read

            data = read_sources(type(self), values, loading)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            origins = given()
            raise config_error(problems_of(exc, type(self), source=lambda key: _source_of(key, origins))) from None
        self._given = given()
        self._apply_beam_profile()

    def _apply_beam_profile(self) -> None:
        """Set what the beam profile implies (``[beam] profile``, decoders/beam-profiles.toml: the cuts and
        histogram ranges scaled to its energy, its quality expectations) for every key not given explicitly."""
        name = self.beam.profile
        changes: dict[str, dict[Key, Any]] = {}
        for key, value in _flatten(beam_profiles.profile_settings(beam_profiles.profile(name))):
            if any(key[:length] in self._given for length in range(1, len(key) + 1)):
                continue  # given explicitly (or inside a table given as a whole): it wins
            value = tuple(value) if isinstance(value, list) else value
            self._implied[key] = f"profile:{name}"
            if _get(self, key) != value:
                changes.setdefault(key[0], {})[key[1:]] = value
        for section, values in changes.items():
            data = getattr(self, section).model_dump()
            for key, value in values.items():
                node = data
                for part in key[:-1]:
                    node = node[part]
                node[key[-1]] = value
            model = type(getattr(self, section))
            object.__setattr__(self, section, validate_section(model, data, section, f"beam profile {name}"))

    def __eq__(self, other: object) -> bool:  # the values, not where they came from
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # tables (web.tokens) inside

    @model_validator(mode="after")
    def _derive(self) -> "Config":
        for key, origin in DERIVED.items():
            if _get(self, key) is None:
                object.__setattr__(self, key[0], _with(getattr(self, key[0]), key[1:], _get(self, origin)))
        return self

    # ------------------------------------------------------------ use
    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (whole sections or top-level keys), validated; derived keys follow again."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        for key in DERIVED:
            if key[0] not in changes and key not in self._given:
                values[key[0]] = _with(values[key[0]], key[1:], None)
        values.update(changes)
        new = type(self)(**values)
        before, given, implied = dict(self.settings()), dict(self._given), dict(self._implied)
        for key, value in new.settings():  # what the changes changed now comes from the caller
            derived = key in DERIVED and _get(values[key[0]], key[1:]) is None
            if before.get(key) != value and not derived:
                given[key] = "argument"
                implied.pop(key, None)
        new._given, new._implied = given, implied
        return new

    def origin(self, key: Key) -> str:
        """Where the value of ``key`` came from: ``default``, ``file:PATH``, ``env:NA64_…``, ``argument``,
        ``derived:KEY`` (the key it follows) or ``profile:NAME`` (the beam profile)."""
        given = self._given.get(key)
        if given is not None:
            return given
        if key in DERIVED:
            return "derived:" + ".".join(DERIVED[key])
        if key in self._implied:
            return self._implied[key]
        for length in range(len(key) - 1, 0, -1):  # a value inside a table given as a whole
            if self._given.get(key[:length], "").startswith(("env:", "argument")):
                return self._given[key[:length]]
        return "default"

    def settings(self) -> Iterator[tuple[Key, Any]]:
        """Every setting as (key, value) in declaration order, a section's own values before its sub-sections
        (the order a TOML file needs)."""
        def walk(model: Any, prefix: Key) -> Iterator[tuple[Key, Any]]:
            values = [(name, getattr(model, name)) for name in type(model).model_fields]
            for name, value in values:
                if not isinstance(value, ConfigSection):
                    yield prefix + (name,), value
            for name, value in values:
                if isinstance(value, ConfigSection):
                    yield from walk(value, prefix + (name,))
        yield from walk(self, ())


def _flatten(tables: Mapping[str, Any], prefix: Key = ()) -> Iterator[tuple[Key, Any]]:
    for name, value in tables.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix + (name,))
        else:
            yield prefix + (name,), value


def _env_name(key: Key) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in key)


def _get(model: Any, key: Key) -> Any:
    for part in key:
        model = getattr(model, part)
    return model


def _with(section: ConfigSection, key: Key, value: Any) -> ConfigSection:
    """``section`` with ``key`` (within it) set to ``value``, already validated (no checks again)."""
    if len(key) > 1:
        value = _with(getattr(section, key[0]), key[1:], value)
    return section.model_copy(update={key[0]: value})


def _source_of(key: Key, given: Mapping[Key, str]) -> str | None:
    """The source of ``key``, else those of the keys given within it (a whole section), else of a table
    holding it, else those of the other keys given in its section."""
    if key in given:
        return given[key]
    inside = sorted({origin for k, origin in given.items() if k[:len(key)] == key})
    if inside:
        return ", ".join(inside)
    for length in range(len(key) - 1, 0, -1):
        if key[:length] in given:
            return given[key[:length]]
    # a key at its default that disagrees with others of its section: where those came from
    siblings = sorted({origin for k, origin in given.items() if len(key) > 1 and k[:len(key) - 1] == key[:-1]})
    return ", ".join(siblings) or None


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults ← TOML file (``path``, else ``$NA64_CONFIG``) ← environment ← ``overrides``; then derived keys."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_VARIABLE) or None
    environment, names = environment_tables(environ, Config.model_fields)
    token = _LOADING.set(_Loading(Path(path) if path else None, environment, names))
    try:
        return Config(**(overrides or {}))
    finally:
        _LOADING.reset(token)


# --------------------------------------------------------------------------- showing it
def toml_literal(value: Any, where: str = "value") -> str:
    """TOML text of a value: numbers (shortest exact form, nan/inf), strings, lists, inline tables, paths."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest repr: round-trips exactly
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple, frozenset)):
        return "[" + ", ".join(toml_literal(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))} = {toml_literal(v, where)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"{where}: {type(value).__name__} has no TOML form")


_URL_PASSWORD = re.compile(r"(?<=://)([^/@:\s]*):[^/@\s]*@")


def _masked(value: Any) -> Any:
    """``value`` with passwords in URLs (``http://user:secret@host``) replaced by ``***``."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    if isinstance(value, (list, tuple)):
        return type(value)(_masked(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def effective(config: Config) -> list[tuple[str, Any, str]]:
    """Every setting as (dotted key, value, origin); passwords in URLs masked."""
    return [(".".join(key), _masked(value), config.origin(key)) for key, value in config.settings()]


def show_json(config: Config) -> str:
    """The effective configuration as JSON: ``{"section.key": {"value": …, "source": …}}``."""
    return json.dumps({key: {"value": _plain(value), "source": origin} for key, value, origin in effective(config)},
                      indent=2, allow_nan=True)


def show_toml(config: Config) -> str:
    """The effective configuration as TOML, each value followed by ``# its source``; unset values commented out."""
    lines: list[str] = []
    table: tuple[str, ...] = ()
    for key, value, origin in ((k, v, o) for k, v, o in effective(config)):
        parts = tuple(key.split("."))
        if parts[:-1] != table:
            table = parts[:-1]
            lines.append(f"\n[{'.'.join(table)}]")
        text = f"# {parts[-1]} is not set" if value is None else f"{parts[-1]} = {toml_literal(value, key)}"
        lines.append(f"{text:<48} # {origin}")
    return "\n".join(lines).lstrip("\n") + "\n"


def check_config(path: str | os.PathLike, environ: Mapping[str, str] | None = None,
                 files: bool = False) -> list[Problem]:
    """The problems of configuration file ``path`` (with ``environ`` on top) and, with ``files``, of the
    files it names (channel map, alarm rules, tokens file: on the host that runs the service); empty when
    all is valid."""
    try:
        config = load_config(path, environ={} if environ is None else environ)
    except ConfigError as exc:
        return list(getattr(exc, "problems", None) or [Problem("", exc.reason)])
    if not files:
        return []
    from .decoders.channelmap import ChannelMap
    from .errors import DaqError
    from .monitor.alarms import load_rules
    from .web.auth import read_tokens_file

    problems = []
    found: dict[str, Any] = {}
    for key, value, read in ((("detectors",), config.detectors, DetectorTable.load),
                             (("channel_map",), config.channel_map,
                              lambda path: ChannelMap.load(path, found.get("detectors") or DetectorTable.default())),
                             (("alarms", "rules_path"), config.alarms.rules_path, load_rules),
                             (("web", "tokens_file"), config.web.tokens_file, read_tokens_file)):
        if value is not None:
            try:
                found[key[0]] = read(value)
            except DaqError as exc:
                name = ".".join(key)
                reason = exc.reason[len(name) + 2:] if exc.reason.startswith(name + ": ") else exc.reason
                problems.append(Problem(name, reason, config.origin(key)))
    if not problems:  # the beam profile's detectors must be in the channel map
        channel_map = found.get("channel_map") or ChannelMap.default(found.get("detectors"))
        roles = {channel_map.detectors[int(code)].role for code in set(channel_map.detector.tolist())}
        missing = [role for role in beam_profiles.profile(config.beam.profile).requires if role not in roles]
        if missing:
            problems.append(Problem("beam.profile", f"{config.beam.profile} needs a detector of role "
                                    f"{', '.join(missing)} in the channel map", config.origin(("beam", "profile"))))
    return problems


def load_channel_map(config: Config) -> ChannelMap:
    """The configured channel map (``channel_map``, else the packaged one) over the configured detector
    table (``detectors``, else the packaged ``decoders/detectors.toml``)."""
    table = DetectorTable.load(config.detectors) if config.detectors else DetectorTable.default()
    return ChannelMap.load(config.channel_map, table) if config.channel_map else ChannelMap.default(table)
