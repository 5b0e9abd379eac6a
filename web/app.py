"""FastAPI application factory: ``create_app(config, state)``; one router per resource."""

from __future__ import annotations

from bokeh.util.paths import bokehjs_path
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .config import WebConfig
from .dashboard import BOKEH_STATIC_ROUTE
from .routers import alarms, dashboard, health, histograms, metrics, spills
from .state import AppState


def create_app(config: WebConfig, state: AppState) -> FastAPI:
    app = FastAPI(title="na64-online", version=__version__, docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.na64 = state
    app.state.config = config
    for module in (dashboard, spills, histograms, alarms, health, metrics):
        app.include_router(module.router)
    # BokehJS from the installed bokeh package: the dashboard needs no internet access
    app.mount(BOKEH_STATIC_ROUTE, StaticFiles(directory=str(bokehjs_path())), name="bokeh-static")

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    return app
