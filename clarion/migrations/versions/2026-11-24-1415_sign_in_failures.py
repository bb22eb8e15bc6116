"""Failed dashboard sign-ins as rows, so that every process's throttle counts the same tries

Revision ID: 3f9a6b1c7d25
Revises: 8c41d2e7a3f0
Create Date: 2026-11-24 14:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '3f9a6b1c7d25'
down_revision = '8c41d2e7a3f0'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dashboard_sign_in_failures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_sign_in_failures'))
    )
    with op.batch_alter_table('dashboard_sign_in_failures', schema=None) as batch_op:
        batch_op.create_index('ix_dashboard_sign_in_failures_at', ['failed_at'], unique=False)
        batch_op.create_index(
            'ix_dashboard_sign_in_failures_email_at', ['email', 'failed_at'], unique=False
        )


def downgrade() -> None:
    op.drop_table('dashboard_sign_in_failures')
