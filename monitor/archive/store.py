"""Per-spill archive: an embedded SQLite database in WAL mode.

One row per spill holds the QA record (JSON), its quality states and the
overall quality; the spill's histograms sit next to it as compact blobs; alarm
life-cycle events (raised / acknowledged / cleared) are kept as a searchable
history. Everything a spill brings is written in ONE transaction
(:meth:`Archive.store_spill`), so a crash or ``SIGKILL`` leaves either the whole
spill or nothing of it; SQLite replays its write-ahead log when the file is
opened again, and every spill committed before the crash is there.

Durability: ``synchronous=FULL`` by default (one fsync per spill, nothing lost
even on power failure); ``NORMAL`` survives process crashes but may lose the
last spills on a power cut.

Threads and processes: one :class:`Archive` is the single writer; its methods
may be called from several threads (an internal lock serialises them, e.g. the
spill loop storing and the web thread acknowledging an alarm). Readers in other
processes (or threads that want not to wait for the writer) open their own
connection with ``Archive(path, readonly=True)``; WAL lets them read while the
writer writes.

Histograms are stored as zlib-compressed blobs: the UHI serialisation of the
``hist.Hist`` (axes, storage type, metadata) as JSON plus the raw bytes of its
storage arrays, flow bins included, so they come back exactly
(:func:`encode_histogram` / :func:`decode_histogram`). They can be exported
to ROOT files with uproot (:meth:`Archive.export_histograms_root`) and to JSON
(UHI schema, :meth:`Archive.export_histograms_json`).

Retention: ``retention_spills`` keeps the newest N spills stored,
``retention_days`` drops spills whose time (the record's ``finished_at``, else
``finished`` or ``started``, else when it was stored) is older; both are applied after each
stored spill. Alarm history is kept unless ``alarm_history_days`` is set.

Schema version in ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ...config_section import ConfigSection
from ...errors import ArchiveError
from .codec import _as_dict, _dumps, _state_of, decode_histogram, encode_histogram
from .exports import ArchiveExports

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE spills (
    id          INTEGER PRIMARY KEY,
    run         INTEGER NOT NULL,
    spill       INTEGER NOT NULL,
    time        REAL    NOT NULL,   -- spill time (record 'finished_at'/'finished'/'started', else stored_at), unix s
    stored_at   REAL    NOT NULL,
    overall     TEXT,               -- quality['overall'], upper case; NULL when no quality given
    complete    INTEGER,
    events      INTEGER,
    eot         REAL,
    hadron_fraction REAL,
    record      TEXT    NOT NULL,   -- QA record, JSON
    quality     TEXT,               -- quality states, JSON
    UNIQUE (run, spill)
);
CREATE INDEX spills_time    ON spills (time);
CREATE INDEX spills_overall ON spills (overall, run, spill);

CREATE TABLE histograms (
    id       INTEGER PRIMARY KEY,
    spill_id INTEGER NOT NULL REFERENCES spills (id) ON DELETE CASCADE,
    name     TEXT    NOT NULL,
    data     BLOB    NOT NULL,      -- encode_histogram()
    UNIQUE (spill_id, name)
);

-- one row per alarm occurrence (raised ... cleared)
CREATE TABLE alarms (
    alarm_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    state         TEXT NOT NULL,    -- raised | acknowledged | cleared
    detail        TEXT,
    description   TEXT,
    since_run     INTEGER,          -- first spill where the condition held
    since_spill   INTEGER,
    raised_at     REAL,
    raised_run    INTEGER,
    raised_spill  INTEGER,
    acked_by      TEXT,
    ack_comment   TEXT,
    acked_at      REAL,
    cleared_at    REAL,
    cleared_run   INTEGER,
    cleared_spill INTEGER,
    updated_at    REAL NOT NULL
);
CREATE INDEX alarms_name  ON alarms (name, raised_at);
CREATE INDEX alarms_state ON alarms (state);

-- every life-cycle transition
CREATE TABLE alarm_events (
    id        INTEGER PRIMARY KEY,
    time      REAL NOT NULL,
    alarm_id  TEXT NOT NULL,
    name      TEXT NOT NULL,
    severity  TEXT,
    state     TEXT NOT NULL,        -- raised | acknowledged | cleared
    run       INTEGER,
    spill     INTEGER,
    detail    TEXT,
    user      TEXT,
    comment   TEXT
);
CREATE INDEX alarm_events_time  ON alarm_events (time);
CREATE INDEX alarm_events_name  ON alarm_events (name, time);
CREATE INDEX alarm_events_spill ON alarm_events (run, spill);
CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id);
"""

