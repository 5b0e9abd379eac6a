"""The detector table with the latest spill's per-detector values (``/api/detectors``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ..detectors import detector_views
from .common import state

router = APIRouter(tags=["detectors"])


class Panel(BaseModel):
    detector: str
    module: int | None  # None: the detector's modules side by side
    title: str
    slots: list[int]
    x: list[float]
    y: list[float]
    width: int


class DetectorView(BaseModel):
    code: int
    name: str
    title: str
    role: str
    subsystem: str
    modules: int
    nx: int
    ny: int
    module_names: list[str]
    layout: str
    mapped: int  # channels in the channel map
    energy_mean_gev: float | None  # latest spill: mean energy per data event
    hit_fraction: float | None  # latest spill: fraction of data events with energy in it
    problem_channels: dict[str, int]  # active channel findings by kind
    quality: str | None  # its subsystem's state in the latest spill
    panels: list[Panel]


class Detectors(BaseModel):
    run: int | None
    spill: int | None
    detectors: list[DetectorView]


@router.get("/api/detectors", response_model=Detectors)
def detectors(request: Request) -> Detectors:
    """Every detector of the table (decoders/detectors.toml or ``detectors = PATH``) with its geometry,
    channels, occupancy panels and the latest spill's values."""
    monitor = state(request).monitor
    latest = monitor.latest
    return Detectors(run=latest.record.run if latest is not None else None,
                     spill=latest.record.spill if latest is not None else None,
                     detectors=detector_views(monitor.channel_map, latest))
