"""Log set-up for the long-running commands: plain text, or one JSON object per line (journald, Loki).

Every line carries the spill the service is on — ``run`` and ``spill`` of the
spill being finished, or of the last one finished — from :data:`current_spill`,
which the service sets (:func:`set_spill`) and a :class:`SpillFilter` reads,
so lines from any thread (web, notifier, workers' supervision) have them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
#: how a service passes --log-format to the local worker processes it starts (outside NA64_*: not configuration)
LOG_FORMAT_ENV = "_NA64_ONLINE_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s [run %(run)s spill %(spill)s] %(message)s"


class CurrentSpill:
    """The (run, spill) the service is on; read by every thread's log lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run: int | None = None
        self.spill: int | None = None

    def set(self, run: int | None, spill: int | None) -> None:
        with self._lock:
            self.run, self.spill = run, spill

    def get(self) -> tuple[int | None, int | None]:
        with self._lock:
            return self.run, self.spill


current_spill = CurrentSpill()


def set_spill(run: int | None, spill: int | None) -> None:
    """Log lines from now on name this spill (the service calls it when it starts finishing a spill)."""
    current_spill.set(run, spill)


class SpillFilter(logging.Filter):
    """Adds ``run`` and ``spill`` (None before the first spill) to every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run, record.spill = current_spill.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, run, spill, thread, process;
    ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run": getattr(record, "run", None),
            "spill": getattr(record, "spill", None),
            "thread": record.threadName,
            "process": record.process,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int, log_format: str = "text", stream=None, prefix: str = "") -> None:
    """Root logging to stderr as text (``prefix`` before the logger name) or JSON, run and spill on every line."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(SpillFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter(TEXT_FORMAT.replace("%(name)s", prefix + "%(name)s")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))  # its per-open plugin chatter
