"""Dashboard users and sessions

Revision ID: 77318210c706
Revises: e478712300be
Create Date: 2026-11-24 04:36:00.697530
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '77318210c706'
down_revision = 'e478712300be'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Dashboard accounts (argon2id hashes) and their sessions (SHA-256 of the cookie token).
    op.create_table('dashboard_users',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('company_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=10), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_sign_in_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_dashboard_users_company_id_companies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_users')),
    sa.UniqueConstraint('email', name=op.f('uq_dashboard_users_email'))
    )
    with op.batch_alter_table('dashboard_users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dashboard_users_company_id'), ['company_id'], unique=False)

    op.create_table('dashboard_sessions',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['dashboard_users.id'], name=op.f('fk_dashboard_sessions_user_id_dashboard_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_dashboard_sessions'))
    )
    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_dashboard_sessions_expires_at', ['expires_at'], unique=False)



def downgrade() -> None:

    with op.batch_alter_table('dashboard_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_dashboard_sessions_expires_at')

    op.drop_table('dashboard_sessions')
    with op.batch_alter_table('dashboard_users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dashboard_users_company_id'))

    op.drop_table('dashboard_users')
