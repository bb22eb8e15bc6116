"""The web pages (origins) allowed to call the SDK API with an app's key

Revision ID: 5c2e9a7d3f18
Revises: b86cb6ecdd8b
Create Date: 2026-12-06 13:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '5c2e9a7d3f18'
down_revision = 'b86cb6ecdd8b'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing apps allow no web page: nothing changes for them until an origin is added.
    with op.batch_alter_table('apps') as batch:
        batch.add_column(
            sa.Column(
                'allowed_origins',
                sa.JSON(none_as_null=True),
                server_default=sa.text("'[]'"),
                nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('apps') as batch:
        batch.drop_column('allowed_origins')
