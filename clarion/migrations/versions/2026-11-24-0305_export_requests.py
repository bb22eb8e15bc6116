"""Export API 1.0: on-demand export requests

Revision ID: e478712300be
Revises: f3cf6ea672f4
Create Date: 2026-11-24 03:05:34.029776
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'e478712300be'
down_revision = 'f3cf6ea672f4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Export API 1.0 (spec §11.1): a request, and the file a worker makes of it.
    op.create_table('export_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('uri', sa.String(length=512), nullable=False),
    sa.Column('date_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('date_to', sa.DateTime(timezone=True), nullable=False),
    sa.Column('request', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('events', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('ids', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('file_name', sa.String(length=255), nullable=True),
    sa.Column('error', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_export_requests_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_requests'))
    )
    with op.batch_alter_table('export_requests', schema=None) as batch_op:
        batch_op.create_index('ix_export_requests_status', ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('export_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_export_requests_status')

    op.drop_table('export_requests')
