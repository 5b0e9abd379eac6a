"""The archive as main's SQLite schema version 2 had it: spills (with fragments), histograms, alarms.

An SQLite archive written before Alembic (``PRAGMA user_version`` 1 or 2) is
brought to that schema by the archive's legacy step and stamped with this
revision; new archives are created by it.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spills",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run", sa.BigInteger, nullable=False),
        sa.Column("spill", sa.BigInteger, nullable=False),
        sa.Column("fragment", sa.Integer, nullable=False, server_default="0"),
        sa.Column("collision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
        sa.Column("overall", sa.Text),
        sa.Column("complete", sa.Integer),
        sa.Column("events", sa.BigInteger),
        sa.Column("eot", sa.Float),
        sa.Column("hadron_fraction", sa.Float),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("quality", sa.Text),
        sa.UniqueConstraint("run", "spill", "fragment", name="uq_spills_key"),
    )
    op.create_index("spills_time", "spills", ["time"])
    op.create_index("spills_overall", "spills", ["overall", "run", "spill"])
    op.create_table(
        "histograms",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("spill_id", sa.Integer, sa.ForeignKey("spills.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("spill_id", "name", name="uq_histograms_name"),
    )
    op.create_table(
        "alarms",
        sa.Column("alarm_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("since_run", sa.BigInteger),
        sa.Column("since_spill", sa.BigInteger),
        sa.Column("raised_at", sa.Float),
        sa.Column("raised_run", sa.BigInteger),
        sa.Column("raised_spill", sa.BigInteger),
        sa.Column("acked_by", sa.Text),
        sa.Column("ack_comment", sa.Text),
        sa.Column("acked_at", sa.Float),
        sa.Column("cleared_at", sa.Float),
        sa.Column("cleared_run", sa.BigInteger),
        sa.Column("cleared_spill", sa.BigInteger),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("alarms_name", "alarms", ["name", "raised_at"])
    op.create_index("alarms_state", "alarms", ["state"])
    op.create_table(
        "alarm_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("alarm_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("severity", sa.Text),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("run", sa.BigInteger),
        sa.Column("spill", sa.BigInteger),
        sa.Column("detail", sa.Text),
        sa.Column("user", sa.Text),
        sa.Column("comment", sa.Text),
    )
    op.create_index("alarm_events_time", "alarm_events", ["time"])
    op.create_index("alarm_events_name", "alarm_events", ["name", "time"])
    op.create_index("alarm_events_spill", "alarm_events", ["run", "spill"])
    op.create_index("alarm_events_alarm", "alarm_events", ["alarm_id"])
