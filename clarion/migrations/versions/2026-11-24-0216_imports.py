"""flat-file imports: sources, files seen, file contents (apply_changes), run history

Revision ID: 511a9f069cc8
Revises: 2a7b2305a6b8
Create Date: 2026-11-24 02:16:44.358715
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '511a9f069cc8'
down_revision = '2a7b2305a6b8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Flat-file audience imports (clarion/imports).
    op.create_table('import_sources',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('credentials', sa.Text(), nullable=True),
    sa.Column('pattern', sa.String(length=255), nullable=False),
    sa.Column('audience_name', sa.String(length=255), nullable=True),
    sa.Column('audience_pattern', sa.String(length=255), nullable=True),
    sa.Column('id_kind', sa.String(length=16), nullable=False),
    sa.Column('header', sa.Boolean(), nullable=False),
    sa.Column('delimiter', sa.String(length=1), nullable=False),
    sa.Column('id_column', sa.String(length=255), nullable=False),
    sa.Column('encoding', sa.String(length=32), nullable=False),
    sa.Column('on_change', sa.String(length=16), nullable=False),
    sa.Column('delete_after', sa.Boolean(), nullable=False),
    sa.Column('poll_interval_seconds', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], name=op.f('fk_import_sources_app_id_apps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_sources')),
    sa.UniqueConstraint('app_id', 'name', name=op.f('uq_import_sources_app_id_name'))
    )
    with op.batch_alter_table('import_sources', schema=None) as batch_op:
        batch_op.create_index('ix_import_sources_next_poll_at', ['next_poll_at'], unique=False)

    op.create_table('import_files',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('path', sa.String(length=2048), nullable=False),
    sa.Column('fingerprint', sa.String(length=256), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('audience_name', sa.String(length=255), nullable=True),
    sa.Column('audience_id', sa.Integer(), nullable=True),
    sa.Column('audience_generation', sa.Integer(), nullable=True),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_fingerprint', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['source_id'], ['import_sources.id'], name=op.f('fk_import_files_source_id_import_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_files')),
    sa.UniqueConstraint('source_id', 'path', name=op.f('uq_import_files_source_id_path'))
    )
    op.create_table('import_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('path', sa.String(length=2048), nullable=True),
    sa.Column('audience_name', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('lines_read', sa.Integer(), nullable=False),
    sa.Column('ids_accepted', sa.Integer(), nullable=False),
    sa.Column('ids_rejected', sa.Integer(), nullable=False),
    sa.Column('first_rejections', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('nb_ids', sa.Integer(), nullable=True),
    sa.Column('added', sa.Integer(), nullable=True),
    sa.Column('removed', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=1024), nullable=True),
    sa.Column('indexing_token', sa.String(length=36), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['source_id'], ['import_sources.id'], name=op.f('fk_import_runs_source_id_import_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_runs'))
    )
    with op.batch_alter_table('import_runs', schema=None) as batch_op:
        batch_op.create_index('ix_import_runs_source_started', ['source_id', 'started_at'], unique=False)

    op.create_table('import_file_members',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('member_id', sa.String(length=512), nullable=False),
    sa.PrimaryKeyConstraint('file_id', 'member_id', name=op.f('pk_import_file_members'))
    )


def downgrade() -> None:
    op.drop_table('import_file_members')
    with op.batch_alter_table('import_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_import_runs_source_started')

    op.drop_table('import_runs')
    op.drop_table('import_files')
    with op.batch_alter_table('import_sources', schema=None) as batch_op:
        batch_op.drop_index('ix_import_sources_next_poll_at')

    op.drop_table('import_sources')
