"""Leaner push event indexes (decision 0046): a campaign's events by a partial index of the
campaigns' rows only, and an installation's by a hash of its id

A day of push events is freed by unlinking its files (clarion.retention.partitions), which takes
time in proportion to their size: 10,000,000 events were 3.6 GB, of which 62 bytes an event for
(campaign_token, kind, occurred_at) over every row (transactional rows indexed under a NULL
token nothing looks up) and 87 for the btree (app_id, install_id, occurred_at). Every query
that reads these names a campaign token (`=`, which implies IS NOT NULL), or an installation
by equality.

On PostgreSQL push_events is partitioned: CREATE INDEX CONCURRENTLY does not take a
partitioned table, so each index is made invalid ON ONLY the parent, built CONCURRENTLY on
each partition (writers go on), and attached; the parent's becomes valid with its last
partition. Dropping the two older indexes takes ACCESS EXCLUSIVE on push_events for the
catalogue work and the unlink of their files (event writers wait that long, readers too: no
stop, but not at the busiest hour on a large log).

Revision ID: 5b8e1d4c2f70
Revises: 3f9d2c6b8a41
Create Date: 2026-12-07 11:00:00.000000
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection, text

revision = '5b8e1d4c2f70'
down_revision = '3f9d2c6b8a41'
branch_labels = None
depends_on = None

CAMPAIGNS = 'ix_push_events_of_campaigns'
INSTALL = 'ix_push_events_install'
RETENTION_LOCK = zlib.crc32(b'clarion.retention.partitions')


def _partitions(connection: Connection) -> list[str]:
    return list(
        connection.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'push_events'::regclass AND NOT i.inhdetachpending"
                " ORDER BY c.relname"
            )
        )
    )


def _create_partitioned(connection: Connection, name: str, definition: str) -> None:
    """`CREATE INDEX {name} ON push_events {definition}`, built partition by partition
    without blocking writers. Re-run after a stop half-way, it goes on where it stopped."""
    connection.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS {name} ON ONLY push_events {definition}')
    for partition in _partitions(connection):
        own = f'{partition}_{name.removeprefix("ix_push_events_")}'
        state = connection.execute(
            text(
                "SELECT i.indisvalid, EXISTS (SELECT FROM pg_inherits h"
                " WHERE h.inhrelid = i.indexrelid) FROM pg_index i"
                " WHERE i.indexrelid = to_regclass(:own)"
            ),
            {'own': own},
        ).first()
        if state is not None and state[1]:
            continue  # built and attached
        if state is None or not state[0]:
            # None yet, or an invalid one left by a build cut short: built (again).
            connection.exec_driver_sql(f'DROP INDEX CONCURRENTLY IF EXISTS {own}')
            connection.exec_driver_sql(
                f'CREATE INDEX CONCURRENTLY {own} ON {partition} {definition}'
            )
        connection.exec_driver_sql(f'ALTER INDEX {name} ATTACH PARTITION {own}')


def upgrade() -> None:
    if op.get_context().dialect.name != 'postgresql':
        op.create_index(
            CAMPAIGNS, 'push_events', ['campaign_token', 'kind', 'occurred_at'],
            sqlite_where=sa.text('campaign_token IS NOT NULL'),
        )
        op.create_index(INSTALL, 'push_events', ['install_id'])
        op.drop_index('ix_push_events_campaign_kind', table_name='push_events')
        op.drop_index('ix_push_events_app_install', table_name='push_events')
        return
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        # The retention pass's lock (clarion.retention.partitions._LOCK_KEY): no partition
        # is created or dropped by a worker of the old release meanwhile.
        connection.exec_driver_sql(f'SELECT pg_advisory_lock({RETENTION_LOCK})')
        try:
            _create_partitioned(
                connection, CAMPAIGNS,
                '(campaign_token, kind, occurred_at) WHERE campaign_token IS NOT NULL',
            )
            _create_partitioned(connection, INSTALL, 'USING hash (install_id)')
            connection.exec_driver_sql('DROP INDEX IF EXISTS ix_push_events_campaign_kind')
            connection.exec_driver_sql('DROP INDEX IF EXISTS ix_push_events_app_install')
        finally:
            connection.exec_driver_sql(f'SELECT pg_advisory_unlock({RETENTION_LOCK})')


def downgrade() -> None:
    # Plain builds (SHARE lock: event writers wait): a downgrade is a stop anyway.
    op.create_index(
        'ix_push_events_app_install', 'push_events', ['app_id', 'install_id', 'occurred_at']
    )
    op.create_index(
        'ix_push_events_campaign_kind', 'push_events', ['campaign_token', 'kind', 'occurred_at']
    )
    op.drop_index(INSTALL, table_name='push_events')
    op.drop_index(CAMPAIGNS, table_name='push_events')
