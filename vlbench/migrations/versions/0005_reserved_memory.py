"""A run's peak reserved CUDA memory (the caching allocator's pool, what the GPU actually holds)
beside its peak allocated (peak_memory_mb); empty for runs on CPU.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("peak_reserved_mb", sa.Double()))
