"""The archive's settings (``[archive]``): apart from the store, so that reading the configuration does not
load SQLAlchemy (a ``replay`` without an archive never does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ...config_section import ConfigSection
from ...errors import ConfigError

#: the processing version of rows written without one
UNVERSIONED = "unversioned"


class ArchiveConfig(ConfigSection):
    """Archive settings (``[archive]``; ``ArchiveConfig(path, …)`` takes the path first).

    ``path``: the SQLite file; ``url``: instead, a database URL (``postgresql://user@host/db``,
    or ``sqlite:///path``) — hosts that share one archive use PostgreSQL.
    ``retention_spills``/``retention_days``: ``None`` keeps everything.
    ``alarm_history_days``: ``None`` keeps the whole alarm history.
    ``synchronous``: SQLite ``PRAGMA synchronous`` (``FULL``, ``NORMAL`` or ``EXTRA``).
    The live service writes on a thread of its own (:mod:`.writer`): ``queue_spills`` spills may wait
    for a database that hangs or is down (more are not archived, and counted); a spill's finish waits
    ``answer_timeout_s`` at most for the archive's collision answer; a stop waits ``drain_timeout_s``
    for the writes still queued.
    """

    section: ClassVar[str] = "archive"

    path: Path = Path("na64-online.sqlite")
    retention_spills: int | None = Field(None, ge=1)
    retention_days: float | None = Field(None, gt=0)
    alarm_history_days: float | None = Field(None, gt=0)
    synchronous: str = "FULL"
    url: str | None = None
    queue_spills: int = Field(256, ge=1)
    answer_timeout_s: float = Field(1.0, gt=0)
    drain_timeout_s: float = Field(10.0, ge=0)

    def __init__(self, path: str | os.PathLike | None = None, /, **values: Any) -> None:
        if path is not None:
            values["path"] = path
        super().__init__(**values)

    @field_validator("synchronous")
    @classmethod
    def _pragma(cls, value: str) -> str:
        if value.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"must be FULL, NORMAL or EXTRA, not {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                from .store import database_url  # SQLAlchemy, only when a URL is configured

                database_url(value)  # refused here, with the key named, rather than at first use
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def target(self) -> str:
        return self.url if self.url is not None else str(self.path)


def is_url(target: str | os.PathLike) -> bool:
    return "://" in str(target)


