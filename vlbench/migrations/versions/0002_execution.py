"""Execution on many workers and hosts: heartbeats and progress (liveness across hosts, the live view),
the run folder a resume continues in, the run's world size and Slurm job, its resume points, the
'interrupted' status (longer than the base schema's 10 characters), and 64-bit sizes and counts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime()))
    op.add_column("runs", sa.Column("progress_json", sa.Text()))
    op.add_column("runs", sa.Column("run_dir", sa.Text()))
    op.add_column("runs", sa.Column("world_size", sa.Integer()))
    op.add_column("runs", sa.Column("slurm_job_id", sa.String(64)))
    op.add_column("runs", sa.Column("resumed_from_json", sa.Text()))
    # SQLite ignores VARCHAR lengths and has 64-bit INTEGERs (and rebuilding the referenced table
    # under foreign keys is needless risk)
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("runs", "status", type_=sa.String(20), existing_nullable=False)
        op.alter_column("runs", "checkpoint_bytes", type_=sa.BigInteger())  # a full fine-tune's weights pass 2 GiB
        op.alter_column("param_counts", "trainable", type_=sa.BigInteger(), existing_nullable=False)
        op.alter_column("param_counts", "total", type_=sa.BigInteger(), existing_nullable=False)
