"""ZeroMQ endpoint syntax, checked before a socket sees it (libzmq's own error is ``Invalid argument``)."""

from __future__ import annotations

import re

_TCP = re.compile(r"^tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+(?:;[A-Za-z0-9_.-]+)?):(?P<port>\*|\d{1,5})$")
_OTHER = re.compile(r"^(?:ipc|inproc)://\S+$")


def check_endpoint(text: str, what: str = "endpoint") -> str:
    """Return ``text`` if it is a ZeroMQ ``tcp://HOST:PORT`` (PORT may be ``*``), ``ipc://`` or ``inproc://``
    endpoint; raise ``ValueError`` naming ``what`` otherwise."""
    match = _TCP.match(text)
    if match:
        port = match["port"]
        if port == "*" or 0 < int(port) < 65536:
            return text
        raise ValueError(f"{what} {text!r}: port {port} is outside 1..65535")
    if _OTHER.match(text):
        return text
    raise ValueError(f"{what} {text!r} is not a ZeroMQ endpoint (expected tcp://HOST:PORT, ipc://PATH or inproc://NAME)")


def is_loopback(endpoint: str) -> bool:
    """Whether a bind endpoint is reachable from this host only (ipc, inproc, 127.x, ::1, localhost)."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    host = host.strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.") or host == "lo"
