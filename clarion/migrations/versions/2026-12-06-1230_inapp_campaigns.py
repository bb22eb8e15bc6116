"""In-app messaging: campaigns, themes, the revision each app's fetches check, supplies,
and the A/B version of in-app events

Revision ID: b86cb6ecdd8b
Revises: 4e8b1d6f2c93
Create Date: 2026-12-06 12:06:54.004739
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op




revision = 'b86cb6ecdd8b'
down_revision = '4e8b1d6f2c93'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inapp_campaigns',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('token', sa.String(length=32), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('dev_only', sa.Boolean(), nullable=False),
    sa.Column('from_api', sa.Boolean(), nullable=False),
    sa.Column('live', sa.Boolean(), nullable=False),
    sa.Column('body', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_inapp_campaigns_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inapp_campaigns')),
    sa.UniqueConstraint('token', name=op.f('uq_inapp_campaigns_token'))
    )
    with op.batch_alter_table('inapp_campaigns', schema=None) as batch_op:
        batch_op.create_index('ix_inapp_campaigns_app_created', ['app_id', 'created_at'], unique=False)
        batch_op.create_index('ix_inapp_campaigns_app_live', ['app_id', 'live', 'window_end'], unique=False)

    op.create_table('inapp_revisions',
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('revision', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_inapp_revisions_app_id_apps')),
    sa.PrimaryKeyConstraint('app_id', name=op.f('pk_inapp_revisions'))
    )
    op.create_table('inapp_themes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('body', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_inapp_themes_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inapp_themes')),
    sa.UniqueConstraint('app_id', 'code', name=op.f('uq_inapp_themes_app_id_code'))
    )
    op.create_table('inapp_supplies',
    sa.Column('campaign_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('installation_id', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.String(length=8), nullable=False),
    sa.Column('supplied_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['inapp_campaigns.id'], name=op.f('fk_inapp_supplies_campaign_id_inapp_campaigns')),
    sa.PrimaryKeyConstraint('campaign_id', 'installation_id', name=op.f('pk_inapp_supplies'))
    )
    with op.batch_alter_table('inapp_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.String(length=8), server_default='', nullable=False))
        batch_op.create_index('ix_inapp_events_campaign_time', ['campaign_id', 'occurred_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('inapp_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inapp_events_campaign_time')
        batch_op.drop_column('version')

    op.drop_table('inapp_supplies')
    op.drop_table('inapp_themes')
    op.drop_table('inapp_revisions')
    with op.batch_alter_table('inapp_campaigns', schema=None) as batch_op:
        batch_op.drop_index('ix_inapp_campaigns_app_live')
        batch_op.drop_index('ix_inapp_campaigns_app_created')

    op.drop_table('inapp_campaigns')
