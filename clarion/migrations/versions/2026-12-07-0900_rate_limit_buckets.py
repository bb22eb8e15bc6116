"""API rate limits shared by the API processes: one token bucket per app key and per company

Revision ID: 3f6a9d2c7b41
Revises: 7a41c9e2b6d5
Create Date: 2026-12-07 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '3f6a9d2c7b41'
down_revision = '7a41c9e2b6d5'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # UNLOGGED on PostgreSQL: the buckets are refilled within a second anyway, so a crash that
    # loses them costs nothing, and each round trip then writes no WAL. Used only there (SQLite
    # keeps its buckets in memory); created on both so that the schema is one.
    unlogged = ['UNLOGGED'] if op.get_bind().dialect.name == 'postgresql' else []
    op.create_table(
        'rate_limit_buckets',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('tokens', sa.Float(), nullable=False),
        sa.Column('refilled_at', sa.Float(), nullable=False),
        sa.Column('granted', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_rate_limit_buckets')),
        prefixes=unlogged,
    )


def downgrade() -> None:
    op.drop_table('rate_limit_buckets')
