"""Processing version: the key of a spill becomes (run, spill, version, fragment).

Rows archived before get ``version = 'unversioned'``. On SQLite the table is
rebuilt (batch mode; the archive runs migrations with foreign keys off, so the
histograms stay).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BEFORE = sa.Table(  # spills as revision 0001 left it (named, so batch mode can drop the constraint)
    "spills", sa.MetaData(),
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
    sa.Index("spills_time", "time"),
    sa.Index("spills_overall", "overall", "run", "spill"),
)


def upgrade() -> None:
    with op.batch_alter_table("spills", copy_from=_BEFORE) as batch:
        batch.add_column(sa.Column("version", sa.String(200), nullable=False, server_default="unversioned"))
        batch.drop_constraint("uq_spills_key", type_="unique")
        batch.create_unique_constraint("uq_spills_key", ["run", "spill", "version", "fragment"])
    op.create_index("spills_version", "spills", ["version", "run", "spill"])
