"""Campaign statistics without reading the event log: per-day counts of campaign push events
(filled from the existing log) and the stored influenced and re-engaged opens of finished days

Revision ID: ad0858bea004
Revises: c06fd06558ea
Create Date: 2026-11-24 07:03:32.634438
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'ad0858bea004'
down_revision = 'c06fd06558ea'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaign_event_counts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('campaign_token', sa.String(length=64), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('send_token', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('folded', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_event_counts'))
    )
    with op.batch_alter_table('campaign_event_counts', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_event_counts_campaign', ['campaign_token', 'day'], unique=False)
        batch_op.create_index('ix_campaign_event_counts_day', ['day', 'campaign_token'], unique=False)
        batch_op.create_index('ix_campaign_event_counts_unfolded', ['campaign_token'], unique=False, postgresql_where=sa.text('NOT folded'), sqlite_where=sa.text('NOT folded'))

    op.create_table('campaign_open_days',
    sa.Column('campaign_token', sa.String(length=32), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('version', sa.String(length=8), nullable=False),
    sa.Column('influenced_open', sa.Integer(), nullable=False),
    sa.Column('reengaged', sa.Integer(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('campaign_token', 'day', 'version', name=op.f('pk_campaign_open_days'))
    )
    # The counts of the events logged so far, folded (one row per campaign, day, send, kind).
    if op.get_context().dialect.name == "postgresql":
        day = "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        folded = "true"
    else:
        day = "substr(occurred_at, 1, 10)"
        folded = "1"
    op.execute(
        "INSERT INTO campaign_event_counts (campaign_token, day, send_token, kind, count, folded)"
        f" SELECT campaign_token, {day}, coalesce(send_token, ''), kind, count(*), {folded}"
        " FROM push_events WHERE campaign_token IS NOT NULL"
        " AND kind IN ('push_sent', 'push_opened', 'push_error', 'token_deleted')"
        f" GROUP BY campaign_token, {day}, coalesce(send_token, ''), kind"
    )


def downgrade() -> None:
    op.drop_table('campaign_open_days')
    with op.batch_alter_table('campaign_event_counts', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_event_counts_unfolded', postgresql_where=sa.text('NOT folded'), sqlite_where=sa.text('NOT folded'))
        batch_op.drop_index('ix_campaign_event_counts_day')
        batch_op.drop_index('ix_campaign_event_counts_campaign')

    op.drop_table('campaign_event_counts')
