"""Automation statistics: entries finished since a date by state and reason from one index,
and an automation's newest entries

Revision ID: 3d8b6f2a9c41
Revises: 7a1f3c9e5b20
Create Date: 2026-12-06 15:30:00.000000
"""

from __future__ import annotations

from alembic import op


revision = '3d8b6f2a9c41'
down_revision = '7a1f3c9e5b20'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('automation_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_automation_entries_campaign_state')
        batch_op.create_index('ix_automation_entries_finished', ['campaign_id', 'state', 'finished_at', 'reason'], unique=False)
        batch_op.create_index('ix_automation_entries_newest', ['campaign_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('automation_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_automation_entries_newest')
        batch_op.drop_index('ix_automation_entries_finished')
        batch_op.create_index('ix_automation_entries_campaign_state', ['campaign_id', 'state'], unique=False)
