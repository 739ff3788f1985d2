"""Results that know what produced them: each run's fingerprint (vlbench.fingerprint) and, for a run
whose fingerprint no longer matches today's, its superseded state. A superseded row keeps its
metrics under the key `<config key>~<row id>` (the config key stays unique among current runs) and
names the config key it was a run of, when and why it was superseded. A run re-scored after a
metric change (`sweep --rescore`) lists each re-scoring: when, and what changed.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("fingerprint", sa.String(64)))
    op.add_column("runs", sa.Column("fingerprint_json", sa.Text()))
    op.add_column("runs", sa.Column("superseded_of", sa.String(64)))
    op.add_column("runs", sa.Column("superseded_at", sa.DateTime()))
    op.add_column("runs", sa.Column("superseded_reason", sa.Text()))
    op.add_column("runs", sa.Column("rescored_json", sa.Text()))
    op.create_index("ix_runs_superseded_of", "runs", ["superseded_of"])

