"""Delivery guarantees: a batch's lease owner and re-sent count, and push events marked as sent
again after an unknown outcome

Revision ID: 5c2e8a7d1f03
Revises: 3d8b6f2a9c41
Create Date: 2026-12-06 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '5c2e8a7d1f03'
down_revision = '3d8b6f2a9c41'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resent', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=36), nullable=True))
    # PostgreSQL 11+ adds a column with a constant default without rewriting the table.
    with op.batch_alter_table('push_events', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('resent', sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('push_events', schema=None) as batch_op:
        batch_op.drop_column('resent')
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('resent')
