"""A send's counters move to its delivery batches (no more per-batch update of the send's row)

Revision ID: 8c41d2e7a3f0
Revises: 5b0e7c2a9d41
Create Date: 2026-11-24 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '8c41d2e7a3f0'
down_revision = '5b0e7c2a9d41'
branch_labels = None
depends_on = None

_COUNTERS = ('targeted', 'sent', 'failed', 'tokens_deleted')


def upgrade() -> None:
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        for name in _COUNTERS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default='0'))
    # What the sends counted so far goes on each send's first batch: sums stay as they were.
    op.execute(
        'UPDATE delivery_batches SET '
        + ', '.join(
            f'{name} = (SELECT sends.{name} FROM sends WHERE sends.id = delivery_batches.send_id)'
            for name in _COUNTERS
        )
        + ' WHERE id IN (SELECT min(id) FROM delivery_batches GROUP BY send_id)'
    )
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        for name in _COUNTERS:
            batch_op.alter_column(name, server_default=None)
    with op.batch_alter_table('sends', schema=None) as batch_op:
        for name in _COUNTERS:
            batch_op.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        for name in _COUNTERS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default='0'))
    op.execute(
        'UPDATE sends SET '
        + ', '.join(
            f'{name} = (SELECT coalesce(sum(b.{name}), 0) FROM delivery_batches AS b '
            f'WHERE b.send_id = sends.id)'
            for name in _COUNTERS
        )
    )
    with op.batch_alter_table('sends', schema=None) as batch_op:
        for name in _COUNTERS:
            batch_op.alter_column(name, server_default=None)
    with op.batch_alter_table('delivery_batches', schema=None) as batch_op:
        for name in _COUNTERS:
            batch_op.drop_column(name)
