"""Job lanes and fair turns; webhook endpoints that disable themselves.

- `jobs.lane`: which jobs compete with which for a worker (broker/jobs/lanes.py). Existing
  jobs get the lane of their kind, as the table stood at this revision (a kind it does not
  name goes to `other`).
- `job_lane_turns`: when each organization was last served in each lane (empty at first:
  every organization starts with the same claim to the next turn).
- `webhook_endpoints`: consecutive failed deliveries, the last error and when, the last
  delivery, and when and why the endpoint was disabled. Existing endpoints start at zero
  failures; inactive ones stay disabled, without a reason.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LANE_OF_KIND = {
    'order.provision': 'provisioning',
    'resource.action': 'provisioning',
    'resources.reconcile': 'provisioning',
    'usage.meter': 'billing',
    'usage.poll': 'billing',
    'billing.run': 'billing',
    'payments.stripe_sync': 'billing',
    'payments.stripe_void': 'billing',
    'payments.stripe_credit': 'billing',
    'provider.sync_offers': 'catalogue',
    'webhook.deliver': 'webhooks',
}


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lane', sa.String(length=20), nullable=True))
    jobs = sa.table('jobs', sa.column('kind', sa.String()), sa.column('lane', sa.String()))
    op.execute(jobs.update().values(lane=sa.case(LANE_OF_KIND, value=jobs.c.kind, else_='other')))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('lane', existing_type=sa.String(length=20), nullable=False)
        batch_op.create_index('ix_jobs_lane_ready', ['lane', 'state', 'run_after'], unique=False)

    op.create_table('job_lane_turns',
    sa.Column('lane', sa.String(length=20), nullable=False),
    sa.Column('organization_id', sa.Uuid(), nullable=False),
    sa.Column('served_seq', sa.BigInteger(), nullable=False),
    sa.Column('served_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('lane', 'organization_id', name=op.f('pk_job_lane_turns'))
    )

    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False)
        )
        batch_op.add_column(sa.Column('last_error', sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column('last_delivered_at', sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('disabled_reason', sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.drop_column('disabled_reason')
        batch_op.drop_column('disabled_at')
        batch_op.drop_column('last_delivered_at')
        batch_op.drop_column('last_failure_at')
        batch_op.drop_column('last_error')
        batch_op.drop_column('consecutive_failures')

    op.drop_table('job_lane_turns')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_lane_ready')
        batch_op.drop_column('lane')
