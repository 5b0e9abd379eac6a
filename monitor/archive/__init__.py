"""Per-spill archive (SQLite, WAL, one transaction per spill), histogram codec and exports.

- :mod:`.store` — :class:`Archive` (writing, reading, retention, alarm history), :class:`ArchiveConfig`;
- :mod:`.codec` — histogram blobs (:func:`encode_histogram` / :func:`decode_histogram`) and JSON
  (:func:`histogram_to_json`: the one JSON shape, :class:`~..model.HistogramJSON`);
- :mod:`.exports` — the bad-spill list (:func:`bad_spills_csv`, CSV/JSON), ROOT and JSON histogram files.
"""

from ...errors import ArchiveError
from .codec import decode_histogram, encode_histogram, histogram_to_json
from .exports import BAD_STATES, INTERRUPTED, bad_spills_csv
from .store import SCHEMA_VERSION, Archive, ArchiveConfig

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
