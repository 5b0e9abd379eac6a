"""The shift dashboard page (Bokeh, rebuilt from the latest snapshot on every load)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..dashboard import dashboard_html
from .common import state

router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    monitor = state(request).monitor
    return HTMLResponse(dashboard_html(monitor.latest, monitor.channel_map, request.app.state.config.refresh_seconds))
