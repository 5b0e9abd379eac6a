"""systemd's notification protocol (sd_notify) over ``$NOTIFY_SOCKET``, without a library.

A ``Type=notify`` unit learns from these datagrams that the service is ready
(``READY=1``, once warm and subscribed), alive (``WATCHDOG=1``, sent from the
service loop at half of ``WatchdogSec``: a stuck loop stops sending and systemd
restarts the service) and stopping (``STOPPING=1``). Outside systemd
(``NOTIFY_SOCKET`` unset) every call does nothing. The socket path may be a
file or, with a leading ``@``, an abstract socket.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify datagrams; ``watchdog_interval_s`` is None without a watchdog for this process."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None, clock=time.monotonic) -> None:
        self.address: str | bytes | None = None
        if socket_path:
            self.address = b"\0" + socket_path[1:].encode() if socket_path.startswith("@") else socket_path
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self.clock = clock
        self._next_ping = 0.0
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_environment(cls, environ=os.environ) -> "SystemdNotifier":
        """From ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (honoured only if ``WATCHDOG_PID`` is unset or this process)."""
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        try:
            watchdog = int(usec) if usec and (not pid or int(pid) == os.getpid()) else None
        except ValueError:
            log.warning("ignoring a bad WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, pid)
            watchdog = None
        return cls(environ.get("NOTIFY_SOCKET"), watchdog if watchdog and watchdog > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(message, self.address)
            except OSError as exc:
                self.failed += 1
                if self.failed == 1:
                    log.warning("sd_notify to %r failed: %s", self.address, exc)
                return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` if a watchdog is set and half its period passed since the last ping (call it from the
        service loop as often as you like)."""
        if self.watchdog_interval_s is None or self.address is None:
            return False
        now = self.clock()
        if now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_interval_s
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
