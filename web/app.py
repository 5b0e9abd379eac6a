"""FastAPI application factory: ``create_app(config, state)``; one router per resource."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from .config import WebConfig
from .routers import alarms, health, histograms, metrics, spills
from .state import AppState


def create_app(config: WebConfig, state: AppState) -> FastAPI:
    app = FastAPI(title="na64-online", version=__version__, docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.na64 = state
    app.state.config = config
    for module in (spills, histograms, alarms, health, metrics):
        app.include_router(module.router)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    return app