# v2: a (run, spill) may hold several rows — fragments of one spill, never replaced by each other
# (``fragment`` numbers them, ``collision`` marks every row of a key stored more than once).
# SQLite cannot drop a UNIQUE constraint: the table is rebuilt (foreign keys off, see _migrate).
_SCHEMA_V2 = """
CREATE TABLE spills_v2 (
    id          INTEGER PRIMARY KEY,
    run         INTEGER NOT NULL,
    spill       INTEGER NOT NULL,
    fragment    INTEGER NOT NULL DEFAULT 0,  -- 0, 1, ...: rows of the same (run, spill) in the order stored
    collision   INTEGER NOT NULL DEFAULT 0,  -- 1: another, different row has the same (run, spill)
    time        REAL    NOT NULL,
    stored_at   REAL    NOT NULL,
    overall     TEXT,
    complete    INTEGER,
    events      INTEGER,
    eot         REAL,
    hadron_fraction REAL,
    record      TEXT    NOT NULL,
    quality     TEXT,
    UNIQUE (run, spill, fragment)
);
INSERT INTO spills_v2 (id, run, spill, time, stored_at, overall, complete, events, eot, hadron_fraction, record, quality)
    SELECT id, run, spill, time, stored_at, overall, complete, events, eot, hadron_fraction, record, quality FROM spills;
DROP TABLE spills;
ALTER TABLE spills_v2 RENAME TO spills;
CREATE INDEX spills_time    ON spills (time);
CREATE INDEX spills_overall ON spills (overall, run, spill);
"""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}

#: the row a (run, spill) stands for when it has several: complete first, then the most events, then the first stored
_BEST_ROW = "ORDER BY complete DESC, events DESC, fragment ASC LIMIT 1"


class ArchiveConfig(ConfigSection):
    """Archive settings (``[archive]``; ``ArchiveConfig(path, …)`` takes the path first).

    ``retention_spills``/``retention_days``: ``None`` keeps everything.
    ``alarm_history_days``: ``None`` keeps the whole alarm history.
    ``synchronous``: SQLite ``PRAGMA synchronous`` (``FULL``, ``NORMAL`` or ``EXTRA``).
    """

    section: ClassVar[str] = "archive"

    path: Path = Path("na64-online.sqlite")
    retention_spills: int | None = Field(None, ge=1)
    retention_days: float | None = Field(None, gt=0)
    alarm_history_days: float | None = Field(None, gt=0)
    synchronous: str = "FULL"

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


def _name_clause(name: str) -> tuple[str, str]:
    """Exact match, or ``LIKE`` when the name holds ``*``/``%`` wildcards."""
    if "*" not in name and "%" not in name:
        return "name = ?", name
    pattern = name.replace("\\", "\\\\").replace("_", "\\_").replace("*", "%")
    return "name LIKE ? ESCAPE '\\'", pattern


# --------------------------------------------------------------------------- archive


