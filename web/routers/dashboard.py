"""The shift dashboard page (Bokeh, rebuilt from the latest snapshot on every load) and its forms.

The acknowledge form posts the shifter's own token (typed once per browser
tab, kept in sessionStorage) and a CSRF token: the page sets a random nonce
cookie and signs it into each form (signed double submit); a post without
both, or with a mismatch, is refused (403) and counted.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from ..auth import CsrfSigner
from ..dashboard import dashboard_html
from .alarms import acknowledge_alarm
from .common import AlarmName, authenticated_user, state

router = APIRouter(tags=["dashboard"])

MAX_COMMENT = 2000


_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}


@router.get("/", response_class=HTMLResponse, responses={200: {"description": "the dashboard page", **_HTML}})
def dashboard(request: Request) -> HTMLResponse:
    st = state(request)
    monitor = st.monitor
    signer: CsrfSigner = request.app.state.web.csrf
    nonce = request.cookies.get(CsrfSigner.COOKIE)
    if not nonce or len(nonce) > 64:
        nonce = CsrfSigner.new_nonce()
    page = HTMLResponse(dashboard_html(monitor.latest, monitor.channel_map, request.app.state.config.refresh_seconds,
                                       alarms=monitor.alarms.active(), csrf=signer.sign(nonce),
                                       liveness=st.liveness() if st.liveness is not None else None))
    page.set_cookie(CsrfSigner.COOKIE, nonce, httponly=True, samesite="strict", path="/ui")
    return page


def _refusal(status: int, reason: str) -> HTMLResponse:
    return HTMLResponse(f'<p>Not acknowledged: {html.escape(reason)}. <a href="/">Back</a></p>', status_code=status)


@router.post("/ui/alarms/{name}/ack", response_class=HTMLResponse,
             responses={200: {"description": "why the acknowledgement was refused", **_HTML},
                        303: {"description": "acknowledged: back to the dashboard"}})
async def acknowledge_form(request: Request, name: AlarmName):
    """The dashboard's acknowledge form (urlencoded ``token``, ``comment``, ``csrf``); back to the page."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    field = lambda key: (form.get(key) or [""])[0]  # noqa: E731
    web = request.app.state.web
    if not web.csrf.verify(request.cookies.get(CsrfSigner.COOKIE), field("csrf")):
        web.counters.refused("bad_csrf")
        return _refusal(403, "the form is stale or did not come from this dashboard; reload the page")
    try:
        user = authenticated_user(request, field("token"))
    except HTTPException as exc:
        return _refusal(401, str(exc.detail))
    comment = field("comment")
    if len(comment) > MAX_COMMENT:
        return _refusal(422, f"the comment is longer than {MAX_COMMENT} characters")
    try:
        acknowledge_alarm(request, name, user, comment)
    except KeyError:
        return _refusal(404, f"no active alarm {name}")
    return RedirectResponse("/", status_code=303)
