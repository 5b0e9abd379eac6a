"""Where a configuration's values come from: the TOML file and the environment, read by pydantic-settings.

:func:`~.config.load_config` uses these only when there is something to read — a configuration file, or
``NA64_*`` variables that name a setting — so that a command run without either (``replay small.dat``)
does not import pydantic-settings (≈ 0.1 s of start-up). The sources are merged exactly as pydantic-settings'
``BaseSettings`` merges them (each source's tables folded over the higher ones), highest precedence first:
arguments, environment, file; :class:`~.config.Config` validates the result once.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import InitSettingsSource, PydanticBaseSettingsSource, TomlConfigSettingsSource

from .config import Key, _env_name, _leaves, _Loading
from .errors import ConfigError


class TomlFileSource(TomlConfigSettingsSource):
    """The TOML configuration file (pydantic-settings' TOML source, with errors that name the file)."""

    def __init__(self, settings_cls: type[BaseModel], path: Path) -> None:
        if not path.is_file():
            try:
                path.open("rb").close()
                problem = "not a regular file"
            except OSError as exc:
                problem = exc.strerror or str(exc)
            raise ConfigError(f"cannot read config file {path}: {problem}")
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file_path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file_path} is not valid TOML: {exc}") from None


class EnvironmentSource(PydanticBaseSettingsSource):
    """``NA64_<SECTION>__<KEY>`` variables as nested tables (as :func:`~.config.environment_tables` made them
    from the environment); ``names`` maps each key to its variable."""

    def __init__(self, settings_cls: type[BaseModel], data: dict[str, Any], names: Mapping[Key, str]) -> None:
        super().__init__(settings_cls)
        self.data, self.names = data, names

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False  # unused: __call__ returns the whole table

    def __call__(self) -> dict[str, Any]:
        return self.data


def _deep_update(mapping: dict[str, Any], updating: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` with ``updating``'s values on top, tables merged key by key (pydantic-settings' merge)."""
    out = mapping.copy()
    for key, value in updating.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def read_sources(settings_cls: type[BaseModel], arguments: dict[str, Any], loading: _Loading) -> dict[str, Any]:
    """The values of arguments, environment and file (``loading``) merged, arguments first; records in
    ``loading.given`` which keys the file and the environment gave."""
    environment = EnvironmentSource(settings_cls, loading.environment, loading.environment_names)
    file = TomlFileSource(settings_cls, loading.path) if loading.path is not None else None
    if file is not None:
        loading.given.update({key: f"file:{loading.path}" for key in _leaves(file(), settings_cls)})
    loading.given.update({key: f"env:{environment.names.get(key) or _env_name(key)}"
                          for key in _leaves(environment(), settings_cls)})
    sources = [InitSettingsSource(settings_cls, arguments), environment] + ([file] if file is not None else [])
    state: dict[str, Any] = {}
    for source in sources:  # as BaseSettings folds them: each lower source under what the higher ones gave
        state = _deep_update(source(), state)
    return state
