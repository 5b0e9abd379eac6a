"""The guides at ``/docs`` (the API's own docs are at ``/api/docs``): rendered markdown and its images."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import HTMLResponse

from ..guides import Guides

router = APIRouter(tags=["docs"])
guides = Guides()


@router.get("/docs", response_class=HTMLResponse, summary="the list of guides")
def docs_index() -> HTMLResponse:
    return HTMLResponse(guides.index())


@router.get("/docs/{name}", response_class=HTMLResponse, summary="one guide, e.g. shifter-guide",
            responses={404: {"description": "no such guide"}})
def docs_page(name: str = Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")) -> HTMLResponse:
    page = guides.page(name)
    if page is None:
        raise HTTPException(404, f"no guide {name!r}; see /docs")
    return HTMLResponse(page)
