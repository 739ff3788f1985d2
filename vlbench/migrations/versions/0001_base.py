"""The base schema: what vlbench 0.1.0 wrote before the schema had versions (sweeps, runs, metrics, params).

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
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("suite", sa.String(50), nullable=False),
        sa.Column("profile", sa.String(50), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("sweep_id", sa.Integer(), sa.ForeignKey("sweeps.id"), nullable=False),
        sa.Column("method", sa.String(50), nullable=False),
        sa.Column("sharing", sa.String(20)),
        sa.Column("hidden_dim", sa.Integer()),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(50), nullable=False),
        sa.Column("suite", sa.String(50), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("host", sa.String(200)),
        sa.Column("device", sa.String(200)),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("versions_json", sa.Text()),
        sa.Column("owner", sa.String(300)),
        sa.Column("train_seconds", sa.Double()),
        sa.Column("eval_seconds", sa.Double()),
        sa.Column("samples_per_second", sa.Double()),
        sa.Column("peak_memory_mb", sa.Double()),
        sa.Column("checkpoint_bytes", sa.Integer()),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_sweep_id", "runs", ["sweep_id"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("split", sa.String(10), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(50), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.UniqueConstraint("run_id", "split", "epoch", "task", "name"),
    )
    op.create_table(
        "param_counts",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("trainable", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Double(), nullable=False),
        sa.Column("convention", sa.Text(), nullable=False),
        sa.Column("components_json", sa.Text(), nullable=False),
    )
