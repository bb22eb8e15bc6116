"""regions upper case

Revision ID: 2a7b2305a6b8
Revises: 3b3570d41ce4
Create Date: 2026-11-24 01:06:45.872577
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '2a7b2305a6b8'
down_revision = '3b3570d41ce4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Regions are stored upper-case from now on (the SDK API normalises them); targeting
    # compares them without lower(), so older rows are brought in line.
    op.execute(
        "UPDATE installations SET region = upper(region) "
        "WHERE region IS NOT NULL AND region <> upper(region)"
    )


def downgrade() -> None:
    # Nothing to undo: upper-case regions are valid for the previous code too.
    pass
