"""Per-spill archive behind one interface, two back ends: SQLite (WAL, embedded, the default) and
PostgreSQL (hosts that share one archive), through SQLAlchemy Core; the schema (:mod:`.schema`)
is written once and evolves by Alembic revisions (``migrations/``), run when an archive is opened
for writing.

``Archive(target)``: ``target`` is a file path (SQLite) or a URL — ``sqlite:///PATH``,
``postgresql://USER@HOST/DB`` (driver psycopg 3).

One row per spill and processing version holds the QA record (JSON), its quality states and
the overall quality; the spill's histograms sit next to it as compact blobs; alarm life-cycle
events (raised / acknowledged / cleared) are kept as a searchable history. Everything a spill
brings is written in ONE transaction (:meth:`Archive.store_spill`), so a crash or ``SIGKILL``
leaves either the whole spill or nothing of it (SQLite replays its write-ahead log when the
file is opened again; PostgreSQL rolls back the open transaction of a dead client).

Key and writers: a spill is keyed by (run, spill, processing version, fragment). Storing a spill
whose key exists is an explicit upsert (``INSERT … ON CONFLICT … DO UPDATE``): the last complete
write wins and the spill's histograms are replaced in the same transaction, so two concurrent
writers (two reprocessing runs, or live plus reprocess) never leave a duplicate or a half-written
spill. A different spill under the same (run, spill, version) — the same number seen with other
data — is kept beside it as the next ``fragment``, every row of the key flagged ``collision``.

Processing version: the archive writes its ``version`` (``SOFTWARE+CONFIGHASH``, see
``na64_online.service.processing_version``) into every row; records of another processing sit
beside them. Reads take ``version``: a version string, :data:`ALL_VERSIONS` (every row), or
``None`` — for each (run, spill) the version stored last.

SQLite: WAL, ``synchronous=FULL`` by default (one fsync per spill, nothing lost even on power
failure; ``NORMAL`` survives process crashes but may lose the last spills on a power cut); one
writer at a time (``BEGIN IMMEDIATE``), readers alongside. An archive written before Alembic
(``PRAGMA user_version`` 1 or 2) is brought to revision 0001 by the legacy step and stamped;
``user_version`` is then 3, so older software refuses it instead of misreading it.

Retention: ``retention_spills`` keeps the newest N spills stored, ``retention_days`` drops spills
whose time (the record's ``finished_at``, else ``finished`` or ``started``, else when it was
stored) is older; both are applied after each stored spill. Alarm history is kept unless
``alarm_history_days`` is set.
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

import sqlalchemy as sa
from pydantic import Field, field_validator
from sqlalchemy import event, func, select

from ...errors import ArchiveError, ArchiveUnavailable, ConfigError
from ..model import to_json
from . import schema
from .codec import _dumps, _state_of, decode_histogram, encode_histogram
from .exports import ArchiveExports
from .config import UNVERSIONED, ArchiveConfig, is_url  # noqa: F401 - the archive's settings, re-exported
from .schema import alarm_events, alarms, histograms, spills

log = logging.getLogger(__name__)

#: how long :meth:`Archive.close` waits for a connection in use
CLOSE_WAIT_S = 1.0
#: failures of the database, not of the data (down, locked, unreachable): worth trying again
TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, sa.exc.DisconnectionError)

#: ``PRAGMA user_version`` of an SQLite archive under Alembic (older software refuses it)
SCHEMA_VERSION = 3
#: the last pre-Alembic SQLite schema, the one Alembic revision 0001 stands for
LEGACY_SCHEMA_VERSION = 2
HEAD_REVISION = "0002"
#: ``version=ALL_VERSIONS``: rows of every processing version
ALL_VERSIONS = "*"
#: a summed column's values beyond this are not finite numbers (infinities; NaN compares above all in PostgreSQL)
_FINITE_BOUND = 1e300

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

_LEGACY_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
_MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def database_url(target: str | os.PathLike) -> sa.engine.URL:
    """The SQLAlchemy URL of a path or URL; PostgreSQL through psycopg 3."""
    if not is_url(target):
        return sa.engine.URL.create("sqlite", database=str(Path(target)))
    try:
        url = sa.engine.make_url(str(target))
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"archive url {str(target)!r}: {exc}") from None
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise ConfigError(f"archive url {url.render_as_string(hide_password=True)!r}: the archive is SQLite or "
                      "PostgreSQL (sqlite:///PATH, postgresql://USER@HOST/DB)")


def _name_clause(column, name: str):
    """Exact match, or ``LIKE`` when the name holds ``*``/``%`` wildcards."""
    if "*" not in name and "%" not in name:
        return column == name
    pattern = name.replace("\\", "\\\\").replace("_", "\\_").replace("*", "%")
    return column.like(pattern, escape="\\")


def _rows(result) -> list[dict]:
    return [dict(r) for r in result.mappings()]


# --------------------------------------------------------------------------- archive


class Archive(ArchiveExports):
    """The per-spill archive (SQLite or PostgreSQL). See the module docstring.

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
        version: str = UNVERSIONED,
        wait_for_database: bool = False,
    ) -> None:
        url = database_url(path)
        # validate through the config class (one place for the rules)
        cfg = ArchiveConfig(Path(url.database or "") if url.get_backend_name() == "sqlite" else Path(),
                            retention_spills=retention_spills, retention_days=retention_days,
                            alarm_history_days=alarm_history_days, synchronous=synchronous,
                            url=str(path) if is_url(path) else None)
        self.url = url
        self.sqlite = url.get_backend_name() == "sqlite"
        self.path = cfg.path if self.sqlite else None
        self.name = str(self.path) if self.sqlite else url.render_as_string(hide_password=True)
        self.retention_spills = cfg.retention_spills
        self.retention_days = cfg.retention_days
        self.alarm_history_days = cfg.alarm_history_days
        self.readonly = readonly
        self.version = str(version)
        if not self.version or self.version == ALL_VERSIONS or len(self.version) > 200:
            raise ArchiveError(f"bad processing version {self.version!r}")
        self._lock = threading.RLock()
        self.timeout = float(timeout)
        self._engine: sa.engine.Engine | None = None
        #: the schema was checked (read-only) or migrated: done at the first use when the database did not
        #: answer at start (``wait_for_database``)
        self._opened = False
        try:
            if readonly and self.sqlite:
                self._migrate_legacy_file(timeout)
            self._engine = self._make_engine(cfg.synchronous.upper(), timeout)
            self._open()
        except (sa.exc.SQLAlchemyError, sqlite3.Error, ArchiveError, OSError) as exc:
            # live, a database that does not answer (or, read-only, whose writer has not made it yet) is
            # opened at its first use once it does
            if (wait_for_database and not self.sqlite and self._engine is not None
                    and (isinstance(exc, TRANSIENT) or (readonly and isinstance(exc, ArchiveError)))):
                log.warning("archive %s is not open yet (%s): opened at its first use once it can be", self.name,
                            _db_reason(exc))
                return
            self.close()
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"cannot open archive {self.name}: {_db_reason(exc)}") from exc

    @classmethod
    def from_config(cls, cfg: ArchiveConfig, *, readonly: bool = False, version: str = UNVERSIONED,
                    wait_for_database: bool = False) -> Archive:
        return cls(
            cfg.target,
            retention_spills=cfg.retention_spills,
            retention_days=cfg.retention_days,
            alarm_history_days=cfg.alarm_history_days,
            synchronous=cfg.synchronous,
            readonly=readonly,
            version=version,
            wait_for_database=wait_for_database,
        )

    @property
    def target(self) -> str:
        """What opens this archive again (the file path, or the URL with the password)."""
        return str(self.path) if self.sqlite else self.url.render_as_string(hide_password=False)

    # ---------------------------------------------------------------- plumbing

    def _make_engine(self, synchronous: str, timeout: float) -> sa.engine.Engine:
        if not self.sqlite:
            engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=2, max_overflow=4,
                                      connect_args={"connect_timeout": max(1, int(timeout))})
            if self.readonly:
                @event.listens_for(engine, "connect")
                def _readonly(dbapi_conn, _record) -> None:
                    with dbapi_conn.cursor() as cur:
                        cur.execute("SET default_transaction_read_only = on")
                    dbapi_conn.commit()
            return engine
        if self.readonly:
            if not self.path.is_file():
                raise ArchiveError(f"cannot open archive {self.path}: no such file")
            url = sa.engine.URL.create("sqlite", database=f"file:{urllib.parse.quote(self.path.resolve().as_posix())}",
                                       query={"mode": "ro", "uri": "true"})
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            url = self.url
        engine = sa.create_engine(url, connect_args={"timeout": timeout, "check_same_thread": False},
                                  poolclass=sa.pool.StaticPool)
        readonly = self.readonly

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, as SQLite wants them
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if not readonly:
                mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("archive %s: journal mode is %s, not WAL", self.path, mode)
                cur.execute(f"PRAGMA synchronous = {synchronous}")
                cur.execute("PRAGMA journal_size_limit = 67108864")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")  # one writer at a time

        return engine

    def _migrate_legacy_file(self, timeout: float) -> None:
        """An archive file of the software before Alembic is migrated (by a short-lived writer) before
        it is read, so that old files stay readable."""
        if not self.path.is_file():
            return
        conn = sqlite3.connect(f"file:{urllib.parse.quote(self.path.resolve().as_posix())}?mode=ro", uri=True,
                               timeout=timeout)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
        if 0 < version < SCHEMA_VERSION:
            log.info("archive %s: schema version %d, migrating it before reading", self.path, version)
            Archive(self.path, timeout=timeout).close()

    def _open(self) -> None:
        """Check (read-only) or migrate the schema, once."""
        if not self._opened:
            if self.readonly:
                self._check_readable()
            else:
                self._migrate()
            self._opened = True

    def _opened_now(self) -> None:
        """:meth:`_open` at a use (the database did not answer when the archive was made); a database that
        still does not answer is :class:`ArchiveUnavailable`."""
        if not self._opened:
            try:
                self._open()
            except (sa.exc.SQLAlchemyError, ArchiveError) as exc:  # e.g. read-only before the writer made it
                raise ArchiveUnavailable(f"archive {self.name} is not open yet: {_db_reason(exc)}") from exc
            log.info("archive %s answers: opened", self.name)

    def _check_readable(self) -> None:
        with self._engine.connect() as conn:
            if self.sqlite:
                version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                if version == 0:
                    raise ArchiveError(f"{self.path} is not an na64-online QA archive (an SQLite file without its tables)")
                if version != SCHEMA_VERSION:
                    raise ArchiveError(
                        f"archive {self.path} has schema version {version}, this software reads {SCHEMA_VERSION}")
            revision = self._revision(conn)
            if revision is None:
                raise ArchiveError(f"{self.name} is not an na64-online QA archive (no tables)")
            if revision != HEAD_REVISION:
                raise ArchiveError(f"archive {self.name} is at schema revision {revision}, this software reads "
                                   f"{HEAD_REVISION}; open it for writing once to migrate it")

    @staticmethod
    def _revision(conn) -> str | None:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def _alembic(self, conn):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        return config

    def _migrate(self) -> None:
        """Legacy SQLite step, then Alembic to head, in one transaction (PostgreSQL: under an advisory
        lock, so that hosts opening a new archive at once do not race)."""
        from alembic import command

        with self._lock, self._engine.connect() as conn:
            if self.sqlite:
                # a table rebuild must not cascade its DROP onto the histograms (set outside any transaction,
                # on the driver's connection: SQLAlchemy would begin one first)
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")
            try:
                with conn.begin():
                    if not self.sqlite:
                        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(6464646464)")
                    revision = self._revision(conn)
                    if self.sqlite:
                        user_version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                        if user_version > SCHEMA_VERSION:
                            raise ArchiveError(f"archive {self.path} has schema version {user_version}, newer than "
                                               f"this software ({SCHEMA_VERSION})")
                        if revision is None and user_version:
                            self._legacy(conn, user_version)
                            command.stamp(self._alembic(conn), "0001")
                    known = {"0001", "0002"}
                    if revision is not None and revision not in known:
                        raise ArchiveError(f"archive {self.name} is at schema revision {revision}, newer than this "
                                           f"software ({HEAD_REVISION})")
                    command.upgrade(self._alembic(conn), "head")
                    if self.sqlite:
                        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                if self.sqlite:
                    conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = ON")

    def _legacy(self, conn, version: int) -> None:
        """An SQLite archive of the pre-Alembic software: its own SQL steps up to schema version 2."""
        while version < LEGACY_SCHEMA_VERSION:
            version += 1
            for statement in _LEGACY_MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
            log.info("archive %s: migrated the legacy schema to version %d", self.path, version)

    @contextmanager
    def _transaction(self) -> Iterator[sa.engine.Connection]:
        if self.readonly:
            raise ArchiveError(f"archive {self.name} was opened read-only")
        with self._lock:
            self._opened_now()
            with self._engine.begin() as conn:
                yield conn

    @contextmanager
    def _reading(self) -> Iterator[sa.engine.Connection]:
        """A connection for one read. Reads go one at a time: one waits at most the archive's ``timeout`` for
        the read before it (a database that stopped answering holds one reader, not every caller), and a
        database that fails is :class:`ArchiveUnavailable`."""
        if not self._lock.acquire(timeout=self.timeout):
            raise ArchiveUnavailable(f"archive {self.name} is busy: a read waited {self.timeout:g} s for the one "
                                     "before it (the database does not answer)")
        try:
            self._opened_now()
            with self._engine.connect() as conn:
                yield conn
        except TRANSIENT as exc:
            raise ArchiveUnavailable(f"archive {self.name} does not answer: {_db_reason(exc)}") from exc
        finally:
            self._lock.release()

    def _execute(self, statement) -> list[dict]:
        with self._reading() as conn:
            rows = _rows(conn.execute(statement))
            conn.rollback()
            return rows

    def close(self) -> None:
        """Close the connections (SQLite checkpoints the WAL when the last one closes). A connection held by a
        thread that waits on a database that does not answer is left to the process's end (after waiting
        :data:`CLOSE_WAIT_S` for it), so that a stop never hangs on the database."""
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            log.warning("archive %s: not closed, a thread still waits on the database", self.name)
            return
        try:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        finally:
            self._lock.release()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> str:
        """SQLite ``PRAGMA integrity_check`` (``"ok"`` when sound); PostgreSQL: ``"ok"`` when it answers."""
        with self._reading() as conn:
            if not self.sqlite:
                conn.exec_driver_sql("SELECT 1")
                return "ok"
            rows = conn.exec_driver_sql("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    # ---------------------------------------------------------------- writing

    def store_spill(
        self,
        record: Mapping[str, Any],
        quality: Mapping[str, Any] | None = None,
        histograms: Mapping[str, Any] | None = None,
        alarm_events: Iterable[Mapping[str, Any]] = (),
        *,
        decide_collision: bool = False,
    ) -> int:
        """Archive one spill atomically under this archive's processing version; returns its row id.

        ``record`` is the QA record dict (``run`` and ``spill`` required),
        ``quality`` the quality states dict, ``histograms`` ``{name: hist.Hist}``
        and ``alarm_events`` the alarm transitions of this spill
        (``AlarmEngine.take_events()``). A spill already archived with the same
        run, spill and version is replaced by the same data processed again
        (:meth:`collides` false) — an upsert: the last complete write wins;
        other data under that key is kept beside it — the new row gets the
        next ``fragment`` number and every row of that key is marked
        ``collision``. Retention is applied afterwards, in its own transaction.
        ``decide_collision``: a record without ``archive_collision`` (the live
        service's, when the archive did not answer in time) gets it here, as
        this transaction finds it.
        """
        record = to_json(record)  # a model.SpillRecord / SpillQuality, or their JSON
        quality = to_json(quality) if quality is not None else None
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

        values = dict(
            run=run, spill=spill, version=self.version, time=float(spill_time), stored_at=now, overall=overall,
            complete=None if record.get("complete") is None else int(bool(record.get("complete"))),
            events=_num("events"), eot=_num("eot"), hadron_fraction=_num("hadron_fraction"),
            record=record_json, quality=quality_json,
        )
        with self._transaction() as conn:
            same, others = self._same_spill(conn, record, run, spill)
            if same is not None:  # the same data again: replaced (upsert below)
                fragment, collision = same["fragment"], same["collision"]
            elif others:  # a different spill under the same key: kept beside it
                fragment, collision = max(r["fragment"] for r in others) + 1, 1
                conn.execute(spills.update().where(self._key(run, spill)).values(collision=1))
            else:
                fragment, collision = 0, 0
            if decide_collision and "archive_collision" not in record:
                values["record"] = _dumps(record | {"archive_collision": same is None and bool(others)})
            spill_id = self._upsert(conn, values | {"fragment": fragment, "collision": collision})
            self._insert_histograms(conn, spill_id, blobs)
            self._insert_alarm_events(conn, events, run=run, spill=spill, now=now)
        if self.retention_spills is not None or self.retention_days is not None or self.alarm_history_days is not None:
            try:
                self.prune(now=now)
            except sa.exc.SQLAlchemyError:  # never lose the spill loop over housekeeping
                log.exception("archive %s: retention pruning failed", self.name)
        return spill_id

    def _upsert(self, conn, values: dict) -> int:
        """INSERT … ON CONFLICT (run, spill, version, fragment) DO UPDATE: the last complete write wins."""
        if self.sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        statement = insert(spills).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[spills.c.run, spills.c.spill, spills.c.version, spills.c.fragment],
            set_={name: statement.excluded[name] for name in values if name not in ("run", "spill", "version",
                                                                                    "fragment")},
        ).returning(spills.c.id)
        return int(conn.execute(statement).scalar_one())

    @staticmethod
    def _insert_histograms(conn, spill_id: int, blobs: list[tuple[str, bytes]]) -> None:
        """The spill's histograms (those of a write it replaces go first)."""
        conn.execute(histograms.delete().where(histograms.c.spill_id == spill_id))
        if blobs:
            conn.execute(histograms.insert(), [{"spill_id": spill_id, "name": n, "data": b} for n, b in blobs])

    def _key(self, run: int, spill: int):
        return (spills.c.run == run) & (spills.c.spill == spill) & (spills.c.version == self.version)

    @staticmethod
    def _identity(record: Mapping[str, Any]) -> tuple:
        """What tells one spill's data from another's under the same (run, spill)."""
        return tuple(record.get(k) for k in ("events", "first_event_time", "last_event_time", "complete",
                                              "lost_events", "decode_errors", "bytes_decoded"))

    def _same_spill(self, conn, record: Mapping[str, Any], run: int, spill: int):
        """(row holding this very spill's data or None, rows of the key) — of this processing version."""
        rows = _rows(conn.execute(select(spills.c.id, spills.c.fragment, spills.c.collision, spills.c.record)
                                  .where(self._key(run, spill))))
        mine = self._identity(record)
        same = next((r for r in rows if self._identity(json.loads(r["record"])) == mine), None)
        return same, rows

    def collides(self, record: Mapping[str, Any]) -> bool:
        """True when ``record``'s (run, spill) is archived already under this version with other data (a
        fragment or another spill under the same key): storing it keeps both and flags the collision."""
        try:
            run, spill = int(record["run"]), int(record["spill"])
        except (KeyError, TypeError, ValueError):
            return False
        with self._reading() as conn:
            same, rows = self._same_spill(conn, record, run, spill)
            conn.rollback()
        return same is None and bool(rows)

    def record_alarm_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append alarm transitions that belong to no spill (acknowledgements, rule removal)."""
        events = [dict(e) for e in events]
        if events:
            with self._transaction() as conn:
                self._insert_alarm_events(conn, events, run=None, spill=None, now=time.time())

    def _insert_alarm_events(self, conn, events: list[dict], *, run: int | None, spill: int | None,
                             now: float) -> None:
        for ev in events:
            t = float(ev.get("time") or now)
            ev_run = ev.get("run", run)
            ev_spill = ev.get("spill", spill)
            state = str(ev["state"])
            conn.execute(alarm_events.insert().values(
                time=t, alarm_id=ev["alarm_id"], name=ev["name"], severity=ev.get("severity"), state=state,
                run=ev_run, spill=ev_spill, detail=ev.get("detail"), user=ev.get("user"), comment=ev.get("comment")))
            where = alarms.c.alarm_id == ev["alarm_id"]
            if state == "raised":
                values = dict(alarm_id=ev["alarm_id"], name=ev["name"], severity=ev.get("severity") or "warning",
                              state="raised", detail=ev.get("detail"), description=ev.get("description"),
                              since_run=ev.get("since_run"), since_spill=ev.get("since_spill"), raised_at=t,
                              raised_run=ev_run, raised_spill=ev_spill, updated_at=t)
                if self.sqlite:
                    from sqlalchemy.dialects.sqlite import insert
                else:
                    from sqlalchemy.dialects.postgresql import insert
                statement = insert(alarms).values(**values)
                conn.execute(statement.on_conflict_do_update(
                    index_elements=[alarms.c.alarm_id],
                    set_={"state": statement.excluded.state, "updated_at": statement.excluded.updated_at}))
            elif state == "acknowledged":
                conn.execute(alarms.update().where(where).values(
                    state="acknowledged", acked_by=ev.get("user"), ack_comment=ev.get("comment"), acked_at=t,
                    updated_at=t))
            elif state == "cleared":
                conn.execute(alarms.update().where(where).values(
                    state="cleared", cleared_at=t, cleared_run=ev_run, cleared_spill=ev_spill,
                    detail=func.coalesce(ev.get("detail"), alarms.c.detail), updated_at=t))
            else:
                raise ArchiveError(f"unknown alarm state {state!r}")

    def prune(self, now: float | None = None) -> int:
        """Apply retention now; returns the number of spills removed."""
        now = time.time() if now is None else now
        removed = 0
        with self._transaction() as conn:
            if self.retention_days is not None:
                removed += conn.execute(
                    spills.delete().where(spills.c.time < now - self.retention_days * 86400.0)).rowcount
            if self.retention_spills is not None:
                row = conn.execute(select(spills.c.id).order_by(spills.c.id.desc()).limit(1)
                                   .offset(self.retention_spills)).first()
                if row is not None:
                    removed += conn.execute(spills.delete().where(spills.c.id <= row[0])).rowcount
            if self.alarm_history_days is not None:
                cutoff = now - self.alarm_history_days * 86400.0
                conn.execute(alarm_events.delete().where(alarm_events.c.time < cutoff))
                conn.execute(alarms.delete().where((alarms.c.state == "cleared") & (alarms.c.updated_at < cutoff)))
        return removed

    # ---------------------------------------------------------------- reading spills

    @staticmethod
    def _version_clause(version: str | None, table=spills):
        """Rows of ``version``; ``None``: for each (run, spill), the version stored last; ``*``: all."""
        if version == ALL_VERSIONS:
            return sa.true()
        if version is not None:
            return table.c.version == version
        newer = spills.alias("newer")
        latest = (select(newer.c.version)
                  .where((newer.c.run == table.c.run) & (newer.c.spill == table.c.spill))
                  .order_by(newer.c.stored_at.desc(), newer.c.id.desc()).limit(1).scalar_subquery())
        return table.c.version == latest

    @staticmethod
    def _best(statement):
        """The row a (run, spill) stands for when it has several: complete first, the most events, the first stored."""
        return statement.order_by(spills.c.complete.desc(), spills.c.events.desc(), spills.c.fragment.asc()).limit(1)

    def get_spill(self, run: int, spill: int, version: str | None = None) -> dict | None:
        """The archived spill: ``{run, spill, time, stored_at, overall, record, quality, histograms: [names],
        version, …}`` (``version``: see :meth:`list_spills`)."""
        where = (spills.c.run == run) & (spills.c.spill == spill) & self._version_clause(version)
        rows = self._execute(self._best(select(spills).where(where)))
        if not rows:
            return None
        row = rows[0]
        fragments = self._execute(select(func.count().label("n")).select_from(spills).where(
            (spills.c.run == run) & (spills.c.spill == spill) & (spills.c.version == row["version"])))[0]["n"]
        names = [r["name"] for r in self._execute(select(histograms.c.name).where(
            histograms.c.spill_id == row["id"]).order_by(histograms.c.name))]
        versions = [r["version"] for r in self._execute(
            select(spills.c.version).where((spills.c.run == run) & (spills.c.spill == spill))
            .group_by(spills.c.version).order_by(func.max(spills.c.stored_at)))]
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
            "fragments": fragments,  # rows archived under this (run, spill, version); > 1: a collision
            "collision": bool(row["collision"]),
            "version": row["version"],
            "versions": versions,  # every processing version of this spill, oldest first
        }

    def get_histograms(self, run: int, spill: int, names: Iterable[str] | None = None,
                       version: str | None = None) -> dict:
        """``{name: hist.Hist}`` of one archived spill (all, or those in ``names``)."""
        best = self._best(select(spills.c.id).where(
            (spills.c.run == run) & (spills.c.spill == spill) & self._version_clause(version))).scalar_subquery()
        rows = self._execute(select(histograms.c.name, histograms.c.data).where(histograms.c.spill_id == best)
                             .order_by(histograms.c.name))
        wanted = None if names is None else set(names)
        return {r["name"]: decode_histogram(r["data"]) for r in rows if wanted is None or r["name"] in wanted}

    def run_histograms(self, run: int, version: str | None = None) -> dict:
        """``{name: hist.Hist}`` summed over every archived spill of ``run`` (a run as reference)."""
        return self._summed(self._histograms_for(run, None, version))[0]

    def list_spills(
        self,
        run: int | None = None,
        quality: str | Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
        version: str | None = None,
    ) -> list[dict]:
        """Summary rows (no full record): run, spill, fragment, collision, time, overall, complete, events, eot,
        hadron_fraction, version. A (run, spill) stored with different data more than once has one row per
        fragment (0, 1, …), each with ``collision`` true.

        ``quality`` filters on the overall state (one or several); ``since`` /
        ``until`` on the spill time (unix seconds, ``until`` exclusive);
        ``version`` picks the processing version (``None``: per spill the one
        stored last; ``"*"``: every version, one row each).
        """
        order = sa.desc if newest_first else sa.asc
        statement = (select(spills.c.run, spills.c.spill, spills.c.fragment, spills.c.collision, spills.c.time,
                            spills.c.stored_at, spills.c.overall, spills.c.complete, spills.c.events, spills.c.eot,
                            spills.c.hadron_fraction, spills.c.version)
                     .where(self._spill_filter(run, quality, since, until, version))
                     .order_by(order(spills.c.run), order(spills.c.spill), spills.c.version, spills.c.fragment))
        if limit is not None:
            statement = statement.limit(int(limit)).offset(int(offset))
        out = []
        for d in self._execute(statement):
            d["complete"] = None if d["complete"] is None else bool(d["complete"])
            d["collision"] = bool(d["collision"])
            out.append(d)
        return out

    def _spill_filter(self, run, quality, since, until, version=None):
        clauses = [self._version_clause(version)]
        if run is not None:
            clauses.append(spills.c.run == int(run))
        if quality is not None:
            states = [quality] if isinstance(quality, str) else list(quality)
            clauses.append(spills.c.overall.in_([s.upper() for s in states]))
        if since is not None:
            clauses.append(spills.c.time >= float(since))
        if until is not None:
            clauses.append(spills.c.time < float(until))
        return sa.and_(*clauses)

    def versions(self, run: int | None = None) -> list[dict]:
        """Processing versions archived (of ``run``): version, spills, first and last stored, oldest first."""
        statement = (select(spills.c.version, func.count().label("spills"),
                            func.min(spills.c.stored_at).label("first_stored"),
                            func.max(spills.c.stored_at).label("last_stored"))
                     .group_by(spills.c.version).order_by(func.min(spills.c.stored_at)))
        if run is not None:
            statement = statement.where(spills.c.run == int(run))
        return self._execute(statement)

    def run_totals(self, run: int, version: str | None = None) -> dict:
        """The rows :meth:`list_spills` gives for ``run``, counted, without reading them: ``spills`` (a spill
        stored more than once counts once per fragment, as its rows do), ``eot`` (their electrons on target,
        summed over the finite values) and ``last_spill`` (None when the run has none)."""
        finite = spills.c.eot.between(-_FINITE_BOUND, _FINITE_BOUND)  # not NULL, NaN (PostgreSQL) or ±infinity
        row = self._execute(
            select(func.count().label("spills"),
                   func.coalesce(func.sum(sa.case((finite, spills.c.eot), else_=0.0)), 0.0).label("eot"),
                   func.max(spills.c.spill).label("last_spill"))
            .where(self._spill_filter(int(run), None, None, None, version)))[0]
        return {"spills": int(row["spills"]), "eot": float(row["eot"]), "last_spill": row["last_spill"]}

    def runs(self, version: str | None = None) -> list[dict]:
        """Per run: number of spills archived, first/last spill and time, spills per overall state."""
        where = self._version_clause(version)
        rows = self._execute(
            select(spills.c.run, func.count().label("spills"), func.min(spills.c.spill).label("first_spill"),
                   func.max(spills.c.spill).label("last_spill"), func.min(spills.c.time).label("start"),
                   func.max(spills.c.time).label("end"))
            .where(where).group_by(spills.c.run).order_by(spills.c.run))
        overall = func.coalesce(spills.c.overall, "UNKNOWN").label("o")
        states = self._execute(select(spills.c.run, overall, func.count().label("n")).where(where)
                               .group_by(spills.c.run, overall))
        by_run: dict[int, dict] = {}
        for r in states:
            by_run.setdefault(r["run"], {})[r["o"]] = r["n"]
        return [r | {"quality": by_run.get(r["run"], {})} for r in rows]

    def stats(self) -> dict:
        """Row counts; SQLite also file sizes (bytes) of the archive and its WAL."""
        counts = {t.name: self._execute(select(func.count().label("n")).select_from(t))[0]["n"]
                  for t in (spills, histograms, alarms, alarm_events)}
        if not self.sqlite:
            return counts
        wal = Path(str(self.path) + "-wal")
        with self._reading() as conn:
            page_size, page_count, freelist = (conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                                               for p in ("page_size", "page_count", "freelist_count"))
        return counts | {
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "used_bytes": page_size * (page_count - freelist),
        }

    #: QA numbers :meth:`compare` looks at (beside the quality states)
    COMPARED = ("complete", "events", "lost_events", "decode_errors", "modules_missing", "beam", "triggers_accepted",
                "hadron_fraction", "hadron_fraction_srd", "eot", "candidates", "rejected_events", "skipped_bytes")

    def compare(self, run: int, version_a: str, version_b: str) -> list[dict]:
        """The spills of ``run`` whose quality or QA numbers differ between two processing versions.

        One row per such spill, in spill order: ``{run, spill, changes: {name: [a, b]}}`` with the
        overall state (``overall``), each subsystem's state (``quality.SUBSYSTEM``) and each of
        :attr:`COMPARED` that changed; a spill archived under one version only has
        ``changes = {"archived": [bool, bool]}``.
        """
        sides = []
        for version in (version_a, version_b):
            rows = {}
            for row in self._execute(select(spills.c.spill, spills.c.record, spills.c.quality, spills.c.overall,
                                            spills.c.complete, spills.c.events, spills.c.fragment)
                                     .where((spills.c.run == int(run)) & (spills.c.version == version))
                                     .order_by(spills.c.spill, spills.c.complete.desc(), spills.c.events.desc(),
                                               spills.c.fragment)):
                rows.setdefault(row["spill"], row)  # the row that stands for the spill (as get_spill)
            sides.append(rows)
        out = []
        for spill in sorted(set(sides[0]) | set(sides[1])):
            a, b = sides[0].get(spill), sides[1].get(spill)
            if a is None or b is None:
                out.append({"run": int(run), "spill": spill, "changes": {"archived": [a is not None, b is not None]}})
                continue
            changes = {}
            if a["overall"] != b["overall"]:
                changes["overall"] = [a["overall"], b["overall"]]
            qa, qb = (json.loads(r["quality"]) if r["quality"] else {} for r in (a, b))
            subsystems_a, subsystems_b = qa.get("subsystems") or {}, qb.get("subsystems") or {}
            for name in sorted(set(subsystems_a) | set(subsystems_b)):
                sa_, sb_ = _state_of(subsystems_a.get(name)), _state_of(subsystems_b.get(name))
                if sa_ != sb_:
                    changes[f"quality.{name}"] = [sa_, sb_]
            ra, rb = json.loads(a["record"]), json.loads(b["record"])
            for name in self.COMPARED:
                if ra.get(name) != rb.get(name):
                    changes[name] = [ra.get(name), rb.get(name)]
            if changes:
                out.append({"run": int(run), "spill": spill, "changes": changes})
        return out

    # ---------------------------------------------------------------- alarm history

    def active_alarms(self) -> list[dict]:
        """Alarm occurrences not cleared (state raised or acknowledged), oldest first."""
        return self._execute(select(alarms).where(alarms.c.state != "cleared")
                             .order_by(alarms.c.raised_at, alarms.c.name))

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
        clauses = []
        if name is not None:
            clauses.append(_name_clause(alarms.c.name, name))
        if state is not None:
            clauses.append(alarms.c.state == state)
        if since is not None:
            clauses.append(func.coalesce(alarms.c.cleared_at, 1e300) >= float(since))
        if until is not None:
            clauses.append(alarms.c.raised_at < float(until))
        if run is not None:
            clauses.append(alarms.c.raised_run == int(run))
        return self._execute(select(alarms).where(sa.and_(sa.true(), *clauses))
                             .order_by(alarms.c.raised_at.desc()).limit(limit))

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
        clauses = []
        for column, value in (("state", state), ("run", run), ("spill", spill), ("alarm_id", alarm_id)):
            if value is not None:
                clauses.append(alarm_events.c[column] == value)
        if name is not None:
            clauses.append(_name_clause(alarm_events.c.name, name))
        if since is not None:
            clauses.append(alarm_events.c.time >= float(since))
        if until is not None:
            clauses.append(alarm_events.c.time < float(until))
        return self._execute(select(alarm_events).where(sa.and_(sa.true(), *clauses))
                             .order_by(alarm_events.c.time.desc(), alarm_events.c.id.desc()).limit(limit))


def _db_reason(exc: BaseException) -> str:
    """The database's own words, one line."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
