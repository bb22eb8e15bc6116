"""audiences

Revision ID: 4e0ab2f7319b
Revises: b92a4f1ef09e
Create Date: 2026-11-24 00:17:08.287539
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '4e0ab2f7319b'
down_revision = 'b92a4f1ef09e'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Custom Audience API: audiences, their members per generation, indexing tokens.
    op.create_table('audiences',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=1024), nullable=True),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('nb_ids', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_audiences_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audiences')),
    sa.UniqueConstraint('app_id', 'name', name=op.f('uq_audiences_app_id_name'))
    )
    op.create_table('audience_indexings',
    sa.Column('token', sa.String(length=36), nullable=False),
    sa.Column('audience_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audience_id'], ['audiences.id'], name=op.f('fk_audience_indexings_audience_id_audiences'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token', name=op.f('pk_audience_indexings'))
    )
    op.create_table('audience_members',
    sa.Column('audience_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.String(length=512), nullable=False),
    sa.Column('attributes', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('tags', sa.JSON(none_as_null=True), nullable=True),
    sa.ForeignKeyConstraint(['audience_id'], ['audiences.id'], name=op.f('fk_audience_members_audience_id_audiences')),
    sa.PrimaryKeyConstraint('audience_id', 'generation', 'member_id', name=op.f('pk_audience_members'))
    )


def downgrade() -> None:
    # Reverses upgrade().
    op.drop_table('audience_members')
    op.drop_table('audience_indexings')
    op.drop_table('audiences')
