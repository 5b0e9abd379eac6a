"""QA records: the latest spill (live snapshot) and archived ones (the web's read-only archive connection)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request

from ...monitor import model, model_served
from .common import RunPath, RunQuery, SpillPath, archive_or_404, state

router = APIRouter(prefix="/api/spills", tags=["spills"])


@router.get("/latest", response_model=model.SpillSnapshot)
def latest(request: Request) -> model.SpillSnapshot:
    """The latest spill: its record, quality, channel health and when it was published."""
    snapshot = state(request).monitor.latest
    if snapshot is None:
        raise HTTPException(status_code=404, detail="no spill finished yet")
    return model.SpillSnapshot(record=snapshot.record, quality=snapshot.quality, health=snapshot.health,
                               published_at=snapshot.published_at)


@router.get("", response_model=list[model_served.ArchivedSpillRow])
def list_spills(request: Request, run: RunQuery = None,
                quality: Literal["GOOD", "WARNING", "BAD", "NO_DATA", "INTERRUPTED"] | None = None,
                limit: int = Query(200, ge=1, le=10000)):
    archive = archive_or_404(request)
    return archive.list_spills(run=run, quality=quality, limit=limit, newest_first=True)


@router.get("/bad", response_model=list[model_served.BadSpill])
def bad_spills(request: Request, run: RunQuery = None):
    return archive_or_404(request).bad_spills(run=run)


@router.get("/{run}/{spill}", response_model=model_served.ArchivedSpill)
def get_spill(request: Request, run: RunPath, spill: SpillPath):
    found = archive_or_404(request).get_spill(run, spill)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no archived spill {run}/{spill}")
    return found
