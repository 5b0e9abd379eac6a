"""The archive's tables, written once (SQLAlchemy Core) for every back end: SQLite and PostgreSQL.

``spills``: one row per (run, spill, processing version, fragment) — the QA
record (JSON text), its quality states and the columns the lists filter on.
``version`` names the software version and configuration hash that made the
record (``0.9.0+3f2a…``); records of another processing of the same spill sit
beside it. ``fragment`` numbers rows of the same key holding different data (a
collision, flagged in ``collision``). ``histograms``: the spill's histograms
as blobs (:mod:`.codec`). ``alarms``: one row per alarm occurrence;
``alarm_events``: every life-cycle transition.

The schema evolves only by Alembic revisions (``migrations/versions``), run
when an archive is opened for writing; this module describes the head.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text,
    UniqueConstraint,
)

#: ``version`` of rows archived before processing versions existed
from .config import UNVERSIONED  # noqa: E402 - defined with the settings (no SQLAlchemy there)

metadata = MetaData()

spills = Table(
    "spills", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run", BigInteger, nullable=False),
    Column("spill", BigInteger, nullable=False),
    Column("fragment", Integer, nullable=False, server_default="0"),
    Column("collision", Integer, nullable=False, server_default="0"),
    Column("time", Float, nullable=False),
    Column("stored_at", Float, nullable=False),
    Column("overall", Text),
    Column("complete", Integer),
    Column("events", BigInteger),
    Column("eot", Float),
    Column("hadron_fraction", Float),
    Column("record", Text, nullable=False),
    Column("quality", Text),
    Column("version", String(200), nullable=False, server_default=UNVERSIONED),
    UniqueConstraint("run", "spill", "version", "fragment", name="uq_spills_key"),
)
Index("spills_time", spills.c.time)
Index("spills_overall", spills.c.overall, spills.c.run, spills.c.spill)
Index("spills_version", spills.c.version, spills.c.run, spills.c.spill)

histograms = Table(
    "histograms", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("spill_id", Integer, ForeignKey("spills.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    UniqueConstraint("spill_id", "name", name="uq_histograms_name"),
)

alarms = Table(
    "alarms", metadata,
    Column("alarm_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("detail", Text),
    Column("description", Text),
    Column("since_run", BigInteger),
    Column("since_spill", BigInteger),
    Column("raised_at", Float),
    Column("raised_run", BigInteger),
    Column("raised_spill", BigInteger),
    Column("acked_by", Text),
    Column("ack_comment", Text),
    Column("acked_at", Float),
    Column("cleared_at", Float),
    Column("cleared_run", BigInteger),
    Column("cleared_spill", BigInteger),
    Column("updated_at", Float, nullable=False),
)
Index("alarms_name", alarms.c.name, alarms.c.raised_at)
Index("alarms_state", alarms.c.state)

alarm_events = Table(
    "alarm_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("alarm_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("severity", Text),
    Column("state", Text, nullable=False),
    Column("run", BigInteger),
    Column("spill", BigInteger),
    Column("detail", Text),
    Column("user", Text),
    Column("comment", Text),
)
Index("alarm_events_time", alarm_events.c.time)
Index("alarm_events_name", alarm_events.c.name, alarm_events.c.time)
Index("alarm_events_spill", alarm_events.c.run, alarm_events.c.spill)
Index("alarm_events_alarm", alarm_events.c.alarm_id)
