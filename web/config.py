"""Web settings (the ``[web]`` section of the service configuration)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WebConfig:
    """HTTP server of the service: JSON API, Prometheus ``/metrics``, dashboard."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8064  # 0: any free port
    refresh_seconds: float = 2.0  # dashboard poll interval

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"web port must be within 0..65535, got {self.port}")
        if not 0.2 <= self.refresh_seconds <= 600:
            raise ValueError("refresh_seconds must be within 0.2..600")
