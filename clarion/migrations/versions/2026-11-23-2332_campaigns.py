"""campaigns

Revision ID: b92a4f1ef09e
Revises: 68d75eca3339
Create Date: 2026-11-23 23:32:37.894509
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'b92a4f1ef09e'
down_revision = '68d75eca3339'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Campaigns API: campaigns, their runs (occurrences), receipts for capping, the run/version
    # of campaign sends, and the indexes targeting needs (time zones, events by name).
    op.create_table('campaigns',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('token', sa.String(length=32), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('dev_only', sa.Boolean(), nullable=False),
    sa.Column('from_api', sa.Boolean(), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('body', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('next_occurrence', sa.Integer(), nullable=False),
    sa.Column('next_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_campaigns_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns')),
    sa.UniqueConstraint('token', name=op.f('uq_campaigns_token'))
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index('ix_campaigns_app_created', ['app_id', 'created_at'], unique=False)
        batch_op.create_index('ix_campaigns_state_next_run_at', ['state', 'next_run_at'], unique=False)

    op.create_table('campaign_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('occurrence', sa.Integer(), nullable=False),
    sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('body', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('cursor', sa.BigInteger(), nullable=False),
    sa.Column('pages', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=32), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('targeted', sa.Integer(), nullable=False),
    sa.Column('wave', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('zones_done', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_runs_campaign_id_campaigns')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_runs')),
    sa.UniqueConstraint('campaign_id', 'occurrence', name=op.f('uq_campaign_runs_campaign_id_occurrence'))
    )
    with op.batch_alter_table('campaign_runs', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_runs_state', ['state'], unique=False)

    op.create_table('campaign_receipts',
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('installation_id', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_receipts_campaign_id_campaigns')),
    sa.PrimaryKeyConstraint('campaign_id', 'installation_id', name=op.f('pk_campaign_receipts'))
    )
    with op.batch_alter_table('installations', schema=None) as batch_op:
        batch_op.create_index('ix_installations_app_id', ['app_id', 'id'], unique=False)
        batch_op.create_index('ix_installations_app_timezone', ['app_id', 'timezone', 'id'], unique=False)

    with op.batch_alter_table('tracked_events', schema=None) as batch_op:
        batch_op.create_index('ix_tracked_events_app_name_install', ['app_id', 'name', 'install_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_tracked_events_app_name_custom', ['app_id', 'name', 'custom_id', 'occurred_at'], unique=False)

    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.add_column(sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('version', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_sends_run_id'), ['run_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_sends_run_id_campaign_runs'), 'campaign_runs', ['run_id'], ['id'])



def downgrade() -> None:
    # Reverses upgrade().
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_sends_run_id_campaign_runs'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_sends_run_id'))
        batch_op.drop_column('cancelled_at')
        batch_op.drop_column('version')
        batch_op.drop_column('run_id')

    with op.batch_alter_table('tracked_events', schema=None) as batch_op:
        batch_op.drop_index('ix_tracked_events_app_name_custom')
        batch_op.drop_index('ix_tracked_events_app_name_install')

    with op.batch_alter_table('installations', schema=None) as batch_op:
        batch_op.drop_index('ix_installations_app_timezone')
        batch_op.drop_index('ix_installations_app_id')

    with op.batch_alter_table('campaign_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_runs_state')

    op.drop_table('campaign_receipts')
    op.drop_table('campaign_runs')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index('ix_campaigns_state_next_run_at')
        batch_op.drop_index('ix_campaigns_app_created')

    op.drop_table('campaigns')
