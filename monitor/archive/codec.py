"""Histogram codec (archive blobs, one JSON shape) and the record's JSON helpers.

Blob: ``b"N64H" | u8 version | zlib( u32 header length | header JSON | view bytes )``
(:func:`encode_histogram`), exact: flow bins and accumulator storages come back bit for bit.
JSON: the project's one histogram shape (:func:`histogram_to_json`, i.e.
:func:`~..histograms.histogram_json`; documented on :class:`~..model_served.HistogramJSON`).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ...errors import ArchiveError
from ..model import to_json


# --------------------------------------------------------------------------- histograms

_BLOB_MAGIC = b"N64H"
_BLOB_VERSION = 1


def _uhi():
    import boost_histogram.serialization as ser

    return ser


def encode_histogram(h: Any) -> bytes:
    """Serialise a ``hist.Hist`` / ``boost_histogram.Histogram`` to a compact, exact blob.

    Layout: ``b"N64H" | u8 version | zlib( u32 header length | header JSON |
    view bytes )``. The header is the UHI dict (axes, storage type, metadata)
    with each storage array replaced by its dtype and shape; the bytes are
    the raw ``view(flow=True)`` of the storage, so accumulators (e.g. the
    ``Mean`` storage's sum of squared deltas) come back bit for bit.
    """
    uhi = _uhi().to_uhi(h)
    uhi.pop("writer_info", None)
    storage = dict(uhi["storage"])
    for key, value in list(storage.items()):
        if isinstance(value, np.ndarray):
            storage[key] = {"__array__": True, "dtype": value.dtype.str, "shape": list(value.shape)}
    uhi["storage"] = storage
    view = np.ascontiguousarray(np.asarray(h.view(flow=True)))
    if view.dtype.names:
        dtype: Any = [[name, view.dtype.fields[name][0].str] for name in view.dtype.names]
    else:
        dtype = view.dtype.str
    uhi["__view__"] = {"dtype": dtype, "shape": list(view.shape)}
    header = _dumps(uhi).encode()
    payload = struct.pack("<I", len(header)) + header + view.tobytes()
    return _BLOB_MAGIC + bytes([_BLOB_VERSION]) + zlib.compress(payload, 6)


def decode_histogram(blob: bytes):
    """Inverse of :func:`encode_histogram`; returns a ``hist.Hist``."""
    import hist

    if blob[:4] != _BLOB_MAGIC or len(blob) < 6 or blob[4] != _BLOB_VERSION:
        raise ArchiveError("not a histogram blob of a known version")
    payload = zlib.decompress(blob[5:])
    (hlen,) = struct.unpack_from("<I", payload)
    uhi = json.loads(payload[4 : 4 + hlen])
    spec = uhi.pop("__view__")
    storage = uhi["storage"]
    for key, value in list(storage.items()):
        if isinstance(value, dict) and value.get("__array__"):
            storage[key] = np.zeros(value["shape"], dtype=np.dtype(value["dtype"]))
    h = hist.Hist(_uhi().from_uhi(uhi))
    dtype = spec["dtype"]
    dtype = np.dtype([tuple(f) for f in dtype]) if isinstance(dtype, list) else np.dtype(dtype)
    view = np.frombuffer(payload, dtype=dtype, offset=4 + hlen).reshape(spec["shape"])
    target = h.view(flow=True)
    if dtype.names:
        for name in dtype.names:
            target[name] = view[name]
    else:
        target[...] = view
    return h


def histogram_to_json(h: Any) -> dict:
    """A histogram in the project's one JSON shape (:func:`~..histograms.histogram_json`)."""
    from ..histograms import histogram_json

    return histogram_json(h)


# --------------------------------------------------------------------------- JSON helpers


def _dumps(obj: Any) -> str:
    """Compact strict JSON (:func:`~..model.to_json`) of a record, quality or header."""
    return json.dumps(to_json(obj), separators=(",", ":"), allow_nan=False)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _state_of(value: Any) -> str | None:
    """A quality state given as ``"BAD"`` or as ``{"state": "BAD", ...}``."""
    if isinstance(value, Mapping):
        value = value.get("state", value.get("status"))
    return str(value).upper() if value is not None else None
