"""FastAPI application factory: ``create_app(config, state)``; one router per resource.

Around the routers: request bodies are bounded (413), every write needs a
bearer token (401), bad input is a 422 naming the field, an unexpected error
is a 500 with a one-line JSON body (logged, never a traceback to the client),
and the API docs are served with Swagger UI from the installed
``swagger_ui_bundle`` package (no CDN).
"""

from __future__ import annotations

import logging
import threading
import weakref

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..errors import ArchiveUnavailable
from .auth import CsrfSigner, TokenBook
from .config import WebConfig
from .guides import DOCS_DIR as GUIDES_DIR
from .live import WebsocketOrigin, mount_dashboard
from .routers import alarms, detectors, docs, health, histograms, metrics, spills
from .routers.common import StrictJSONResponse
from .state import AppState, CommandUnavailable

log = logging.getLogger(__name__)

DOCS_STATIC_ROUTE = "/api/docs/static"
REFUSAL_REASONS = ("missing_token", "bad_token", "bad_csrf", "bad_origin", "body_too_large", "invalid_input",
                   "unavailable", "server_error")


class WebCounters:
    """Refused or failed HTTP requests by reason; a Prometheus collector read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(REFUSAL_REASONS, 0)

    def refused(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1

    def collect(self):
        family = CounterMetricFamily("na64_web_refused_requests", "HTTP requests refused or failed, by reason",
                                     labels=["reason"])
        with self._lock:
            for reason, n in self.counts.items():
                family.add_metric([reason], n)
        yield family


_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _counters_for(registry: CollectorRegistry) -> WebCounters:
    """One :class:`WebCounters` per registry (apps built again on one registry share it)."""
    counters = _COUNTERS.get(registry)
    if counters is None:
        counters = _COUNTERS[registry] = WebCounters()
        registry.register(counters)
    return counters


class WebContext:
    """Per-app security state: the tokens in force, the CSRF signer, the counters."""

    def __init__(self, config: WebConfig, registry: CollectorRegistry) -> None:
        self.tokens = TokenBook(config.tokens, config.tokens_file)
        self.csrf = CsrfSigner()
        self.counters = _counters_for(registry)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (declared or streamed) gets 413 before any route."""

    def __init__(self, app, max_bytes: int, counters: WebCounters) -> None:
        self.app, self.max_bytes, self.counters = app, max_bytes, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        try:
            too_large = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            too_large = False
        if too_large:
            return await self._refuse(send)
        # read the (small) body here, bounded, then hand it on: a streamed body without a length is bounded too
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                return await self._refuse(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # the disconnect, when it comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        self.counters.refused("body_too_large")
        body = ('{"detail":"request body larger than %d bytes"}' % self.max_bytes).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class InternalErrors:
    """ASGI middleware: an unexpected exception is logged with its traceback and answered with a one-line
    JSON 500 (counted); the client never sees a traceback and the connection stays usable."""

    def __init__(self, app, counters: WebCounters) -> None:
        self.app, self.counters = app, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the general handler
            self.counters.refused("server_error")
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise
            body = ('{"detail":"internal error (%s); see the service log"}' % type(exc).__name__).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def create_app(config: WebConfig, state: AppState) -> FastAPI:
    app = FastAPI(title="na64-online", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", default_response_class=StrictJSONResponse)
    app.state.na64 = state
    app.state.config = config
    app.state.web = web = WebContext(config, state.registry)
    for module in (spills, histograms, alarms, health, metrics, detectors, docs):
        app.include_router(module.router)
    # the shift dashboard (Bokeh server documents, pushed over /ws) and BokehJS at /static, from the bokeh
    # package; Swagger UI from swagger_ui_bundle: dashboard and docs need no internet access
    mount_dashboard(app, state, web, heartbeat_seconds=config.refresh_seconds)
    app.mount(DOCS_STATIC_ROUTE, StaticFiles(directory=str(swagger_ui_path)), name="docs-static")
    if (GUIDES_DIR / "img").is_dir():  # the guides' screenshots
        app.mount("/docs/img", StaticFiles(directory=str(GUIDES_DIR / "img")), name="guides-img")

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title="na64-online API",
            swagger_js_url=f"{DOCS_STATIC_ROUTE}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC_ROUTE}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC_ROUTE}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)[:500]})

    @app.exception_handler(RequestValidationError)
    async def invalid_input(request: Request, exc: RequestValidationError) -> JSONResponse:
        web.counters.refused("invalid_input")
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200], "type": e.get("type")}
                  for e in exc.errors()[:20]]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(CommandUnavailable)
    @app.exception_handler(ArchiveUnavailable)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        web.counters.refused("unavailable")
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "5"})

    app.add_middleware(InternalErrors, counters=web.counters)  # innermost of the two: sees the routes' errors
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, counters=web.counters)
    app.add_middleware(WebsocketOrigin, path="/ws", counters=web.counters)
    return app

