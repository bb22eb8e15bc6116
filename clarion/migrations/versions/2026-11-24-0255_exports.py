"""daily exports: destinations and the (destination, day) runs

Revision ID: f3cf6ea672f4
Revises: f121538f1d8c
Create Date: 2026-11-24 02:55:19.948791
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'f3cf6ea672f4'
down_revision = 'f121538f1d8c'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Daily flat-file exports (clarion/exports, docs/exports.md).
    op.create_table('export_destinations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('credentials', sa.Text(), nullable=True),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('gzip', sa.Boolean(), nullable=False),
    sa.Column('id_columns', sa.JSON(none_as_null=True), nullable=False),
    sa.Column('delay_minutes', sa.Integer(), nullable=False),
    sa.Column('first_day', sa.Date(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_export_destinations_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_destinations')),
    sa.UniqueConstraint('app_id', 'name', name=op.f('uq_export_destinations_app_id_name'))
    )
    op.create_table('export_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('destination_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('bytes', sa.Integer(), nullable=True),
    sa.Column('path', sa.String(length=2048), nullable=True),
    sa.Column('error', sa.String(length=1024), nullable=True),
    sa.Column('history', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['destination_id'], ['export_destinations.id'], name=op.f('fk_export_runs_destination_id_export_destinations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_runs')),
    sa.UniqueConstraint('destination_id', 'day', name=op.f('uq_export_runs_destination_id_day'))
    )
    with op.batch_alter_table('export_runs', schema=None) as batch_op:
        batch_op.create_index('ix_export_runs_status_next', ['status', 'next_attempt_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('export_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_export_runs_status_next')

    op.drop_table('export_runs')
    op.drop_table('export_destinations')
