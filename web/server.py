"""Run the web app with uvicorn in a background thread of the service process."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


class WebServer:
    """uvicorn serving ``app`` on (host, port) in a daemon thread; ``port`` 0 picks a free one."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                     lifespan="off", access_log=False,
                                                     ws_ping_interval=20.0, ws_ping_timeout=60.0,
                                                     ws_per_message_deflate=False))
        self._thread = threading.Thread(target=self._server.run, name="na64-web", daemon=True)
        self.host = host

    def start(self, timeout_s: float = 10.0) -> "WebServer":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the web server did not start (is the port in use?)")
            time.sleep(0.02)
        return self

    @property
    def alive(self) -> bool:
        """Whether the server thread is running."""
        return self._thread.is_alive()

    @property
    def port(self) -> int:
        sockets = [s for server in self._server.servers for s in server.sockets]
        return sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
