"""The shift dashboard page (Bokeh, rebuilt from the latest snapshot on every load) and its forms."""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ..dashboard import dashboard_html
from .common import state

router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    st = state(request)
    monitor = st.monitor
    return HTMLResponse(dashboard_html(monitor.latest, monitor.channel_map, request.app.state.config.refresh_seconds,
                                       alarms=monitor.alarms.active(),
                                       liveness=st.liveness() if st.liveness is not None else None))


@router.post("/ui/alarms/{name}/ack")
async def acknowledge_form(request: Request, name: str):
    """The dashboard's acknowledge form (urlencoded ``user``, ``comment``); back to the page."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    user = (form.get("user") or [""])[0]
    comment = (form.get("comment") or [""])[0]
    try:
        state(request).monitor.alarms.acknowledge(name, user, comment)
    except (KeyError, ValueError) as exc:
        reason = f"no active alarm {name}" if isinstance(exc, KeyError) else str(exc)
        return HTMLResponse(f'<p>Not acknowledged: {html.escape(reason)}. <a href="/">Back</a></p>',
                            status_code=404 if isinstance(exc, KeyError) else 400)
    return RedirectResponse("/", status_code=303)
