"""Alarm delivery: Alertmanager (``POST /api/v2/alerts``) and the control-room sound."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any


from ..model import dumps
from .rules import _SEVERITY_RANK

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Alertmanager


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_STOP = object()
#: the tag an acknowledgement's silence carries in its comment: found again after a restart
SILENCE_TAG = "[na64-online alarm {alarm_id}]"


class SilenceHandle:
    """An acknowledgement's silence in Alertmanager: its id once created (None before, or if it failed)."""

    def __init__(self, alarm_id: str, ends_at: float) -> None:
        self.alarm_id = alarm_id
        self.id: str | None = None
        self.ends_at = ends_at
        self.expired = False


class AlertmanagerNotifier:
    """Posts alarms to Alertmanager (``POST /api/v2/alerts``) and manages silences, from a background thread.

    :meth:`notify` never blocks: batches go to a bounded queue (the oldest is
    dropped when it is full, counted in :attr:`dropped`). Each HTTP request has
    ``timeout`` seconds; failures are counted (:attr:`failed`,
    :attr:`last_error`) and logged once per outage. Proxies from the
    environment are not used.

    Alert: labels ``alertname``, ``severity``, ``category`` and ``labels``
    (``service`` = na64-online unless given; ``instance``, ``job`` … from
    ``[alarms] labels``); annotations ``summary`` (description),
    ``description`` (detail), ``runbook_url``, ``state``, ``since``,
    ``acknowledged_by``/``ack_comment`` when acknowledged; ``generatorURL``
    (the dashboard); ``startsAt`` = raised; ``endsAt`` = now +
    ``valid_seconds`` while active, the clearing time once cleared.

    Silences (:meth:`silence`, :meth:`expire`, :meth:`renew`) go through the
    same queue and thread, in order, so an expiry always follows its creation.
    :meth:`silences_by_alert` reads back what silences each of our alerts
    (called from the engine's delivery timer, never from the spill thread).
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
        self.bases = [u.rstrip("/").removesuffix("/api/v2/alerts") for u in urls]
        self.urls = [b + "/api/v2/alerts" for b in self.bases]
        self.timeout = timeout
        self.valid_seconds = valid_seconds
        self.labels = {"service": "na64-online", **dict(labels or {})}
        self.generator_url = generator_url
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._put_lock = threading.Lock()
        import urllib.request  # the HTTP client (http.client, email, ssl) only where an Alertmanager is configured

        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._thread: threading.Thread | None = None
        self._failing = False

    def alert_labels(self, alarm: Mapping[str, Any]) -> dict[str, str]:
        """The labels of an alarm's alert (also the matchers of its acknowledgement's silence)."""
        return {**self.labels, "alertname": str(alarm["name"]), "severity": str(alarm.get("severity") or "warning"),
                "category": str(alarm.get("category") or "physics")}

    def to_alert(self, alarm: Mapping[str, Any], now: float) -> dict:
        """The Alertmanager API v2 object for one alarm dict of the engine."""
        annotations = {
            "summary": alarm.get("description") or alarm["name"],
            "description": alarm.get("detail") or "",
            "state": alarm.get("state") or "raised",
            "since": f"run {alarm.get('since_run')} spill {alarm.get('since_spill')}",
        }
        if alarm.get("runbook_url"):
            annotations["runbook_url"] = str(alarm["runbook_url"])
        if alarm.get("acknowledged_by"):
            annotations["acknowledged_by"] = str(alarm["acknowledged_by"])
            annotations["ack_comment"] = str(alarm.get("ack_comment") or "")
        cleared = alarm.get("state") == "cleared"
        alert = {
            "labels": self.alert_labels(alarm),
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
        return self._put(("alerts", [self.to_alert(a, now) for a in alarms]))

    # ---------------------------------------------------------------- silences

    def silence(self, alarm: Mapping[str, Any], user: str, comment: str, seconds: float) -> SilenceHandle:
        """Queue a silence of exactly this alarm's alert (every label, equal) for ``seconds``, by ``user``."""
        now = time.time()
        handle = SilenceHandle(str(alarm["alarm_id"]), now + seconds)
        body = {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True}
                         for k, v in sorted(self.alert_labels(alarm).items())],
            "startsAt": _rfc3339(now), "endsAt": _rfc3339(handle.ends_at), "createdBy": user,
            "comment": f"{comment or 'acknowledged'} — acknowledged in na64-online; ends when the alarm clears "
                       + SILENCE_TAG.format(alarm_id=handle.alarm_id),
        }
        self._put(("silence", (handle, body)))
        return handle

    def renew(self, handle: SilenceHandle, seconds: float) -> None:
        """Queue moving the silence's end to now + ``seconds`` (it stays the same silence)."""
        self._put(("renew", (handle, seconds)))

    def expire(self, handle: SilenceHandle) -> None:
        """Queue ending the silence (the alarm cleared)."""
        self._put(("expire", handle))

    def silences_by_alert(self, alertnames: Sequence[str]) -> dict[str, list[dict]]:
        """The active silences muting each of our alerts now (``GET /api/v2/alerts`` → ``silencedBy``), from the
        first Alertmanager that answers: ``{alertname: [{id, created_by, comment, ends_at}]}``."""
        wanted = set(alertnames)
        if not wanted:
            return {}
        filters = "&".join("filter=" + urllib.parse.quote(f'{k}="{v}"') for k, v in self.labels.items())
        for base in self.bases:
            try:
                alerts = self._get_json(f"{base}/api/v2/alerts?active=true&silenced=true&inhibited=true&{filters}")
                silences = {s["id"]: s for s in self._get_json(f"{base}/api/v2/silences")
                            if s.get("status", {}).get("state") == "active"}
            except Exception as exc:  # noqa: BLE001 - unreachable, bad answer: try the next one
                self._failure(base, exc)
                continue
            out: dict[str, list[dict]] = {}
            for alert in alerts:
                name = alert.get("labels", {}).get("alertname")
                if name not in wanted:
                    continue
                for sid in alert.get("status", {}).get("silencedBy") or ():
                    s = silences.get(sid)
                    if s is not None:
                        out.setdefault(name, []).append({"id": sid, "created_by": s.get("createdBy"),
                                                         "comment": s.get("comment"), "ends_at": s.get("endsAt")})
            return out
        return {}

    # ---------------------------------------------------------------- the sender thread

    def _put(self, item) -> bool:
        self._ensure_thread()
        ok = True
        with self._put_lock:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                except queue.Empty:
                    pass
                self.dropped += 1
                ok = False
                self._queue.put_nowait(item)
        return ok

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="alertmanager-notifier", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            # coalesce alert batches waiting behind this one into one request (later entries win in Alertmanager)
            items = [item]
            stop = False
            while item[0] == "alerts":
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    self._queue.task_done()
                    break
                items.append(more)
                if more[0] != "alerts":
                    break
            try:
                alerts = [a for kind, payload in items if kind == "alerts" for a in payload]
                if alerts:
                    self._post(alerts)
                for kind, payload in items:
                    if kind != "alerts":
                        self._silence_op(kind, payload)
            except Exception:  # noqa: BLE001 - the sender thread never dies
                log.exception("Alertmanager sender failed")
            finally:
                for _ in items:
                    self._queue.task_done()
            if stop:
                return

    def _request(self, url: str, body: bytes | None = None, method: str = "GET") -> bytes:
        import urllib.request

        request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
        with self._opener.open(request, timeout=self.timeout) as response:
            return response.read()

    def _get_json(self, url: str):
        return json.loads(self._request(url))

    def _success(self, url: str) -> None:
        self.sent += 1
        self.last_success = time.time()
        if self._failing:
            log.info("Alertmanager %s reachable again", url)
        self._failing = False

    def _failure(self, url: str, exc: Exception) -> None:
        self.failed += 1
        self.last_error = f"{url}: {exc}"
        if not self._failing:
            log.warning("Alertmanager notification failed (%s); further failures logged at debug level", self.last_error)
        else:
            log.debug("Alertmanager notification failed (%s), %d failures", self.last_error, self.failed)
        self._failing = True

    def _post(self, alerts: list[dict]) -> None:
        body = dumps(alerts).encode()  # the one serialisation (monitor.model): NaN as null, strict JSON
        for url in self.urls:
            try:
                self._request(url, body, "POST")
            except Exception as exc:  # URLError, HTTPError, timeout, connection reset, …
                self._failure(url, exc)
            else:
                self._success(url)

    def _silence_op(self, kind: str, payload) -> None:
        """Create, renew or expire a silence, in the first Alertmanager that takes it (a cluster shares them)."""
        if kind == "silence":
            handle, body = payload
            if handle.expired:
                return
            self._post_silence(handle, body)
        elif kind == "renew":
            handle, seconds = payload
            if handle.id is None or handle.expired:
                return
            for base in self.bases:
                try:
                    current = self._get_json(f"{base}/api/v2/silence/{handle.id}")
                except Exception as exc:  # noqa: BLE001
                    self._failure(base, exc)
                    continue
                handle.ends_at = time.time() + seconds
                body = {k: current[k] for k in ("matchers", "startsAt", "createdBy", "comment")}
                body.update(id=handle.id, endsAt=_rfc3339(handle.ends_at))
                self._post_silence(handle, body)
                return
        elif kind == "expire":
            handle = payload
            handle.expired = True
            if handle.id is None:
                return
            for base in self.bases:
                try:
                    self._request(f"{base}/api/v2/silence/{handle.id}", method="DELETE")
                except Exception as exc:  # noqa: BLE001
                    self._failure(base, exc)
                    continue
                self._success(base)
                return

    def _post_silence(self, handle: SilenceHandle, body: dict) -> None:
        for base in self.bases:
            try:
                answer = json.loads(self._request(f"{base}/api/v2/silences", json.dumps(body).encode(), "POST"))
            except Exception as exc:  # noqa: BLE001
                self._failure(base, exc)
                continue
            self._success(base)
            handle.id = answer.get("silenceID") or handle.id
            return

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued item was attempted; ``False`` on timeout."""
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
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error,
                "last_success": self.last_success}


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
            import subprocess  # only with a sound command configured (replay without one never loads it)

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
            import subprocess

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

    def alertmanager(self) -> AlertmanagerNotifier | None:
        return next((n for n in self.notifiers if isinstance(n, AlertmanagerNotifier)), None)
