"""Service health: is the service alive, is data flowing (``/api/health``, ``/readyz``)."""

from __future__ import annotations

import time

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ...monitor.model import Model

from ...monitor.metrics import alarm_view
from .common import json_response, state

router = APIRouter(tags=["health"])


def _liveness(st) -> dict | None:
    """The live service's staleness (``monitor.liveness.Liveness``) as a dict; None outside a live service."""
    return st.liveness().to_dict() if st.liveness is not None else None


class HealthAnswer(BaseModel):
    """``/api/health``: the service's state; beside these keys the service's own facts (version, …)
    and, live, ``ingest`` (the ingest's health)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "warming_up", "no_data", "failed"]
    reason: str | None = None
    time: float
    spills_handled: int
    last_spill: tuple[int | None, int | None] | None = None
    last_spill_age_seconds: float | None = None
    latest_message_age_seconds: float | None = None
    liveness: dict[str, Any] | None = None
    monitor: dict[str, Any]


class Readiness(Model):
    """``/readyz``: ``ok``, or why not (with the ages of the latest spill and message)."""

    _omit_if_none = frozenset({"reason", "latest_spill_age_seconds", "latest_message_age_seconds"})

    status: Literal["ok", "warming_up", "no_data", "failed"]
    reason: str | None = None
    latest_spill_age_seconds: float | None = None
    latest_message_age_seconds: float | None = None


@router.get("/api/health", response_model=HealthAnswer,
            responses={503: {"model": HealthAnswer, "description": "the service failed (a core thread died): "
                                                                  "status \"failed\" and the reason; it is about "
                                                                  "to exit"}})
def health(request: Request):
    """``status``: ok | warming_up | no_data (then ``reason``: readout_silent | monitor_stuck)."""
    st = state(request)
    latest = st.monitor.latest
    live = _liveness(st)
    body = {
        "status": live["status"] if live else "ok",
        "reason": live["reason"] if live else None,
        "time": time.time(),
        "spills_handled": st.monitor.spills_handled,
        "last_spill": [latest.record.run, latest.record.spill] if latest else None,
        "last_spill_age_seconds": time.time() - latest.published_at if latest else None,
        "latest_message_age_seconds": live["latest_message_age_seconds"] if live else None,
        "liveness": live,
        "monitor": st.monitor.status(),
        **st.info,
    }
    if st.service_health is not None:
        body["ingest"] = st.service_health()
    body["alertmanager"] = alarm_view(st.monitor.alarms)["delivery"]
    failure = st.failure() if st.failure is not None else None
    if failure:  # a core thread died: the process is about to exit for its supervisor to restart it
        body.update(status="failed", reason=failure)
        return json_response(body, status_code=503)
    return body


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "warming up, no data or failed"}})
def readyz(request: Request):
    """200 while spills come (or outside a live service); 503 while warming up, without data
    for ``[monitor] no_data_after_seconds``, or failed (the body says which)."""
    st = state(request)
    failure = st.failure() if st.failure is not None else None
    if failure:
        return json_response({"status": "failed", "reason": failure}, status_code=503)
    live = _liveness(st)
    if live is None or live["status"] == "ok":
        return Readiness(status="ok")
    return json_response({"status": live["status"], "reason": live["reason"],
                          "latest_spill_age_seconds": live["latest_spill_age_seconds"],
                          "latest_message_age_seconds": live["latest_message_age_seconds"]}, status_code=503)
