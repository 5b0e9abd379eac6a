"""Histograms of the latest spill and run-cumulative ones; operator reset; reference spill."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from .common import json_response, state

router = APIRouter(prefix="/api/histograms", tags=["histograms"])


@router.get("/spill")
def spill_histograms(request: Request):
    snapshot = state(request).monitor.latest
    if snapshot is None:
        raise HTTPException(status_code=404, detail="no spill finished yet")
    return json_response(snapshot.histograms)


@router.get("/run")
def run_histograms(request: Request):
    snapshot = state(request).monitor.latest
    if snapshot is None:
        raise HTTPException(status_code=404, detail="no spill finished yet")
    return json_response(snapshot.run_histograms)


class ResetRequest(BaseModel):
    user: str
    reason: str = "operator"


@router.post("/run/reset")
def reset_run(request: Request, body: ResetRequest):
    if not body.user.strip():
        raise HTTPException(status_code=400, detail="a reset needs the name of who resets")
    state(request).monitor.reset_run_histograms(f"{body.reason} ({body.user})")
    return {"reset": True}


class ReferenceRequest(BaseModel):
    run: int
    spill: int | None = None  # None: the whole run, summed


@router.put("/reference")
def set_reference(request: Request, body: ReferenceRequest):
    try:
        state(request).monitor.set_reference(body.run, body.spill)
    except ValueError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    return {"reference": [body.run, body.spill]}
