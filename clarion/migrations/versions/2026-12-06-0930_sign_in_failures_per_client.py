"""Failed dashboard sign-ins carry the client's address: throttled per (e-mail, address) and per address

Revision ID: 9d3c5e7a1b42
Revises: 6b2e0c4d9a17
Create Date: 2026-12-06 09:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '9d3c5e7a1b42'
down_revision = '6b2e0c4d9a17'
branch_labels = None
depends_on = None

# The rows are only the throttle's memory of the last 15 minutes, and the ones there are have no
# address to give them: the table is made again rather than altered (which SQLite would do by
# copying it anyway, a NOT NULL column having no value for the old rows).


def _table(with_client: bool) -> None:
    columns = [
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('email', sa.String(length=254), nullable=False),
    ]
    if with_client:
        columns.append(sa.Column('client', sa.String(length=64), nullable=False))
    columns.append(sa.Column('failed_at', sa.DateTime(timezone=True), nullable=False))
    op.create_table(
        'dashboard_sign_in_failures',
        *columns,
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_sign_in_failures')),
    )
    op.create_index(
        'ix_dashboard_sign_in_failures_at', 'dashboard_sign_in_failures', ['failed_at']
    )
    if with_client:
        op.create_index(
            'ix_dashboard_sign_in_failures_client_at',
            'dashboard_sign_in_failures',
            ['client', 'failed_at'],
        )
    else:
        op.create_index(
            'ix_dashboard_sign_in_failures_email_at',
            'dashboard_sign_in_failures',
            ['email', 'failed_at'],
        )


def upgrade() -> None:
    op.drop_table('dashboard_sign_in_failures')
    _table(with_client=True)


def downgrade() -> None:
    op.drop_table('dashboard_sign_in_failures')
    _table(with_client=False)
