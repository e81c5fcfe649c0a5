"""An offer's search text (`offers.search_text`): its name, SKU and provider's name, each
lower-cased by the database's own `lower()`, one line each — what a search's `q` looks in, one
`LIKE` instead of three `lower(…) LIKE` per row; filled here for the offers there are. On
PostgreSQL a trigram index (`pg_trgm`, a trusted extension since PostgreSQL 13: the database's
owner may create it) serves `LIKE '%…%'`; on SQLite the index is a plain one (the models
describe both databases alike). Going down drops the column and its index, not the
extension (something else may use it).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == 'postgresql'
    if postgresql:
        op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('search_text', sa.Text(), nullable=True))
    op.execute(
        sa.text(
            "UPDATE offers SET search_text = lower(name) || :line || lower(sku) || :line"
            " || lower((SELECT providers.name FROM providers"
            " WHERE providers.id = offers.provider_id))"
        ).bindparams(line='\n')
    )
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.alter_column('search_text', existing_type=sa.Text(), nullable=False)
        batch_op.create_index(
            'ix_offers_search_text', ['search_text'], unique=False,
            postgresql_using='gin', postgresql_ops={'search_text': 'gin_trgm_ops'},
        )


def downgrade() -> None:
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.drop_index('ix_offers_search_text')
        batch_op.drop_column('search_text')
