"""profiles

Revision ID: 68d75eca3339
Revises: e5106cc4dba1
Create Date: 2026-11-23 22:35:22.153628
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '68d75eca3339'
down_revision = 'e5106cc4dba1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Custom Data API: attributes and tag collections per custom user id (clarion.custom_data).
    op.create_table('profile_attributes',
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('custom_id', sa.String(length=512), nullable=False),
    sa.Column('name', sa.String(length=30), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('text_value', sa.String(length=2048), nullable=True),
    sa.Column('number_value', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('app_id', 'custom_id', 'name', name=op.f('pk_profile_attributes'))
    )
    with op.batch_alter_table('profile_attributes', schema=None) as batch_op:
        batch_op.create_index('ix_profile_attributes_number', ['app_id', 'name', 'number_value'], unique=False)
        batch_op.create_index('ix_profile_attributes_text', ['app_id', 'name', 'text_value'], unique=False)

    op.create_table('profile_tags',
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('custom_id', sa.String(length=512), nullable=False),
    sa.Column('collection', sa.String(length=30), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('app_id', 'custom_id', 'collection', 'tag', name=op.f('pk_profile_tags'))
    )
    with op.batch_alter_table('profile_tags', schema=None) as batch_op:
        batch_op.create_index('ix_profile_tags_collection_tag', ['app_id', 'collection', 'tag'], unique=False)

    # ### end Alembic commands ###


def downgrade() -> None:
    # Reverses upgrade().
    with op.batch_alter_table('profile_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_tags_collection_tag')

    op.drop_table('profile_tags')
    with op.batch_alter_table('profile_attributes', schema=None) as batch_op:
        batch_op.drop_index('ix_profile_attributes_text')
        batch_op.drop_index('ix_profile_attributes_number')

    op.drop_table('profile_attributes')
    # ### end Alembic commands ###
