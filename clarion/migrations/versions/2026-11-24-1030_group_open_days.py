"""Transactional group_ids' influenced opens stored per UTC day, as campaigns' are

Revision ID: 5b0e7c2a9d41
Revises: d96ef298ffb2
Create Date: 2026-11-24 10:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '5b0e7c2a9d41'
down_revision = 'd96ef298ffb2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('group_open_days',
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.String(length=128), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('influenced_open', sa.Integer(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('app_id', 'group_id', 'day', name=op.f('pk_group_open_days'))
    )


def downgrade() -> None:
    op.drop_table('group_open_days')
