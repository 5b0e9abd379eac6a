"""Per-spill archive (SQLite, WAL, one transaction per spill), histogram codec and exports.

- :mod:`.store` — :class:`Archive` (writing, reading, retention, alarm history);
- :mod:`.config` — :class:`ArchiveConfig` (``[archive]``), without SQLAlchemy;
- :mod:`.codec` — histogram blobs (:func:`encode_histogram` / :func:`decode_histogram`) and JSON
  (:func:`histogram_to_json`: the one JSON shape, :class:`~..model_served.HistogramJSON`);
- :mod:`.exports` — the bad-spill list (:func:`bad_spills_csv`, CSV/JSON), ROOT and JSON histogram files.

The names below are imported on first use: reading the configuration loads no SQLAlchemy.
"""

import importlib

from ...errors import ArchiveError
from .config import ArchiveConfig

#: name → the module that defines it, imported on first use (the store and exports load SQLAlchemy)
_LAZY = {"decode_histogram": "codec", "encode_histogram": "codec", "histogram_to_json": "codec",
         "BAD_STATES": "exports", "INTERRUPTED": "exports", "bad_spills_csv": "exports",
         "SCHEMA_VERSION": "store", "Archive": "store"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Archive",
    "ArchiveConfig",
    "ArchiveError",
    "BAD_STATES",
    "INTERRUPTED",
    "SCHEMA_VERSION",
    "bad_spills_csv",
    "decode_histogram",
    "encode_histogram",
    "histogram_to_json",
]
