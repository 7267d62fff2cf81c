"""selections: the index on round_id alone goes. The unique constraints on (round_id, image_id)
and (round_id, rank) begin with round_id and serve every lookup by round, the foreign key's
cascade included; the extra index only cost each lease and each label (an update that changes
an indexed column, so it adds an entry to every index of the table) one more entry.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_selections_round_id", table_name="selections")


def downgrade() -> None:
    op.create_index("ix_selections_round_id", "selections", ["round_id"])
