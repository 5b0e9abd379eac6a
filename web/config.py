"""Web settings (the ``[web]`` section of the service configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import check_tokens


@dataclass(frozen=True)
class WebConfig:
    """HTTP server of the service: JSON API, Prometheus ``/metrics``, dashboard.

    Writes (every non-GET route) need ``Authorization: Bearer <token>``; the
    tokens are ``tokens`` (name → ``sha256:<hex>``) and the lines of
    ``tokens_file`` (``NAME sha256:<hex>``, re-read when it changes). Without
    any token every write is refused (401); reads stay open.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8064  # 0: any free port
    refresh_seconds: float = 2.0  # dashboard poll interval
    tokens: dict[str, str] = field(default_factory=dict)  # person's name -> "sha256:<hex>" of their token
    tokens_file: str | None = None  # lines "NAME sha256:<hex>"; re-read when it changes
    max_body_bytes: int = 65536  # larger request bodies get 413
    command_timeout_s: float = 10.0  # a write waits this long for the service thread, then 503

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"web port must be within 0..65535, got {self.port}")
        if not 0.2 <= self.refresh_seconds <= 600:
            raise ValueError("refresh_seconds must be within 0.2..600")
        check_tokens(self.tokens, "web.tokens")
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise ValueError("max_body_bytes must be within 1024..67108864")
        if not 0.1 <= self.command_timeout_s <= 600:
            raise ValueError("command_timeout_s must be within 0.1..600")
