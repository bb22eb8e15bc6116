"""Push events by install, by campaign and kind, and by group_id: the dashboard's user lookup,
campaign statistics and last errors, transactional analytics

Revision ID: c06fd06558ea
Revises: 77318210c706
Create Date: 2026-11-24 04:47:28.726385
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = 'c06fd06558ea'
down_revision = '77318210c706'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On PostgreSQL the indexes build CONCURRENTLY: a large push log keeps taking inserts.
    concurrently = op.get_context().dialect.name == "postgresql"
    with op.get_context().autocommit_block():
        op.create_index(
            'ix_push_events_app_install', 'push_events', ['app_id', 'install_id', 'occurred_at'],
            postgresql_concurrently=concurrently,
        )
        # Replaces (campaign_token): same prefix, and a campaign's errors come in time order.
        op.create_index(
            'ix_push_events_campaign_kind', 'push_events',
            ['campaign_token', 'kind', 'occurred_at'], postgresql_concurrently=concurrently,
        )
        op.drop_index(
            'ix_push_events_campaign_token', table_name='push_events',
            postgresql_concurrently=concurrently,
        )
        # Partial: transactional events only, so campaign sends pay nothing for them.
        op.create_index(
            'ix_push_events_group_kind', 'push_events',
            ['app_id', 'group_id', 'kind', 'occurred_at'], postgresql_concurrently=concurrently,
            postgresql_where=sa.text('group_id IS NOT NULL'),
            sqlite_where=sa.text('group_id IS NOT NULL'),
        )
        op.create_index(
            'ix_push_events_groups_time', 'push_events',
            ['app_id', 'occurred_at', 'group_id', 'kind'], postgresql_concurrently=concurrently,
            postgresql_where=sa.text('group_id IS NOT NULL AND campaign_token IS NULL'),
            sqlite_where=sa.text('group_id IS NOT NULL AND campaign_token IS NULL'),
        )


def downgrade() -> None:
    op.drop_index('ix_push_events_groups_time', table_name='push_events')
    op.drop_index('ix_push_events_group_kind', table_name='push_events')
    op.create_index('ix_push_events_campaign_token', 'push_events', ['campaign_token'])
    op.drop_index('ix_push_events_campaign_kind', table_name='push_events')
    op.drop_index('ix_push_events_app_install', table_name='push_events')
