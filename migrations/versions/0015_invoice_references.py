"""What public buyers need on an invoice: their billing profile's legal identifier (SIRET, with
its ISO/IEC 6523 scheme), post code and city beside the street lines, the language of their
invoices, the references their orders carry by default (service code, commitment number) and
whether an order must carry them; an order's references, and an invoice line's copy of them.
Existing profiles are in English and require nothing, as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFERENCES = ('buyer_reference', 'purchase_order_reference')


def upgrade() -> None:
    with op.batch_alter_table('billing_profiles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('post_code', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('city', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('legal_id', sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column('legal_id_scheme', sa.String(length=4), nullable=True))
        batch_op.add_column(
            sa.Column('language', sa.String(length=2), server_default='en', nullable=False)
        )
        for name in REFERENCES:
            batch_op.add_column(sa.Column(name, sa.String(length=100), nullable=True))
            batch_op.add_column(
                sa.Column(
                    f'requires_{name}', sa.Boolean(), server_default=sa.false(), nullable=False
                )
            )
    for table in ('orders', 'invoice_lines'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in REFERENCES:
                batch_op.add_column(sa.Column(name, sa.String(length=100), nullable=True))


def downgrade() -> None:
    for table in ('invoice_lines', 'orders'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in REFERENCES:
                batch_op.drop_column(name)
    with op.batch_alter_table('billing_profiles', schema=None) as batch_op:
        for name in REFERENCES:
            batch_op.drop_column(f'requires_{name}')
            batch_op.drop_column(name)
        for name in ('language', 'legal_id_scheme', 'legal_id', 'city', 'post_code'):
            batch_op.drop_column(name)
