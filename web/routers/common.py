"""Shared request helpers."""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.responses import Response

from ...monitor.jsonable import dumps
from ..state import AppState


def state(request: Request) -> AppState:
    return request.app.state.na64


def json_response(value, status_code: int = 200) -> Response:
    """Strict JSON (NaN/inf as null) of already JSON-shaped data."""
    return Response(dumps(value), status_code=status_code, media_type="application/json")


def archive_or_404(request: Request):
    archive = state(request).monitor.archive
    if archive is None:
        raise HTTPException(status_code=404, detail="this service keeps no archive (start it with an archive path)")
    return archive
