"""audience members without foreign key

Revision ID: f121538f1d8c
Revises: 511a9f069cc8
Create Date: 2026-11-24 02:35:38.694230
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'f121538f1d8c'
down_revision = '511a9f069cc8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL checks a foreign key row by row: it tripled the load of a 10M-line audience
    # file. Members are written and deleted only with their audience (clarion.audiences).
    with op.batch_alter_table('audience_members', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_audience_members_audience_id_audiences'), type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('audience_members', schema=None) as batch_op:
        batch_op.create_foreign_key(batch_op.f('fk_audience_members_audience_id_audiences'), 'audiences', ['audience_id'], ['id'])
