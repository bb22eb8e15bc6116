"""Push events by install: the dashboard's user lookup lists a user's pushes

Revision ID: c06fd06558ea
Revises: 77318210c706
Create Date: 2026-11-24 04:47:28.726385
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'c06fd06558ea'
down_revision = '77318210c706'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Built in one pass: on a large push log, inserts wait until it is done.
    with op.batch_alter_table('push_events', schema=None) as batch_op:
        batch_op.create_index('ix_push_events_app_install', ['app_id', 'install_id', 'occurred_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('push_events', schema=None) as batch_op:
        batch_op.drop_index('ix_push_events_app_install')

