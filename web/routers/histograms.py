"""Histograms of the latest spill and run-cumulative ones; operator reset; reference spill.

The two writes run in the service thread (the one that fills the
histograms), through :meth:`~..state.AppState.command`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from ...monitor import model_served
from .common import MAX_NUMBER, Writer, state

router = APIRouter(prefix="/api/histograms", tags=["histograms"])


@router.get("/spill", response_model=model_served.HistogramSetJSON)
def spill_histograms(request: Request):
    snapshot = state(request).monitor.latest
    if snapshot is None:
        raise HTTPException(status_code=404, detail="no spill finished yet")
    return snapshot.histograms


@router.get("/run", response_model=model_served.HistogramSetJSON)
def run_histograms(request: Request):
    snapshot = state(request).monitor.latest
    if snapshot is None:
        raise HTTPException(status_code=404, detail="no spill finished yet")
    return snapshot.run_histograms


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("operator", min_length=1, max_length=200)


class ResetAnswer(BaseModel):
    reset: bool
    user: str


@router.post("/run/reset", response_model=ResetAnswer)
def reset_run(request: Request, user: Writer, body: ResetRequest | None = None):
    """Reset the run-cumulative histograms (who resets: the token's owner)."""
    reason = f"{(body or ResetRequest()).reason} ({user})"
    monitor = state(request).monitor
    state(request).command(lambda: monitor.reset_run_histograms(reason))
    return {"reset": True, "user": user}


Number = Annotated[int, Field(ge=0, le=MAX_NUMBER)]


class ReferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: Number
    spill: Number | None = None  # None: the whole run, summed


class ReferenceAnswer(BaseModel):
    #: (run, spill); spill null: the whole run, summed
    reference: tuple[int, int | None]
    user: str


@router.put("/reference", response_model=ReferenceAnswer)
def set_reference(request: Request, user: Writer, body: ReferenceRequest):
    """Compare spectra with this archived spill (or the whole run, summed) from the next spill on.

    The histograms are read here, through the web's own connection; the service thread only takes them
    (an archive that does not answer holds this request, never the spill loop)."""
    from ...monitor.spill_monitor import reference_histograms

    monitor = state(request).monitor
    try:
        hists = reference_histograms(state(request).archive, body.run, body.spill)
        state(request).command(lambda: monitor.use_reference(body.run, body.spill, hists))
    except ValueError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    return {"reference": [body.run, body.spill], "user": user}
