"""Automation entries cheaper to write: no foreign key to campaigns, and the user lookups'
indexes hold only the entries that have that kind of id

Revision ID: 8e4b1c7a2d90
Revises: 5c2e8a7d1f03
Create Date: 2026-12-06 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '8e4b1c7a2d90'
down_revision = '5c2e8a7d1f03'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('automation_entries', schema=None) as batch_op:
        batch_op.drop_constraint('fk_automation_entries_campaign_id_campaigns', type_='foreignkey')
        batch_op.drop_index('ix_automation_entries_custom')
        batch_op.drop_index('ix_automation_entries_install')
        batch_op.create_index('ix_automation_entries_custom', ['campaign_id', 'custom_id', 'entered_at'], unique=False, postgresql_where=sa.text('custom_id IS NOT NULL'), sqlite_where=sa.text('custom_id IS NOT NULL'))
        batch_op.create_index('ix_automation_entries_install', ['campaign_id', 'install_id', 'entered_at'], unique=False, postgresql_where=sa.text('install_id IS NOT NULL'), sqlite_where=sa.text('install_id IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('automation_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_automation_entries_install')
        batch_op.drop_index('ix_automation_entries_custom')
        batch_op.create_index('ix_automation_entries_install', ['campaign_id', 'install_id', 'entered_at'], unique=False)
        batch_op.create_index('ix_automation_entries_custom', ['campaign_id', 'custom_id', 'entered_at'], unique=False)
        batch_op.create_foreign_key('fk_automation_entries_campaign_id_campaigns', 'campaigns', ['campaign_id'], ['id'])
