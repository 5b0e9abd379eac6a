"""Models of what the web and the archive answer: the histogram JSON shape and the archive's rows.

Apart from :mod:`.model` (the per-spill record and what it holds) so that a command that builds records
but serves nothing (``replay``) does not define them; serialised the same way (:func:`.model.to_json`).
Histograms have one JSON shape, :class:`HistogramJSON` (see there), in the API, the dashboard and the
archive's JSON export; the archive keeps them as exact binary blobs (:mod:`.archive.codec`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from .model import Model, Real


# --------------------------------------------------------------------------- histograms


class HistogramAxisJSON(Model):
    """An axis: ``edges`` (bins + 1 values) for a continuous axis, ``categories`` otherwise."""

    name: str
    label: str
    edges: list[Real] | None = None
    categories: list[str | int] | None = None
    _omit_if_none = frozenset({"edges", "categories"})


class HistogramJSON(Model):
    """THE JSON shape of a histogram, everywhere (API, dashboard, ``archive export --out X.json``).

    ``values``: bin contents without flow bins, nested lists in axis order; ``entries``: every fill;
    ``outside``: fills in under/overflow. Made by :func:`~.histograms.histogram_json`. (Exact copies,
    flow bins and all: the archive's blobs and the ROOT export.)
    """

    name: str | None
    label: str | None
    axes: list[HistogramAxisJSON]
    values: list[Any]
    entries: int | Real
    outside: int | Real


class HistogramSetJSON(Model):
    """A set of histograms: ``events`` filled and ``histograms`` by name; run sets add totals and trend."""

    model_config = ConfigDict(frozen=True, extra="allow", from_attributes=True)

    events: int = 0
    histograms: dict[str, HistogramJSON] = {}


# --------------------------------------------------------------------------- archive rows


class ArchivedSpillRow(Model):
    """One archived spill in a list: when (``time``: the spill's, ``stored_at``: written), its overall
    quality and headline numbers; ``fragment`` > 0 and ``collision``: another row holds the same (run, spill)."""

    run: int
    spill: int
    #: processing version: software version + configuration hash (``archive versions``); reprocessed
    #: records sit beside the online ones
    version: str
    time: Real
    stored_at: Real
    overall: str | None
    complete: bool | None
    events: int | None
    eot: Real | None
    hadron_fraction: Real | None
    fragment: int
    collision: bool


class ArchivedSpill(Model):
    """One archived spill: its record and quality as stored (the JSON of :class:`SpillRecord` and
    :class:`SpillQuality` when this version wrote them), the names of its histograms and how many
    rows hold this (run, spill)."""

    run: int
    spill: int
    time: Real
    stored_at: Real
    overall: str | None
    record: dict[str, Any]
    quality: dict[str, Any] | None
    histograms: list[str]
    fragment: int
    fragments: int
    collision: bool
    version: str  #: the processing version shown (the newest, unless one was asked for)
    versions: list[str]  #: every processing version of this spill, oldest first


class BadSpill(Model):
    """A row of the bad-spill list (analysts): why the spill is bad, ``time`` as ISO UTC."""

    run: int
    spill: int
    time: str | None
    overall: str | None
    failing_subsystems: list[str]
    reasons: list[str]
    alarms: list[str]
    complete: bool | None
    events: int | None
    beam: int | None
    eot: Real | None
    hadron_fraction: Real | None
    decode_errors: int | None
    lost_events: int | None


__all__ = [
    "ArchivedSpill",
    "ArchivedSpillRow",
    "BadSpill",
    "HistogramAxisJSON",
    "HistogramJSON",
    "HistogramSetJSON",
]
