"""Alarms: active ones, history, acknowledgement."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from .common import json_response, state

router = APIRouter(prefix="/api/alarms", tags=["alarms"])


@router.get("")
def active(request: Request):
    return json_response(state(request).monitor.alarms.active())


@router.get("/history")
def history(request: Request, name: str | None = None, alarm_state: str | None = Query(None, alias="state"),
            run: int | None = None, limit: int = Query(500, ge=1, le=10000)):
    engine = state(request).monitor.alarms
    return json_response(engine.history(name=name, state=alarm_state, run=run, limit=limit))


class Acknowledgement(BaseModel):
    user: str
    comment: str = ""


@router.post("/{name}/ack")
def acknowledge(request: Request, name: str, body: Acknowledgement):
    engine = state(request).monitor.alarms
    try:
        return json_response(engine.acknowledge(name, body.user, body.comment))
    except KeyError:
        raise HTTPException(status_code=404, detail=f"no active alarm {name!r}") from None
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
