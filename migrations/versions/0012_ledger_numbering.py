"""The usage ledger numbered (`usage_records.seq`, its primary key; the UUID stays unique) and
what each invoice billed kept as ranges of that numbering (`usage_takes`) instead of a mark on
every record (`usage_records.invoice_id`, dropped), with how far each agency's ledger is wholly
billed (`ledger_sweeps`).

Existing records are numbered so that, for each agency, period and currency, those one invoice
billed come together, then the unbilled ones: each invoice's take is then one range.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('usage_takes',
    sa.Column('id', BIGINT, autoincrement=True, nullable=False),
    sa.Column('invoice_id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('from_seq', sa.BigInteger(), nullable=False),
    sa.Column('through_seq', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_usage_takes_invoice_id_invoices'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_usage_takes_organization_id_organizations'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_takes'))
    )
    with op.batch_alter_table('usage_takes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_takes_invoice_id'), ['invoice_id'], unique=False)
        batch_op.create_index('ix_usage_takes_ledger', ['organization_id', 'period', 'currency'], unique=False)
    op.create_table('ledger_sweeps',
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('covered_through', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_ledger_sweeps_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('organization_id', name=op.f('pk_ledger_sweeps'))
    )

    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE usage_records SET seq = numbered.n FROM ("
        " SELECT u.id, row_number() OVER (ORDER BY u.organization_id, u.period, r.currency,"
        " u.invoice_id IS NULL, u.invoice_id, u.received_at, u.id) AS n"
        " FROM usage_records u JOIN resources r ON r.id = u.resource_id) AS numbered"
        " WHERE numbered.id = usage_records.id"
    )
    op.execute(
        "INSERT INTO usage_takes (invoice_id, organization_id, period, currency, from_seq, through_seq)"
        " SELECT u.invoice_id, u.organization_id, u.period, r.currency, min(u.seq) - 1, max(u.seq)"
        " FROM usage_records u JOIN resources r ON r.id = u.resource_id"
        " WHERE u.invoice_id IS NOT NULL"
        " GROUP BY u.invoice_id, u.organization_id, u.period, r.currency"
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_usage_records_billing', table_name='usage_records')
        op.drop_constraint('fk_usage_records_invoice_id_invoices', 'usage_records', type_='foreignkey')
        op.drop_column('usage_records', 'invoice_id')
        op.execute('CREATE SEQUENCE usage_records_seq_seq OWNED BY usage_records.seq')
        op.execute(
            "SELECT setval('usage_records_seq_seq',"
            " (SELECT coalesce(max(seq), 0) + 1 FROM usage_records), false)"
        )
        op.execute(
            "ALTER TABLE usage_records ALTER COLUMN seq SET DEFAULT nextval('usage_records_seq_seq'),"
            " ALTER COLUMN seq SET NOT NULL"
        )
        op.drop_constraint('pk_usage_records', 'usage_records', type_='primary')
        op.create_primary_key('pk_usage_records', 'usage_records', ['seq'])
        op.create_unique_constraint('uq_usage_records_id', 'usage_records', ['id'])
    else:
        with op.batch_alter_table(
            'usage_records', recreate='always', table_kwargs={'sqlite_autoincrement': True}
        ) as batch_op:
            batch_op.drop_index('ix_usage_records_billing')
            batch_op.drop_constraint('fk_usage_records_invoice_id_invoices', type_='foreignkey')
            batch_op.drop_column('invoice_id')
            batch_op.drop_constraint('pk_usage_records', type_='primary')
            batch_op.alter_column('seq', existing_type=sa.BigInteger(), type_=sa.Integer(), nullable=False)
            batch_op.create_primary_key('pk_usage_records', ['seq'])
            batch_op.create_unique_constraint('uq_usage_records_id', ['id'])
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.create_index('ix_usage_records_ledger', ['organization_id', 'seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_records_ledger')
        batch_op.add_column(sa.Column('invoice_id', sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE usage_records SET invoice_id = (SELECT t.invoice_id FROM usage_takes t"
        " JOIN invoices i ON i.id = t.invoice_id JOIN resources r ON r.currency = t.currency"
        " WHERE r.id = usage_records.resource_id AND i.state != 'void'"
        " AND t.organization_id = usage_records.organization_id"
        " AND t.period = usage_records.period"
        " AND usage_records.seq > t.from_seq AND usage_records.seq <= t.through_seq LIMIT 1)"
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_constraint('uq_usage_records_id', 'usage_records', type_='unique')
        op.drop_constraint('pk_usage_records', 'usage_records', type_='primary')
        op.create_primary_key('pk_usage_records', 'usage_records', ['id'])
        op.drop_column('usage_records', 'seq')
        op.create_foreign_key(
            'fk_usage_records_invoice_id_invoices', 'usage_records', 'invoices',
            ['invoice_id'], ['id'], ondelete='RESTRICT',
        )
    else:
        with op.batch_alter_table('usage_records', recreate='always') as batch_op:
            batch_op.drop_constraint('uq_usage_records_id', type_='unique')
            batch_op.create_primary_key('pk_usage_records', ['id'])
            batch_op.drop_column('seq')
            batch_op.create_foreign_key(
                'fk_usage_records_invoice_id_invoices', 'invoices',
                ['invoice_id'], ['id'], ondelete='RESTRICT',
            )
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.create_index('ix_usage_records_billing', ['organization_id', 'invoice_id', 'period'], unique=False)
    op.drop_table('ledger_sweeps')
    with op.batch_alter_table('usage_takes', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_takes_ledger')
        batch_op.drop_index(batch_op.f('ix_usage_takes_invoice_id'))
    op.drop_table('usage_takes')