class Archive(ArchiveExports):
    """The per-spill SQLite archive. See the module docstring.

    >>> with Archive(tmp / "qa.sqlite", retention_spills=10000) as archive:   # doctest: +SKIP
    ...     archive.store_spill(record, quality, histograms, engine.take_events())
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        retention_spills: int | None = None,
        retention_days: float | None = None,
        alarm_history_days: float | None = None,
        synchronous: str = "FULL",
        readonly: bool = False,
        timeout: float = 10.0,
    ) -> None:
        # validate through the config class (one place for the rules)
        cfg = ArchiveConfig(path, retention_spills=retention_spills, retention_days=retention_days,
                            alarm_history_days=alarm_history_days, synchronous=synchronous)
        self.path = cfg.path
        self.retention_spills = cfg.retention_spills
        self.retention_days = cfg.retention_days
        self.alarm_history_days = cfg.alarm_history_days
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(self.path.resolve().as_posix())}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if readonly:
                version = self._conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    raise ArchiveError(f"{self.path} is not an na64-online QA archive (an SQLite file without its tables)")
                if version != SCHEMA_VERSION:
                    raise ArchiveError(
                        f"archive {self.path} has schema version {version}, this software reads {SCHEMA_VERSION}"
                    )
            else:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("archive %s: journal mode is %s, not WAL", self.path, mode)
                self._conn.execute(f"PRAGMA synchronous = {cfg.synchronous.upper()}")
                self._conn.execute("PRAGMA journal_size_limit = 67108864")
                self._migrate()
        except (sqlite3.Error, ArchiveError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"cannot open archive {self.path}: {exc}") from exc

    @classmethod
    def from_config(cls, cfg: ArchiveConfig, *, readonly: bool = False) -> Archive:
        return cls(
            cfg.path,
            retention_spills=cfg.retention_spills,
            retention_days=cfg.retention_days,
            alarm_history_days=cfg.alarm_history_days,
            synchronous=cfg.synchronous,
            readonly=readonly,
        )

    # ---------------------------------------------------------------- plumbing

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ArchiveError(
                    f"archive {self.path} has schema version {version}, newer than this software ({SCHEMA_VERSION})"
                )
            # a table rebuild must not cascade its DROP onto the histograms (set outside any transaction)
            self._conn.execute("PRAGMA foreign_keys = OFF")
            try:
                while version < SCHEMA_VERSION:
                    target = version + 1
                    try:
                        self._conn.executescript(
                            f"BEGIN IMMEDIATE;\n{_MIGRATIONS[target]};\nPRAGMA user_version = {target};\nCOMMIT;"
                        )
                    except sqlite3.Error:
                        if self._conn.in_transaction:
                            self._conn.execute("ROLLBACK")
                        raise
                    version = target
            finally:
                self._conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise ArchiveError(f"archive {self.path} was opened read-only")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connection (checkpointing the WAL when it is the last one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> str:
        """``PRAGMA integrity_check`` (``"ok"`` when sound); reads the whole file."""
        rows = self._query("PRAGMA integrity_check")
        return "; ".join(str(r[0]) for r in rows)

    # ---------------------------------------------------------------- writing

    def store_spill(
        self,
        record: Mapping[str, Any],
        quality: Mapping[str, Any] | None = None,
        histograms: Mapping[str, Any] | None = None,
        alarm_events: Iterable[Mapping[str, Any]] = (),
    ) -> int:
        """Archive one spill atomically; returns its row id.

        ``record`` is the QA record dict (``run`` and ``spill`` required),
        ``quality`` the quality states dict, ``histograms`` ``{name: hist.Hist}``
        and ``alarm_events`` the alarm transitions of this spill
        (``AlarmEngine.take_events()``). A spill already archived with the same
        run and spill is replaced only by the same data processed again
        (:meth:`collides` false); otherwise both are kept — the new row gets the
        next ``fragment`` number and every row of that key is marked
        ``collision``. Retention is applied afterwards, in its own transaction.
        """
        record = _as_dict(record)
        quality = _as_dict(quality) if quality is not None else None
        histograms = getattr(histograms, "hists", histograms)  # a HistogramSet is fine too
        try:
            run, spill = int(record["run"]), int(record["spill"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"QA record without a valid run/spill: {exc}") from exc
        now = time.time()
        spill_time = record.get("finished_at") or record.get("finished") or record.get("started") or now
        overall = _state_of(quality.get("overall")) if quality else None
        record_json = _dumps(record)
        quality_json = _dumps(quality) if quality is not None else None
        # encode outside the transaction: the write lock is held only for the inserts
        blobs = [(str(name), encode_histogram(h)) for name, h in (histograms or {}).items()]
        events = [dict(e) for e in alarm_events]

        def _num(key: str) -> Any:
            value = record.get(key)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        with self._transaction() as conn:
            same, others = self._same_spill(conn, record, run, spill)
            if same is not None:  # the same data again: replaced
                conn.execute("DELETE FROM spills WHERE id = ?", (same["id"],))
                fragment, collision = same["fragment"], same["collision"]
            elif others:  # a different spill under the same key: kept beside it
                fragment, collision = max(r["fragment"] for r in others) + 1, 1
                conn.execute("UPDATE spills SET collision = 1 WHERE run = ? AND spill = ?", (run, spill))
            else:
                fragment, collision = 0, 0
            cur = conn.execute(
                "INSERT INTO spills (run, spill, fragment, collision, time, stored_at, overall, complete, events, eot,"
                " hadron_fraction, record, quality) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run,
                    spill,
                    fragment,
                    collision,
                    float(spill_time),
                    now,
                    overall,
                    None if record.get("complete") is None else int(bool(record.get("complete"))),
                    _num("events"),
                    _num("eot"),
                    _num("hadron_fraction"),
                    record_json,
                    quality_json,
                ),
            )
            spill_id = int(cur.lastrowid)
            self._insert_histograms(conn, spill_id, blobs)
            self._insert_alarm_events(conn, events, run=run, spill=spill, now=now)
        if self.retention_spills is not None or self.retention_days is not None or self.alarm_history_days is not None:
            try:
                self.prune(now=now)
            except sqlite3.Error:  # never lose the spill loop over housekeeping
                log.exception("archive %s: retention pruning failed", self.path)
        return spill_id

    @staticmethod
    def _identity(record: Mapping[str, Any]) -> tuple:
        """What tells one spill's data from another's under the same (run, spill)."""
        return tuple(record.get(k) for k in ("events", "first_event_time", "last_event_time", "complete",
                                              "lost_events", "decode_errors", "bytes_decoded"))

    def _same_spill(self, conn: sqlite3.Connection, record: Mapping[str, Any], run: int, spill: int):
        """(row holding this very spill's data or None, rows of the key)."""
        rows = conn.execute("SELECT id, fragment, collision, record FROM spills WHERE run = ? AND spill = ?",
                            (run, spill)).fetchall()
        mine = self._identity(record)
        same = next((r for r in rows if self._identity(json.loads(r["record"])) == mine), None)
        return same, rows

    def collides(self, record: Mapping[str, Any]) -> bool:
        """True when ``record``'s (run, spill) is archived already with other data (a fragment or
        another spill under the same key): storing it keeps both and flags the collision."""
        try:
            run, spill = int(record["run"]), int(record["spill"])
        except (KeyError, TypeError, ValueError):
            return False
        with self._lock:
            same, rows = self._same_spill(self._conn, record, run, spill)
        return same is None and bool(rows)

    def _insert_histograms(self, conn: sqlite3.Connection, spill_id: int, blobs: list[tuple[str, bytes]]) -> None:
        conn.executemany(
            "INSERT INTO histograms (spill_id, name, data) VALUES (?,?,?)",
            [(spill_id, name, blob) for name, blob in blobs],
        )

    def record_alarm_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append alarm transitions that belong to no spill (acknowledgements, rule removal)."""
        events = [dict(e) for e in events]
        if events:
            with self._transaction() as conn:
                self._insert_alarm_events(conn, events, run=None, spill=None, now=time.time())

    def _insert_alarm_events(
        self, conn: sqlite3.Connection, events: list[dict], *, run: int | None, spill: int | None, now: float
    ) -> None:
        for ev in events:
            t = float(ev.get("time") or now)
            ev_run = ev.get("run", run)
            ev_spill = ev.get("spill", spill)
            state = str(ev["state"])
            conn.execute(
                "INSERT INTO alarm_events (time, alarm_id, name, severity, state, run, spill, detail, user, comment)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (t, ev["alarm_id"], ev["name"], ev.get("severity"), state, ev_run, ev_spill,
                 ev.get("detail"), ev.get("user"), ev.get("comment")),
            )
            if state == "raised":
                conn.execute(
                    "INSERT INTO alarms (alarm_id, name, severity, state, detail, description, since_run, since_spill,"
                    " raised_at, raised_run, raised_spill, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (alarm_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    (ev["alarm_id"], ev["name"], ev.get("severity") or "warning", "raised", ev.get("detail"),
                     ev.get("description"), ev.get("since_run"), ev.get("since_spill"), t, ev_run, ev_spill, t),
                )
            elif state == "acknowledged":
                conn.execute(
                    "UPDATE alarms SET state = 'acknowledged', acked_by = ?, ack_comment = ?, acked_at = ?,"
                    " updated_at = ? WHERE alarm_id = ?",
                    (ev.get("user"), ev.get("comment"), t, t, ev["alarm_id"]),
                )
            elif state == "cleared":
                conn.execute(
                    "UPDATE alarms SET state = 'cleared', cleared_at = ?, cleared_run = ?, cleared_spill = ?,"
                    " detail = coalesce(?, detail), updated_at = ? WHERE alarm_id = ?",
                    (t, ev_run, ev_spill, ev.get("detail"), t, ev["alarm_id"]),
                )
            else:
                raise ArchiveError(f"unknown alarm state {state!r}")

    def prune(self, now: float | None = None) -> int:
        """Apply retention now; returns the number of spills removed."""
        now = time.time() if now is None else now
        removed = 0
        with self._transaction() as conn:
            if self.retention_days is not None:
                removed += conn.execute(
                    "DELETE FROM spills WHERE time < ?", (now - self.retention_days * 86400.0,)
                ).rowcount
            if self.retention_spills is not None:
                row = conn.execute(
                    "SELECT id FROM spills ORDER BY id DESC LIMIT 1 OFFSET ?", (self.retention_spills,)
                ).fetchone()
                if row is not None:
                    removed += conn.execute("DELETE FROM spills WHERE id <= ?", (row[0],)).rowcount
            if self.alarm_history_days is not None:
                cutoff = now - self.alarm_history_days * 86400.0
                conn.execute("DELETE FROM alarm_events WHERE time < ?", (cutoff,))
                conn.execute("DELETE FROM alarms WHERE state = 'cleared' AND updated_at < ?", (cutoff,))
        return removed

    # ---------------------------------------------------------------- reading spills

    def get_spill(self, run: int, spill: int) -> dict | None:
        """The archived spill: ``{run, spill, time, stored_at, overall, record, quality, histograms: [names]}``."""
        rows = self._query(f"SELECT * FROM spills WHERE run = ? AND spill = ? {_BEST_ROW}", (run, spill))
        if not rows:
            return None
        row = rows[0]
        fragments = self._query("SELECT count(*) FROM spills WHERE run = ? AND spill = ?", (run, spill))[0][0]
        names = [r[0] for r in self._query("SELECT name FROM histograms WHERE spill_id = ? ORDER BY name", (row["id"],))]
        return {
            "run": row["run"],
            "spill": row["spill"],
            "time": row["time"],
            "stored_at": row["stored_at"],
            "overall": row["overall"],
            "record": json.loads(row["record"]),
            "quality": json.loads(row["quality"]) if row["quality"] is not None else None,
            "histograms": names,
            "fragment": row["fragment"],
            "fragments": fragments,  # rows archived under this (run, spill); > 1: a collision
            "collision": bool(row["collision"]),
        }

    def get_histograms(self, run: int, spill: int, names: Iterable[str] | None = None) -> dict:
        """``{name: hist.Hist}`` of one archived spill (all, or those in ``names``)."""
        rows = self._query(
            "SELECT h.name, h.data FROM histograms h WHERE h.spill_id ="
            f" (SELECT id FROM spills WHERE run = ? AND spill = ? {_BEST_ROW}) ORDER BY h.name",
            (run, spill),
        )
        wanted = None if names is None else set(names)
        return {r["name"]: decode_histogram(r["data"]) for r in rows if wanted is None or r["name"] in wanted}

    def run_histograms(self, run: int) -> dict:
        """``{name: hist.Hist}`` summed over every archived spill of ``run`` (a run as reference)."""
        return self._summed(self._histograms_for(run, None))[0]

    def list_spills(
        self,
        run: int | None = None,
        quality: str | Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[dict]:
        """Summary rows (no full record): run, spill, fragment, collision, time, overall, complete, events, eot,
        hadron_fraction. A (run, spill) stored with different data more than once has one row per
        fragment (0, 1, …), each with ``collision`` true.

        ``quality`` filters on the overall state (one or several); ``since`` /
        ``until`` on the spill time (unix seconds, ``until`` exclusive).
        """
        where, params = self._spill_filter(run, quality, since, until)
        sql = (
            "SELECT run, spill, fragment, collision, time, stored_at, overall, complete, events, eot, hadron_fraction"
            f" FROM spills{where} ORDER BY run {'DESC' if newest_first else 'ASC'},"
            f" spill {'DESC' if newest_first else 'ASC'}, fragment"
        )
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        out = []
        for r in self._query(sql, params):
            d = dict(r)
            d["complete"] = None if d["complete"] is None else bool(d["complete"])
            d["collision"] = bool(d["collision"])
            out.append(d)
        return out

    @staticmethod
    def _spill_filter(run, quality, since, until) -> tuple[str, list]:
        clauses, params = [], []
        if run is not None:
            clauses.append("run = ?")
            params.append(int(run))
        if quality is not None:
            states = [quality] if isinstance(quality, str) else list(quality)
            clauses.append(f"overall IN ({','.join('?' * len(states))})")
            params += [s.upper() for s in states]
        if since is not None:
            clauses.append("time >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("time < ?")
            params.append(float(until))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def runs(self) -> list[dict]:
        """Per run: number of spills archived, first/last spill and time, spills per overall state."""
        rows = self._query(
            "SELECT run, count(*) AS spills, min(spill) AS first_spill, max(spill) AS last_spill,"
            " min(time) AS start, max(time) AS end FROM spills GROUP BY run ORDER BY run"
        )
        states = self._query("SELECT run, coalesce(overall, 'UNKNOWN') AS o, count(*) AS n FROM spills GROUP BY run, o")
        by_run: dict[int, dict] = {}
        for r in states:
            by_run.setdefault(r["run"], {})[r["o"]] = r["n"]
        return [dict(r) | {"quality": by_run.get(r["run"], {})} for r in rows]

    def stats(self) -> dict:
        """Row counts and file sizes (bytes) of the archive and its WAL."""
        counts = {t: self._query(f"SELECT count(*) FROM {t}")[0][0] for t in ("spills", "histograms", "alarms", "alarm_events")}
        wal = Path(str(self.path) + "-wal")
        page_size = self._query("PRAGMA page_size")[0][0]
        page_count = self._query("PRAGMA page_count")[0][0]
        freelist = self._query("PRAGMA freelist_count")[0][0]
        return counts | {
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "used_bytes": page_size * (page_count - freelist),
        }

    # ---------------------------------------------------------------- alarm history

    def active_alarms(self) -> list[dict]:
        """Alarm occurrences not cleared (state raised or acknowledged), oldest first."""
        return [dict(r) for r in self._query("SELECT * FROM alarms WHERE state != 'cleared' ORDER BY raised_at, name")]

    def list_alarms(
        self,
        name: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        run: int | None = None,
        limit: int = 1000,
    ) -> list[dict]:
        """Alarm occurrences (one row each, raised … cleared), newest first.

        ``name`` is exact unless it holds ``*`` (or ``%``) wildcards; ``since``/``until``
        select occurrences active in that time range; ``run`` those raised in
        the run.
        """
        clauses, params = [], []
        if name is not None:
            clause, value = _name_clause(name)
            clauses.append(clause)
            params.append(value)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if since is not None:
            clauses.append("coalesce(cleared_at, 1e300) >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("raised_at < ?")
            params.append(float(until))
        if run is not None:
            clauses.append("raised_run = ?")
            params.append(int(run))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return [dict(r) for r in self._query(f"SELECT * FROM alarms{where} ORDER BY raised_at DESC LIMIT ?", params + [limit])]

    def alarm_history(
        self,
        name: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        run: int | None = None,
        spill: int | None = None,
        alarm_id: str | None = None,
        limit: int = 1000,
    ) -> list[dict]:
        """Alarm transitions, newest first, filtered by name (exact, or with ``*`` wildcards), state,
        time range (``until`` exclusive), run/spill or alarm occurrence."""
        clauses, params = [], []
        for column, value in (("state", state), ("run", run), ("spill", spill), ("alarm_id", alarm_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if name is not None:
            clause, value = _name_clause(name)
            clauses.append(clause)
            params.append(value)
        if since is not None:
            clauses.append("time >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("time < ?")
            params.append(float(until))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return [
            dict(r)
            for r in self._query(f"SELECT * FROM alarm_events{where} ORDER BY time DESC, id DESC LIMIT ?", params + [limit])
        ]
