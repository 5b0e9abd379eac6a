"""Alarms: active ones, history, acknowledgement (by the token's owner, in the service thread)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ...monitor import model
from .common import AlarmName, NameQuery, RunQuery, Writer, state

router = APIRouter(prefix="/api/alarms", tags=["alarms"])


@router.get("", response_model=list[model.ActiveAlarm])
def active(request: Request):
    """Active alarms (raised or acknowledged), most severe first."""
    return state(request).monitor.alarms.active()


@router.get("/history", response_model=list[model.AlarmEvent])
def history(request: Request, name: NameQuery = None,
            alarm_state: Literal["raised", "acknowledged", "cleared"] | None = Query(None, alias="state"),
            run: RunQuery = None, limit: int = Query(500, ge=1, le=10000)):
    st = state(request)
    filters = dict(name=name, state=alarm_state, run=run, limit=limit)
    if st.archive is not None:  # the web's own read-only connection
        return st.archive.alarm_history(**filters)
    return st.monitor.alarms.history(**filters)


class Acknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field("", max_length=2000)


def acknowledge_alarm(request: Request, name: str, user: str, comment: str) -> dict:
    """Acknowledge in the service thread; ``KeyError`` if no such alarm is active."""
    engine = state(request).monitor.alarms
    return state(request).command(lambda: engine.acknowledge(name, user, comment))


@router.post("/{name}/ack", response_model=model.ActiveAlarm)
def acknowledge(request: Request, name: AlarmName, user: Writer, body: Acknowledgement):
    """Acknowledge an active alarm; every acknowledgement is kept (``acknowledgements``)."""
    try:
        return acknowledge_alarm(request, name, user, body.comment)
    except KeyError:
        raise HTTPException(status_code=404, detail=f"no active alarm {name!r}") from None
