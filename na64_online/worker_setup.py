"""What a decoder worker is sent to decode exactly as the service does: text, never pickle.

The SETUP payload is three UTF-8 frames:

1. the configuration the worker's pipeline uses, as TOML — the ``[monitor]``
   section (``chunk_events``, ``[monitor.reconstruction]``, ``[monitor.cuts]``),
   ``[histograms]`` and the ``[health]`` hit threshold of the channel
   statistics (resolved: the service's own value, derived or not), with the
   format version in ``[setup]``;
2. the channel map (with calibration) as CSV, the columns of
   ``decoders/default-channel-map.csv``;
3. the detector table the map's ``detector`` column names, as TOML
   (``decoders/detectors.toml``'s form).

The worker parses them with the service's own section models
(:func:`~.config_section.validate_section`), ``DetectorTable.from_toml_text`` and
``ChannelMap.from_csv_text``, so a bad set-up is a :class:`ConfigError` or
:class:`ChannelMapError` naming the key or line, and builds ``make_processor(channel_map,
monitor, histograms, health)`` — the processor of the service itself.
"""

from __future__ import annotations

import sys
import tomllib
from typing import Any, Mapping, Sequence

from .config import Config, toml_literal
from .config_section import validate_section
from .daq.workers import WorkerSetup
from .decoders.channelmap import ChannelMap
from .decoders.detectors import DetectorTable
from .errors import ConfigError
from .monitor.health import HealthConfig, hit_threshold
from .monitor.histograms import HistogramConfig
from .monitor.pipeline import MonitorConfig, SpillProcessor
from .monitor.spill_monitor import make_processor

SETUP_FORMAT = "na64-worker-setup"
SETUP_VERSION = 3  # 2: [health] hit_threshold; 3: the detector table
MAX_SETUP_BYTES = 16 << 20
#: the program of a local worker process (the pool adds --connect, --capacity, --parent-pid, keys)
WORKER_COMMAND = (sys.executable, "-m", "na64_online.cli", "worker")


# --------------------------------------------------------------------------- TOML out
def to_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text of ``{section: {key: value or sub-table}}`` (scalars, lists, nested tables)."""
    lines: list[str] = []

    def table(name: str, body: Mapping[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = []
        for key, value in body.items():
            if isinstance(value, Mapping):
                subs.append((f"{name}.{key}", value))
            else:
                lines.append(f"{key} = {toml_literal(value, f'{name}.{key}')}")
        lines.append("")
        for sub_name, sub in subs:
            table(sub_name, sub)

    for name, body in tables.items():
        table(name, body)
    return "\n".join(lines)


# --------------------------------------------------------------------------- encode / decode
def encode_setup(config: Config, channel_map: ChannelMap) -> tuple[bytes, bytes, bytes]:
    """(configuration TOML, channel map CSV, detector table TOML) as UTF-8 frames."""
    toml = to_toml({
        "setup": {"format": SETUP_FORMAT, "version": SETUP_VERSION},
        "monitor": config.monitor.model_dump(),
        "histograms": config.histograms.model_dump(),
        "health": {"hit_threshold": hit_threshold(config.health, config.monitor.reconstruction)},
    })
    return toml.encode(), channel_map.to_csv_text().encode(), channel_map.detectors.to_toml_text().encode()


def decode_setup(payload: Sequence[bytes]) -> tuple[MonitorConfig, HistogramConfig, HealthConfig, ChannelMap]:
    """The worker's side of :func:`encode_setup`; ConfigError / ChannelMapError name what is wrong."""
    if len(payload) != 3:
        raise ConfigError(f"worker set-up: expected 3 frames (TOML, CSV, TOML), got {len(payload)}")
    if sum(len(p) for p in payload) > MAX_SETUP_BYTES:
        raise ConfigError(f"worker set-up larger than {MAX_SETUP_BYTES} bytes")
    try:
        toml_text, csv_text, table_text = (bytes(p).decode("utf-8") for p in payload)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"worker set-up is not UTF-8 text: {exc}") from None
    try:
        data = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"worker set-up: configuration is not valid TOML: {exc}") from None
    head = data.pop("setup", None)
    if not isinstance(head, dict) or head.get("format") != SETUP_FORMAT:
        raise ConfigError(f"worker set-up: [setup] format must be {SETUP_FORMAT!r}")
    if head.get("version") != SETUP_VERSION:
        raise ConfigError(f"worker set-up: version {head.get('version')!r} is not supported "
                          f"(this worker reads {SETUP_VERSION})")
    unknown = sorted(set(data) - {"monitor", "histograms", "health"})
    if unknown:
        raise ConfigError(f"worker set-up: unknown section(s) {', '.join(unknown)}")
    source = "worker set-up from the service"
    monitor = validate_section(MonitorConfig, data.get("monitor", {}), "monitor", source)
    histograms = validate_section(HistogramConfig, data.get("histograms", {}), "histograms", source)
    health = validate_section(HealthConfig, data.get("health", {}), "health", source)
    table = DetectorTable.from_toml_text(table_text, source="<detector table from the service>")
    channel_map = ChannelMap.from_csv_text(csv_text, source="<channel map from the service>", detectors=table)
    return monitor, histograms, health, channel_map


def build_processor(payload: Sequence[bytes]) -> SpillProcessor:
    """A worker's processor from the SETUP payload (what ``na64-online worker`` runs)."""
    monitor, histograms, health, channel_map = decode_setup(payload)
    return make_processor(channel_map, monitor, histograms, health)


def worker_setup(config: Config, channel_map: ChannelMap) -> WorkerSetup:
    """The live service's :class:`WorkerSetup`: text payload, builder, worker program."""
    return WorkerSetup(encode_setup(config, channel_map), build_processor, WORKER_COMMAND)
