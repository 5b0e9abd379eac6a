"""Alarm delivery: Alertmanager (``POST /api/v2/alerts``) and the control-room sound."""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any


from .rules import _SEVERITY_RANK

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Alertmanager


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_STOP = object()


class AlertmanagerNotifier:
    """Posts alarms to Alertmanager (``POST /api/v2/alerts``) from a background thread.

    :meth:`notify` never blocks: batches go to a bounded queue (the oldest is
    dropped when it is full, counted in :attr:`dropped`). Each HTTP request has
    ``timeout`` seconds; failures are counted (:attr:`failed`,
    :attr:`last_error`) and logged once per outage. Proxies from the
    environment are not used.

    Alert: labels ``alertname``, ``severity``, ``service`` (+ ``labels``);
    annotations ``summary`` (description), ``description`` (detail),
    ``state``, ``since``, ``acknowledged_by``/``ack_comment`` when
    acknowledged; ``startsAt`` = raised; ``endsAt`` = now +
    ``valid_seconds`` while active, the clearing time once cleared.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        timeout: float = 2.0,
        queue_size: int = 64,
        *,
        valid_seconds: float = 240.0,
        labels: Mapping[str, str] | None = None,
        generator_url: str | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.urls = [u if u.rstrip("/").endswith("/api/v2/alerts") else u.rstrip("/") + "/api/v2/alerts" for u in urls]
        self.timeout = timeout
        self.valid_seconds = valid_seconds
        self.labels = {"service": "na64-online", **dict(labels or {})}
        self.generator_url = generator_url
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._put_lock = threading.Lock()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._thread: threading.Thread | None = None
        self._failing = False

    def to_alert(self, alarm: Mapping[str, Any], now: float) -> dict:
        """The Alertmanager API v2 object for one alarm dict of the engine."""
        annotations = {
            "summary": alarm.get("description") or alarm["name"],
            "description": alarm.get("detail") or "",
            "state": alarm.get("state") or "raised",
            "since": f"run {alarm.get('since_run')} spill {alarm.get('since_spill')}",
        }
        if alarm.get("acknowledged_by"):
            annotations["acknowledged_by"] = str(alarm["acknowledged_by"])
            annotations["ack_comment"] = str(alarm.get("ack_comment") or "")
        cleared = alarm.get("state") == "cleared"
        alert = {
            "labels": {**self.labels, "alertname": alarm["name"], "severity": alarm.get("severity") or "warning"},
            "annotations": annotations,
            "startsAt": _rfc3339(alarm.get("raised_at") or now),
            "endsAt": _rfc3339((alarm.get("cleared_at") or now) if cleared else now + self.valid_seconds),
        }
        if self.generator_url:
            alert["generatorURL"] = self.generator_url
        return alert

    def notify(self, alarms: Sequence[Mapping[str, Any]]) -> bool:
        """Queue alarms (active or just cleared) for sending; ``False`` if an older batch was dropped."""
        if not alarms:
            return True
        now = time.time()
        batch = [self.to_alert(a, now) for a in alarms]
        self._ensure_thread()
        ok = True
        with self._put_lock:
            try:
                self._queue.put_nowait(batch)
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                except queue.Empty:
                    pass
                self.dropped += 1
                ok = False
                self._queue.put_nowait(batch)
        return ok

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="alertmanager-notifier", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                self._queue.task_done()
                return
            # coalesce what else is waiting into one request (later entries win in Alertmanager)
            batches = [batch]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    self._queue.task_done()
                    break
                batches.append(more)
            try:
                self._post([a for b in batches for a in b])
            finally:
                for _ in batches:
                    self._queue.task_done()
            if stop:
                return

    def _post(self, alerts: list[dict]) -> None:
        body = json.dumps(alerts).encode()
        for url in self.urls:
            request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    response.read()
            except Exception as exc:  # URLError, HTTPError, timeout, connection reset, …
                self.failed += 1
                self.last_error = f"{url}: {exc}"
                if not self._failing:
                    log.warning("Alertmanager notification failed (%s); further failures logged at debug level", self.last_error)
                else:
                    log.debug("Alertmanager notification failed (%s), %d failures", self.last_error, self.failed)
                self._failing = True
            else:
                self.sent += 1
                if self._failing:
                    log.info("Alertmanager %s reachable again", url)
                self._failing = False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued batch was attempted; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (waiting at most ``timeout``) and stop the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.flush(timeout)
        with self._put_lock:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                return  # daemon thread; it dies with the process
        self._thread.join(timeout)

    def stats(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error}


class SoundNotifier:
    """The control-room sound: runs ``command`` (+ name, severity, detail) once per raised alarm.

    Only alarms of at least ``min_severity`` sound, once per occurrence (an
    acknowledged, re-sent or cleared alarm stays quiet). The command runs
    detached; while the previous one still plays, a new sound is skipped and
    counted (:attr:`skipped`), so a storm of alarms never piles up processes.
    """

    def __init__(self, command: Sequence[str], min_severity: str = "critical") -> None:
        self.command = list(command)
        self.min_rank = _SEVERITY_RANK[min_severity]
        self._lock = threading.Lock()  # notify() runs in the spill thread and in acknowledging threads
        self._sounded: set[str] = set()
        self._process: subprocess.Popen | None = None
        self.played = 0
        self.skipped = 0
        self.failed = 0

    def notify(self, alarms: list[dict]) -> None:
        with self._lock:
            self._notify_locked(alarms)

    def _notify_locked(self, alarms: list[dict]) -> None:
        for alarm in alarms:
            key = str(alarm.get("alarm_id") or alarm.get("name"))
            if (alarm.get("state") != "raised" or key in self._sounded
                    or _SEVERITY_RANK.get(alarm.get("severity"), 0) < self.min_rank):
                continue
            self._sounded.add(key)
            if self._process is not None and self._process.poll() is None:
                self.skipped += 1
                continue
            try:
                self._process = subprocess.Popen(
                    [*self.command, str(alarm.get("name")), str(alarm.get("severity")), str(alarm.get("detail", ""))],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                self.played += 1
            except OSError as exc:
                self.failed += 1
                log.error("alarm sound command %s failed: %s", self.command[0], exc)

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()


class Notifiers:
    """Several notifiers behind one (Alertmanager and the sound, say)."""

    def __init__(self, notifiers: Sequence) -> None:
        self.notifiers = list(notifiers)

    def notify(self, alarms: list[dict]) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(alarms)
            except Exception:  # one failing notifier must not silence the others
                log.exception("alarm notifier %s failed", type(notifier).__name__)

    def close(self) -> None:
        for notifier in self.notifiers:
            notifier.close()
