"""Shared request helpers: state access, strict JSON, bounded input types, the write credential."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ...monitor.model import dumps
from ..state import AppState

# Run and spill numbers: bounded, so a huge number is a 422 and never reaches SQLite or numpy.
MAX_NUMBER = 2**31 - 1
RunPath = Annotated[int, Path(ge=0, le=MAX_NUMBER, description="run number")]
SpillPath = Annotated[int, Path(ge=0, le=MAX_NUMBER, description="spill number in the run")]
RunQuery = Annotated[int | None, Query(ge=0, le=MAX_NUMBER, description="only this run")]
NameQuery = Annotated[str | None, Query(max_length=128)]
AlarmName = Annotated[str, Path(min_length=1, max_length=128, description="alarm name or occurrence id")]

_bearer = HTTPBearer(auto_error=False, description="a token from `na64-online token NAME`, in [web] tokens")


def state(request: Request) -> AppState:
    return request.app.state.na64


def json_response(value, status_code: int = 200) -> Response:
    """Strict JSON (NaN/inf as null, :func:`~...monitor.model.dumps`) of data or models, for answers that
    are not the route's 200 response model (503 bodies)."""
    return Response(dumps(value), status_code=status_code, media_type="application/json")


class StrictJSONResponse(JSONResponse):
    """The app's default response class: a route's return value, validated against its ``response_model``,
    written by the one serialisation (:func:`~...monitor.model.dumps`: NaN/inf as null)."""

    def render(self, content) -> bytes:
        return dumps(content).encode()


def archive_or_404(request: Request):
    """The web's own read-only archive connection."""
    archive = state(request).archive
    if archive is None:
        raise HTTPException(status_code=404, detail="this service keeps no archive (start it with an archive path)")
    return archive


def authenticated_user(request: Request, token: str | None) -> str:
    """The person a bearer token belongs to; 401 (counted) without one or with a wrong one."""
    web = request.app.state.web
    if not token:
        web.counters.refused("missing_token")
        raise HTTPException(status_code=401, detail="this request changes state: it needs Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": 'Bearer realm="na64-online"'})
    user = web.tokens.user_for(token) if len(token) <= 256 else None
    if user is None:
        web.counters.refused("bad_token")
        raise HTTPException(status_code=401, detail="unknown or revoked token",
                            headers={"WWW-Authenticate": 'Bearer realm="na64-online", error="invalid_token"'})
    return user


def _writer(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
    return authenticated_user(request, credentials.credentials if credentials is not None else None)


#: the name of the person making a write request (from their bearer token)
Writer = Annotated[str, Depends(_writer)]
