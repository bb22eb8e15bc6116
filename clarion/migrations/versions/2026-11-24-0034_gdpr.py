"""gdpr

Revision ID: 3b3570d41ce4
Revises: 4e0ab2f7319b
Create Date: 2026-11-24 00:34:26.754237
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '3b3570d41ce4'
down_revision = '4e0ab2f7319b'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GDPR API: requests, and the ids a removal blocks for a month.
    op.create_table('gdpr_blocked_ids',
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('id_type', sa.String(length=16), nullable=False),
    sa.Column('id_value', sa.String(length=512), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('app_id', 'id_type', 'id_value', name=op.f('pk_gdpr_blocked_ids'))
    )
    op.create_table('gdpr_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_type', sa.String(length=8), nullable=False),
    sa.Column('id_type', sa.String(length=16), nullable=False),
    sa.Column('id_value', sa.String(length=512), nullable=False),
    sa.Column('callback_url', sa.String(length=2048), nullable=True),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('error', sa.String(length=256), nullable=True),
    sa.Column('archive', sa.String(length=256), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_gdpr_requests_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gdpr_requests'))
    )
    with op.batch_alter_table('gdpr_requests', schema=None) as batch_op:
        batch_op.create_index('ix_gdpr_requests_app_created', ['app_id', 'created_at'], unique=False)
        batch_op.create_index('ix_gdpr_requests_status', ['status'], unique=False)



def downgrade() -> None:
    # Reverses upgrade().
    with op.batch_alter_table('gdpr_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_gdpr_requests_status')
        batch_op.drop_index('ix_gdpr_requests_app_created')

    op.drop_table('gdpr_requests')
    op.drop_table('gdpr_blocked_ids')
