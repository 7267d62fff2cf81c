"""selections: `labeled`, whether the cell has a current label, kept beside the queue so that
leasing the next cell and checking a step's completion read one index instead of joining every
label of the round; and an index on leased_by_id for an annotator's own lease

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UNLABELED = "NOT labeled"


def upgrade() -> None:
    with op.batch_alter_table("selections") as batch_op:
        batch_op.add_column(sa.Column("labeled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE selections SET labeled = EXISTS (SELECT 1 FROM labels WHERE labels.image_id = selections.image_id"
        " AND labels.retracted_at IS NULL AND labels.superseded_at IS NULL)"
    )
    op.create_index(
        "ix_selections_unlabeled_round_rank",
        "selections",
        ["round_id", "rank"],
        postgresql_where=sa.text(UNLABELED),
        sqlite_where=sa.text(UNLABELED),
    )
    op.create_index("ix_selections_leased_by_id", "selections", ["leased_by_id"])


def downgrade() -> None:
    op.drop_index("ix_selections_leased_by_id", table_name="selections")
    op.drop_index("ix_selections_unlabeled_round_rank", table_name="selections")
    with op.batch_alter_table("selections") as batch_op:
        batch_op.drop_column("labeled")
