"""Strict JSON for records and API answers: non-finite floats become null, numpy values plain."""

from __future__ import annotations

import json
import math

import numpy as np


def finite(value):
    """``value`` with NaN/inf as None and numpy scalars/arrays as Python values, recursively."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [finite(v) for v in value]
    return value


def dumps(value) -> str:
    return json.dumps(finite(value), separators=(", ", ": "))
