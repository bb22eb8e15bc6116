"""Delivery batches record their progress while they are sent, and whether their unrecorded
recipients may have been sent already (decision 0032)

Revision ID: 7a41c9e2b6d5
Revises: 8e4b1c7a2d90
Create Date: 2026-12-06 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '7a41c9e2b6d5'
down_revision = '8e4b1c7a2d90'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.LargeBinary(), nullable=True))
        batch_op.add_column(
            sa.Column('outcome_unknown', sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        batch_op.drop_column('outcome_unknown')
        batch_op.drop_column('progress')
