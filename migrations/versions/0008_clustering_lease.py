"""pool clusterings: attempts and a lease, as rounds have, so that one whose worker died or whose
message was lost is sent again by the same sweeper

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pool_clusterings") as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pool_clusterings") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("attempts")
