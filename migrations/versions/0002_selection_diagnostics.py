"""strategy options, selection summaries and diagnostics

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.add_column(sa.Column("strategy_options", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("rounds") as batch_op:
        batch_op.add_column(sa.Column("selection_summary", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("diagnostics", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch_op:
        batch_op.drop_column("diagnostics")
        batch_op.drop_column("selection_summary")
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("strategy_options")
