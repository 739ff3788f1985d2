"""Training curves: every run's loss, learning rate and samples/s every N optimizer steps
(execution.RunMonitor writes them in batches with the heartbeat).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "curve_points",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(30), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.UniqueConstraint("run_id", "step", "name"),
    )
    op.create_index("ix_curve_points_run_id", "curve_points", ["run_id"])
