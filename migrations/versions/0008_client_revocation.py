"""API client revocation and secret rotation: a client's secret has a version, which every
access token carries, so tokens issued before a rotation are refused; and the time of the
last rotation.

Existing clients start at version 1, which is also what a token without the claim (issued
before this migration) is taken to carry: their tokens keep working until they expire.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_clients', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('credential_version', sa.Integer(), server_default='1', nullable=False)
        )
        batch_op.add_column(
            sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('api_clients', schema=None) as batch_op:
        batch_op.drop_column('rotated_at')
        batch_op.drop_column('credential_version')
