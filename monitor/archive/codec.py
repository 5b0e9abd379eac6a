"""Histogram codec (archive blobs, one JSON shape) and the record's JSON helpers.

Blob: ``b"N64H" | u8 version | zlib( u32 header length | header JSON | view bytes )``
(:func:`encode_histogram`), exact: flow bins and accumulator storages come back bit for bit.
JSON: the UHI schema with plain lists (:func:`histogram_to_json`).
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArchiveError


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
    header = json.dumps(uhi, separators=(",", ":"), default=_json_default).encode()
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
    """UHI-schema dict of a histogram with plain lists (non-finite numbers → ``null``)."""
    uhi = _uhi().to_uhi(h)
    storage = uhi["storage"]
    for key, value in list(storage.items()):
        if isinstance(value, np.ndarray):
            storage[key] = _finite_list(value)
    return uhi


def _finite_list(arr: np.ndarray) -> list:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        obj = arr.astype(object)
        obj[~np.isfinite(arr)] = None
        return obj.tolist()
    return arr.tolist()


_ROOT_NAME_BAD = re.compile(r"[^A-Za-z0-9_./+\-]")


# --------------------------------------------------------------------------- JSON helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _as_dict(obj: Any) -> Any:
    """A ``QARecord`` / ``SpillQuality`` (anything with ``to_dict``) as its dict."""
    return obj.to_dict() if hasattr(obj, "to_dict") and not isinstance(obj, Mapping) else obj


def _finite(obj: Any) -> Any:
    """Replace NaN/inf (not JSON) by ``None``, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=_json_default)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _state_of(value: Any) -> str | None:
    """A quality state given as ``"BAD"`` or as ``{"state": "BAD", ...}``."""
    if isinstance(value, Mapping):
        value = value.get("state", value.get("status"))
    return str(value).upper() if value is not None else None
