"""Service health: is the service alive, is data flowing."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from .common import json_response, state

router = APIRouter(tags=["health"])


@router.get("/api/health", responses={503: {"description": "the service failed (a core thread died): "
                                                         "status \"failed\" and the reason; it is about to exit"}})
def health(request: Request):
    st = state(request)
    latest = st.monitor.latest
    body = {
        "status": "ok",
        "time": time.time(),
        "spills_handled": st.monitor.spills_handled,
        "last_spill": [latest.record.get("run"), latest.record.get("spill")] if latest else None,
        "last_spill_age_seconds": time.time() - latest.published_at if latest else None,
        "monitor": st.monitor.status(),
        **st.info,
    }
    if st.service_health is not None:
        body["ingest"] = st.service_health()
    failure = st.failure() if st.failure is not None else None
    if failure:  # a core thread died: the process is about to exit for its supervisor to restart it
        body.update(status="failed", reason=failure)
        return json_response(body, status_code=503)
    return json_response(body)
