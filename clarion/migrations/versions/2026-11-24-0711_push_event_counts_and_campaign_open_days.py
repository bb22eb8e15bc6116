"""Statistics without reading the event log: per-day counts of the push events of campaigns and
group_ids (filled from the existing log), and campaigns' influenced and re-engaged opens stored
per finished day; the index the groups' table read is no longer needed

Revision ID: d96ef298ffb2
Revises: c06fd06558ea
Create Date: 2026-11-24 07:11:57.715608
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'd96ef298ffb2'
down_revision = 'c06fd06558ea'
branch_labels = None
depends_on = None

_TRANSACTIONAL = "group_id IS NOT NULL AND campaign_token IS NULL"


def upgrade() -> None:
    op.create_table('campaign_open_days',
    sa.Column('campaign_token', sa.String(length=32), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('version', sa.String(length=8), nullable=False),
    sa.Column('influenced_open', sa.Integer(), nullable=False),
    sa.Column('reengaged', sa.Integer(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('campaign_token', 'day', 'version', name=op.f('pk_campaign_open_days'))
    )
    op.create_table('push_event_counts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('campaign_token', sa.String(length=64), nullable=False),
    sa.Column('group_id', sa.String(length=128), nullable=False),
    sa.Column('send_token', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('folded', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_push_event_counts'))
    )
    op.create_index('ix_push_event_counts_campaign', 'push_event_counts', ['campaign_token', 'day'])
    op.create_index('ix_push_event_counts_day', 'push_event_counts', ['day'])
    op.create_index(
        'ix_push_event_counts_group', 'push_event_counts', ['app_id', 'day', 'group_id'],
        postgresql_where=sa.text("group_id <> ''"), sqlite_where=sa.text("group_id <> ''"),
    )
    op.create_index(
        'ix_push_event_counts_unfolded', 'push_event_counts', ['campaign_token', 'group_id'],
        postgresql_where=sa.text('NOT folded'), sqlite_where=sa.text('NOT folded'),
    )
    # The counts of the events logged so far, folded (one row per key), as
    # clarion.events.service.record_push_events would have written them.
    if op.get_context().dialect.name == "postgresql":
        day = "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        folded = "true"
    else:
        day = "substr(occurred_at, 1, 10)"
        folded = "1"
    campaign = "coalesce(campaign_token, '')"
    key = (
        f"app_id, {day}, {campaign}, coalesce(group_id, ''),"
        f" CASE WHEN {campaign} = '' THEN '' ELSE coalesce(send_token, '') END, kind"
    )
    op.execute(
        "INSERT INTO push_event_counts"
        " (app_id, day, campaign_token, group_id, send_token, kind, count, folded)"
        f" SELECT {key}, count(*), {folded} FROM push_events"
        " WHERE (campaign_token IS NOT NULL OR group_id IS NOT NULL)"
        " AND kind IN ('push_sent', 'push_opened', 'push_error', 'token_deleted')"
        f" GROUP BY {key}"
    )
    op.drop_index('ix_push_events_groups_time', table_name='push_events')


def downgrade() -> None:
    op.create_index(
        'ix_push_events_groups_time', 'push_events', ['app_id', 'occurred_at', 'group_id', 'kind'],
        postgresql_where=sa.text(_TRANSACTIONAL), sqlite_where=sa.text(_TRANSACTIONAL),
    )
    op.drop_table('push_event_counts')
    op.drop_table('campaign_open_days')
