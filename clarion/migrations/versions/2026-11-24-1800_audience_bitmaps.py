"""Audience members resolved to installations, as bitmaps of 64 installations

Revision ID: 6b2e0c4d9a17
Revises: 3f9a6b1c7d25
Create Date: 2026-11-24 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '6b2e0c4d9a17'
down_revision = '3f9a6b1c7d25'
branch_labels = None
depends_on = None

# The current generation of every audience, resolved as clarion.audiences.resolved does
# (written out here: a migration stays as it was when the code moves on). SQLite has no
# bit_or; the sum is the same, no two installations sharing a bit.
_BACKFILL = """
INSERT INTO audience_bitmaps (audience_id, generation, block, bits)
SELECT a.id, a.generation, i.id >> 6, {bit_or}(CAST(1 AS BIGINT) << CAST(i.id & 63 AS INTEGER))
FROM audiences a
JOIN installations i ON i.app_id = a.app_id
JOIN audience_members m ON m.audience_id = a.id AND m.generation = a.generation
 AND m.member_id = CASE a.kind WHEN 'custom_ids' THEN i.custom_id
                               WHEN 'advertising_ids' THEN i.advertising_id
                               ELSE i.install_id END
WHERE a.generation >= 0
GROUP BY a.id, a.generation, i.id >> 6
"""


def upgrade() -> None:
    op.create_table('audience_bitmaps',
    sa.Column('audience_id', sa.BigInteger(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('block', sa.BigInteger(), nullable=False),
    sa.Column('bits', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('audience_id', 'generation', 'block', name=op.f('pk_audience_bitmaps'))
    )
    postgres = op.get_context().dialect.name == "postgresql"
    op.execute(_BACKFILL.format(bit_or="bit_or" if postgres else "sum"))


def downgrade() -> None:
    op.drop_table('audience_bitmaps')
