"""A campaign run that cannot be sent is failed, with the reason

Revision ID: 4e8b1d6f2c93
Revises: 9d3c5e7a1b42
Create Date: 2026-12-06 10:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '4e8b1d6f2c93'
down_revision = '9d3c5e7a1b42'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('campaign_runs') as batch:
        batch.add_column(sa.Column('failure', sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('campaign_runs') as batch:
        batch.drop_column('failure')
