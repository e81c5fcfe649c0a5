"""People: persons and their identities at identity providers, memberships (roles in
organizations), organizations' identifiers (a `siret`, an e-mail domain), the OpenID Connect
identity providers people sign in with, invitations and browser sessions. New tables only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:46:34.303058
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('identity_providers',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('issuer', sa.String(length=500), nullable=False),
    sa.Column('client_id', sa.String(length=255), nullable=False),
    sa.Column('client_secret_ciphertext', sa.Text(), nullable=True),
    sa.Column('scopes', sa.String(length=500), nullable=False),
    sa.Column('organization_claim', sa.String(length=100), nullable=True),
    sa.Column('match_email_domain', sa.Boolean(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_identity_providers')),
    sa.UniqueConstraint('issuer', name=op.f('uq_identity_providers_issuer')),
    sa.UniqueConstraint('name', name=op.f('uq_identity_providers_name'))
    )
    with op.batch_alter_table('identity_providers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_providers_created_at'), ['created_at'], unique=False)

    op.create_table('users',
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('email_key', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('language', sa.String(length=2), nullable=False),
    sa.Column('disabled_at', TIMESTAMP, nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email_key', name=op.f('uq_users_email_key'))
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_users_created_at'), ['created_at'], unique=False)

    op.create_table('browser_sessions',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('identity_provider_id', sa.Uuid(), nullable=True),
    sa.Column('id_token', sa.Text(), nullable=True),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('last_seen_at', TIMESTAMP, nullable=False),
    sa.Column('expires_at', TIMESTAMP, nullable=False),
    sa.Column('ended_at', TIMESTAMP, nullable=True),
    sa.Column('end_reason', sa.String(length=50), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['identity_provider_id'], ['identity_providers.id'], name=op.f('fk_browser_sessions_identity_provider_id_identity_providers')),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_browser_sessions_organization_id_organizations')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_browser_sessions_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_browser_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_browser_sessions_token_hash'))
    )
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_browser_sessions_user_id'), ['user_id'], unique=False)

    op.create_table('invitations',
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('email_key', sa.String(length=320), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', TIMESTAMP, nullable=False),
    sa.Column('invited_by', sa.String(length=64), nullable=False),
    sa.Column('accepted_at', TIMESTAMP, nullable=True),
    sa.Column('accepted_by', sa.Uuid(), nullable=True),
    sa.Column('revoked_at', TIMESTAMP, nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['accepted_by'], ['users.id'], name=op.f('fk_invitations_accepted_by_users')),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_invitations_organization_id_organizations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invitations')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_invitations_token_hash'))
    )
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invitations_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_invitations_email_key'), ['email_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_invitations_organization_id'), ['organization_id'], unique=False)

    op.create_table('memberships',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_memberships_organization_id_organizations')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_memberships_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_memberships')),
    sa.UniqueConstraint('user_id', 'organization_id', name=op.f('uq_memberships_user_id_organization_id'))
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_memberships_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_memberships_user_id'), ['user_id'], unique=False)

    op.create_table('organization_identifiers',
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('scheme', sa.String(length=50), nullable=False),
    sa.Column('value', sa.String(length=255), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_organization_identifiers_organization_id_organizations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organization_identifiers')),
    sa.UniqueConstraint('scheme', 'value', name=op.f('uq_organization_identifiers_scheme_value'))
    )
    with op.batch_alter_table('organization_identifiers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_organization_identifiers_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_organization_identifiers_organization_id'), ['organization_id'], unique=False)

    op.create_table('user_identities',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('issuer', sa.String(length=500), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_identities_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_identities')),
    sa.UniqueConstraint('issuer', 'subject', name=op.f('uq_user_identities_issuer_subject'))
    )
    with op.batch_alter_table('user_identities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_identities_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_user_identities_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('user_identities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_identities_user_id'))
        batch_op.drop_index(batch_op.f('ix_user_identities_created_at'))

    op.drop_table('user_identities')
    with op.batch_alter_table('organization_identifiers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_organization_identifiers_organization_id'))
        batch_op.drop_index(batch_op.f('ix_organization_identifiers_created_at'))

    op.drop_table('organization_identifiers')
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_user_id'))
        batch_op.drop_index(batch_op.f('ix_memberships_organization_id'))
        batch_op.drop_index(batch_op.f('ix_memberships_created_at'))

    op.drop_table('memberships')
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invitations_organization_id'))
        batch_op.drop_index(batch_op.f('ix_invitations_email_key'))
        batch_op.drop_index(batch_op.f('ix_invitations_created_at'))

    op.drop_table('invitations')
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_browser_sessions_user_id'))

    op.drop_table('browser_sessions')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_created_at'))

    op.drop_table('users')
    with op.batch_alter_table('identity_providers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_providers_created_at'))

    op.drop_table('identity_providers')
