"""Payments received outside Stripe (`invoice_payments`): bank transfers finance records
against an issued invoice — amount in the invoice's currency (millionths, as all money), the
day the money arrived, the transfer's reference, who recorded it. Going down drops them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('invoice_payments',
    sa.Column('invoice_id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('received_on', sa.Date(), nullable=False),
    sa.Column('reference', sa.String(length=140), nullable=False),
    sa.Column('recorded_by', sa.String(length=100), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_invoice_payments_invoice_id_invoices'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_invoice_payments_organization_id_organizations'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_payments'))
    )
    with op.batch_alter_table('invoice_payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invoice_payments_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_invoice_payments_listing', ['invoice_id', 'created_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('invoice_payments', schema=None) as batch_op:
        batch_op.drop_index('ix_invoice_payments_listing')
        batch_op.drop_index(batch_op.f('ix_invoice_payments_created_at'))
    op.drop_table('invoice_payments')
