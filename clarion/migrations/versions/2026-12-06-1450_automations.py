"""Automations: entries (one per user an event enters), push-cap receipts, and the
app's push caps

Revision ID: 7a1f3c9e5b20
Revises: 5c2e9a7d3f18
Create Date: 2026-12-06 14:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '7a1f3c9e5b20'
down_revision = '5c2e9a7d3f18'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('capping_receipts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('installation_id', sa.BigInteger(), nullable=False),
    sa.Column('key', sa.String(length=140), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_capping_receipts'))
    )
    with op.batch_alter_table('capping_receipts', schema=None) as batch_op:
        batch_op.create_index('ix_capping_receipts_lookup', ['app_id', 'key', 'installation_id', 'sent_at'], unique=False)
        batch_op.create_index('ix_capping_receipts_sent_at', ['sent_at'], unique=False)

    op.create_table('automation_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('custom_id', sa.String(length=512), nullable=True),
    sa.Column('install_id', sa.String(length=128), nullable=True),
    sa.Column('event', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('entered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('timed', sa.Boolean(), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=160), nullable=True),
    sa.Column('send_id', sa.BigInteger(), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_automation_entries_campaign_id_campaigns')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_automation_entries'))
    )
    with op.batch_alter_table('automation_entries', schema=None) as batch_op:
        batch_op.create_index('ix_automation_entries_campaign_state', ['campaign_id', 'state'], unique=False)
        batch_op.create_index('ix_automation_entries_custom', ['campaign_id', 'custom_id', 'entered_at'], unique=False)
        batch_op.create_index('ix_automation_entries_due', ['due_at'], unique=False, postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))
        batch_op.create_index('ix_automation_entries_install', ['campaign_id', 'install_id', 'entered_at'], unique=False)

    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('push_caps', sa.JSON(none_as_null=True), server_default=sa.text("'{}'"), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('apps', schema=None) as batch_op:
        batch_op.drop_column('push_caps')

    with op.batch_alter_table('automation_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_automation_entries_install')
        batch_op.drop_index('ix_automation_entries_due', postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))
        batch_op.drop_index('ix_automation_entries_custom')
        batch_op.drop_index('ix_automation_entries_campaign_state')

    op.drop_table('automation_entries')
    with op.batch_alter_table('capping_receipts', schema=None) as batch_op:
        batch_op.drop_index('ix_capping_receipts_sent_at')
        batch_op.drop_index('ix_capping_receipts_lookup')

    op.drop_table('capping_receipts')
