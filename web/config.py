"""Web settings (the ``[web]`` section of the service configuration)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from ..config_section import ConfigSection, FieldProblem
from .auth import token_problem


class WebConfig(ConfigSection):
    """HTTP server of the service: JSON API, Prometheus ``/metrics``, dashboard.

    Writes (every non-GET route) need ``Authorization: Bearer <token>``; the
    tokens are ``tokens`` (name → ``sha256:<hex>``) and the lines of
    ``tokens_file`` (``NAME sha256:<hex>``, re-read when it changes). Without
    any token every write is refused (401); reads stay open.
    """

    section: ClassVar[str] = "web"

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8064, ge=0, le=65535)  # 0: any free port
    #: the dashboard's heartbeat: the service sends every open page a message at least this often (the
    #: spills themselves are pushed as they come); a page that hears nothing for 3 × this says MONITOR DOWN
    refresh_seconds: float = Field(5.0, ge=0.2, le=600)
    #: live service: the event display keeps the candidates' raw events of this many recent spills
    #: (each at most ``[monitor] candidate_events_per_spill`` events of a few kB)
    event_display_spills: int = Field(50, ge=1, le=100000)
    tokens: dict[str, str] = Field(default_factory=dict)  # person's name -> "sha256:<hex>" of their token
    tokens_file: str | None = None  # lines "NAME sha256:<hex>"; re-read when it changes
    max_body_bytes: int = Field(65536, ge=1024, le=64 * 1024 * 1024)  # larger request bodies get 413
    command_timeout_s: float = Field(10.0, ge=0.1, le=600)  # a write waits this long for the service thread, then 503

    @field_validator("tokens")
    @classmethod
    def _hashed(cls, tokens: dict[str, str]) -> dict[str, str]:
        for name, digest in tokens.items():
            problem = token_problem(name, digest)
            if problem is not None:
                raise FieldProblem(name, problem)
        return tokens
