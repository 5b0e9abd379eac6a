"""Service health: is the service alive, is data flowing (``/api/health``, ``/readyz``)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ...monitor.metrics import alarm_view
from .common import json_response, state

router = APIRouter(tags=["health"])


def _liveness(st) -> dict | None:
    """The live service's staleness (``monitor.liveness.Liveness``) as a dict; None outside a live service."""
    return st.liveness().to_dict() if st.liveness is not None else None


@router.get("/api/health", responses={503: {"description": "the service failed (a core thread died): "
                                                         "status \"failed\" and the reason; it is about to exit"}})
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
        "last_spill": [latest.record.get("run"), latest.record.get("spill")] if latest else None,
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
    return json_response(body)


@router.get("/readyz")
def readyz(request: Request):
    """200 while spills come (or outside a live service); 503 while warming up, without data
    for ``[monitor] no_data_after_seconds``, or failed (the body says which)."""
    st = state(request)
    failure = st.failure() if st.failure is not None else None
    if failure:
        return json_response({"status": "failed", "reason": failure}, status_code=503)
    live = _liveness(st)
    if live is None or live["status"] == "ok":
        return json_response({"status": "ok"})
    return json_response({"status": live["status"], "reason": live["reason"],
                          "latest_spill_age_seconds": live["latest_spill_age_seconds"],
                          "latest_message_age_seconds": live["latest_message_age_seconds"]}, status_code=503)
