"""Storage: offers of block volumes and object storage (their specs), resources of every kind
(a volume's size and attachment, a bucket's retention), the size a volume had from each of its
events on, and how an agency reaches a bucket (`bucket_access`, the secret encrypted).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 14:07:50.453409
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('bucket_access',
    sa.Column('resource_id', sa.Uuid(), nullable=False),
    sa.Column('endpoint', sa.String(length=500), nullable=False),
    sa.Column('bucket', sa.String(length=63), nullable=False),
    sa.Column('region', sa.String(length=50), nullable=False),
    sa.Column('access_key_id', sa.String(length=200), nullable=False),
    sa.Column('secret_ciphertext', sa.String(length=1000), nullable=True),
    sa.Column('issued_at', TIMESTAMP, nullable=False),
    sa.Column('shown_at', TIMESTAMP, nullable=True),
    sa.ForeignKeyConstraint(['resource_id'], ['resources.id'], name=op.f('fk_bucket_access_resource_id_resources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('resource_id', name=op.f('pk_bucket_access'))
    )
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('size_gib', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('performance', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('iops', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('encrypted', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('versioning', sa.Boolean(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('immutability_days', sa.Integer(), nullable=True))
        batch_op.create_index('ix_offers_search_kind', ['state', 'kind', 'monthly_price', 'id'], unique=False)

    with op.batch_alter_table('resource_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('size_gib', sa.Integer(), nullable=True))

    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=20), server_default='vm', nullable=False))
        batch_op.add_column(sa.Column('size_gib', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('attached_to_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('retention_days', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_resources_attached_to_id'), ['attached_to_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_resources_attached_to_id_resources'), 'resources', ['attached_to_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_resources_attached_to_id_resources'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_resources_attached_to_id'))
        batch_op.drop_column('retention_days')
        batch_op.drop_column('attached_to_id')
        batch_op.drop_column('size_gib')
        batch_op.drop_column('kind')

    with op.batch_alter_table('resource_events', schema=None) as batch_op:
        batch_op.drop_column('size_gib')

    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.drop_index('ix_offers_search_kind')
        batch_op.drop_column('immutability_days')
        batch_op.drop_column('versioning')
        batch_op.drop_column('encrypted')
        batch_op.drop_column('iops')
        batch_op.drop_column('performance')
        batch_op.drop_column('size_gib')

    op.drop_table('bucket_access')
