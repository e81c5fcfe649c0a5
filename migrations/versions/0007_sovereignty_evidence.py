"""Sovereignty evidence: one record per claim with its state and who vouched; trusted
issuers; confusable-proof name keys for organizations and providers.

The certifications, jurisdictions and regions already stored were entered by the consortium
(only admins could write them), so they become verified evidence. Two existing names whose
keys collide keep working: the later one's key gets its id appended (and a warning is
printed), so the migration never fails on old data; rename one of them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 06:20:33.295140
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.names import name_key

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)

certifications = sa.table(
    'provider_certifications',
    sa.column('id', sa.Uuid()),
    sa.column('provider_id', sa.Uuid()),
    sa.column('scheme', sa.String()),
    sa.column('level', sa.String()),
    sa.column('valid_from', TIMESTAMP),
    sa.column('valid_until', TIMESTAMP),
    sa.column('evidence_url', sa.String()),
)
providers = sa.table(
    'providers',
    sa.column('id', sa.Uuid()),
    sa.column('name', sa.String()),
    sa.column('name_key', sa.String()),
    sa.column('regions', sa.JSON()),
    sa.column('operator_country', sa.String()),
    sa.column('parent_country', sa.String()),
    sa.column('extraterritorial_exposure', sa.JSON()),
    sa.column('created_at', TIMESTAMP),
)
organizations = sa.table(
    'organizations',
    sa.column('id', sa.Uuid()),
    sa.column('name', sa.String()),
    sa.column('name_key', sa.String()),
    sa.column('created_at', TIMESTAMP),
)


def _evidence_table() -> sa.Table:
    return sa.table(
        'provider_evidence',
        *(sa.column(name, kind) for name, kind in (
            ('id', sa.Uuid()), ('provider_id', sa.Uuid()), ('kind', sa.String()),
            ('state', sa.String()), ('scheme', sa.String()), ('level', sa.String()),
            ('valid_from', TIMESTAMP), ('valid_until', TIMESTAMP),
            ('evidence_url', sa.String()), ('operator_country', sa.String()),
            ('parent_country', sa.String()), ('extraterritorial_exposure', sa.JSON()),
            ('region_code', sa.String()), ('country', sa.String()), ('city', sa.String()),
            ('datacenter_tier', sa.Integer()), ('submitted_by', sa.String()),
            ('submitted_at', TIMESTAMP), ('decided_by', sa.String()),
            ('decided_at', TIMESTAMP),
        ))
    )


def _fill_name_keys(table: sa.TableClause) -> None:
    connection = op.get_bind()
    seen: set[str] = set()
    rows = connection.execute(
        sa.select(table.c.id, table.c.name).order_by(table.c.created_at, table.c.id)
    ).all()
    for row_id, name in rows:
        key = name_key(name)
        if key in seen:
            print(f"warning: {table.name} {name!r} looks like an earlier name; rename it")
            key = f"{key}#{row_id}"
        seen.add(key)
        connection.execute(table.update().where(table.c.id == row_id).values(name_key=key))


def upgrade() -> None:
    op.create_table('trusted_issuers',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('name_key', sa.String(length=800), nullable=False),
    sa.Column('issuer', sa.String(length=500), nullable=False),
    sa.Column('jwks', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trusted_issuers')),
    sa.UniqueConstraint('issuer', name=op.f('uq_trusted_issuers_issuer')),
    sa.UniqueConstraint('name', name=op.f('uq_trusted_issuers_name')),
    sa.UniqueConstraint('name_key', name=op.f('uq_trusted_issuers_name_key'))
    )
    with op.batch_alter_table('trusted_issuers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trusted_issuers_created_at'), ['created_at'], unique=False)

    op.create_table('provider_evidence',
    sa.Column('provider_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.Enum('certification', 'jurisdiction', 'region', name='evidencekind', native_enum=False, length=20), nullable=False),
    sa.Column('state', sa.Enum('pending', 'verified', 'rejected', 'withdrawn', 'superseded', name='evidencestate', native_enum=False, length=20), nullable=False),
    sa.Column('scheme', sa.String(length=40), nullable=True),
    sa.Column('level', sa.String(length=60), nullable=True),
    sa.Column('valid_from', TIMESTAMP, nullable=True),
    sa.Column('valid_until', TIMESTAMP, nullable=True),
    sa.Column('issuer', sa.String(length=200), nullable=True),
    sa.Column('evidence_url', sa.String(length=500), nullable=True),
    sa.Column('document_sha256', sa.String(length=64), nullable=True),
    sa.Column('statement', sa.Text(), nullable=True),
    sa.Column('trusted_issuer_id', sa.Uuid(), nullable=True),
    sa.Column('key_id', sa.String(length=200), nullable=True),
    sa.Column('operator_country', sa.String(length=2), nullable=True),
    sa.Column('parent_country', sa.String(length=2), nullable=True),
    sa.Column('extraterritorial_exposure', sa.JSON(), nullable=True),
    sa.Column('region_code', sa.String(length=50), nullable=True),
    sa.Column('country', sa.String(length=2), nullable=True),
    sa.Column('city', sa.String(length=100), nullable=True),
    sa.Column('datacenter_tier', sa.Integer(), nullable=True),
    sa.Column('submitted_by', sa.String(length=200), nullable=False),
    sa.Column('submitted_at', TIMESTAMP, nullable=False),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('decided_by_organization_id', sa.Uuid(), nullable=True),
    sa.Column('decided_at', TIMESTAMP, nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_provider_evidence_provider_id_providers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trusted_issuer_id'], ['trusted_issuers.id'], name=op.f('fk_provider_evidence_trusted_issuer_id_trusted_issuers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_evidence'))
    )
    with op.batch_alter_table('provider_evidence', schema=None) as batch_op:
        batch_op.create_index('ix_provider_evidence_queue', ['state', 'submitted_at', 'id'], unique=False)
        batch_op.create_index('ix_provider_evidence_scheme', ['scheme', 'state', 'provider_id'], unique=False)
        batch_op.create_index('ix_provider_evidence_standing', ['provider_id', 'kind', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_provider_evidence_trusted_issuer_id'), ['trusted_issuer_id'], unique=False)

    _carry_evidence_over()

    with op.batch_alter_table('provider_certifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_certifications_lookup'))
    op.drop_table('provider_certifications')

    for name, table in (('organizations', organizations), ('providers', providers)):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(sa.Column('name_key', sa.String(length=800), nullable=True))
        _fill_name_keys(table)
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.alter_column('name_key', existing_type=sa.String(length=800), nullable=False)
            batch_op.create_unique_constraint(batch_op.f(f'uq_{name}_name_key'), ['name_key'])


def _carry_evidence_over() -> None:
    connection = op.get_bind()
    evidence = _evidence_table()
    rows: list[dict] = []
    created = {}
    columns = [c for c in providers.columns if c.name != 'name_key']
    for provider in connection.execute(sa.select(*columns)).mappings():
        created[provider['id']] = provider['created_at']
        base = {
            'provider_id': provider['id'], 'state': 'verified', 'submitted_by': 'consortium',
            'submitted_at': provider['created_at'], 'decided_by': 'consortium',
            'decided_at': provider['created_at'],
        }
        rows.append({
            **base, 'id': uuid.uuid4(), 'kind': 'jurisdiction',
            'operator_country': provider['operator_country'],
            'parent_country': provider['parent_country'],
            'extraterritorial_exposure': sorted(provider['extraterritorial_exposure'] or []),
        })
        for region in provider['regions'] or []:
            rows.append({
                **base, 'id': uuid.uuid4(), 'kind': 'region', 'region_code': region['code'],
                'country': region['country'], 'city': region.get('city'),
                'datacenter_tier': region.get('datacenter_tier'),
            })
    for certificate in connection.execute(sa.select(certifications)).mappings():
        at = created[certificate['provider_id']]
        rows.append({
            'id': certificate['id'], 'provider_id': certificate['provider_id'],
            'kind': 'certification', 'state': 'verified', 'scheme': certificate['scheme'],
            'level': certificate['level'], 'valid_from': certificate['valid_from'],
            'valid_until': certificate['valid_until'],
            'evidence_url': certificate['evidence_url'], 'submitted_by': 'consortium',
            'submitted_at': at, 'decided_by': 'consortium', 'decided_at': at,
        })
    names = [column.name for column in evidence.columns]
    if rows:
        connection.execute(evidence.insert(), [{c: row.get(c) for c in names} for row in rows])


def downgrade() -> None:
    for name in ('providers', 'organizations'):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f'uq_{name}_name_key'), type_='unique')
            batch_op.drop_column('name_key')

    op.create_table('provider_certifications',
    sa.Column('provider_id', sa.Uuid(), nullable=False),
    sa.Column('scheme', sa.String(length=40), nullable=False),
    sa.Column('level', sa.String(length=60), nullable=True),
    sa.Column('valid_from', TIMESTAMP, nullable=False),
    sa.Column('valid_until', TIMESTAMP, nullable=False),
    sa.Column('evidence_url', sa.String(length=500), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_provider_certifications_provider_id_providers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_certifications'))
    )
    with op.batch_alter_table('provider_certifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_provider_certifications_lookup'), ['provider_id', 'scheme'], unique=False)
    # Verified certifications go back (the provider columns hold the verified jurisdiction
    # and regions already); claims and decisions are lost.
    evidence = _evidence_table()
    connection = op.get_bind()
    kept = connection.execute(
        sa.select(
            evidence.c.id, evidence.c.provider_id, evidence.c.scheme, evidence.c.level,
            evidence.c.valid_from, evidence.c.valid_until, evidence.c.evidence_url,
        ).where(evidence.c.kind == 'certification', evidence.c.state == 'verified')
    ).mappings().all()
    if kept:
        connection.execute(certifications.insert(), [dict(row) for row in kept])

    with op.batch_alter_table('provider_evidence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_provider_evidence_trusted_issuer_id'))
        batch_op.drop_index('ix_provider_evidence_standing')
        batch_op.drop_index('ix_provider_evidence_scheme')
        batch_op.drop_index('ix_provider_evidence_queue')
    op.drop_table('provider_evidence')
    with op.batch_alter_table('trusted_issuers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trusted_issuers_created_at'))
    op.drop_table('trusted_issuers')
