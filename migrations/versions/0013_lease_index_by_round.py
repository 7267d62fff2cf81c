"""selections: the index on leased_by_id becomes one on (leased_by_id, round_id), so that the
caller's held cell is found from the caller's leases in the round alone. With the index on
leased_by_id only, PostgreSQL could instead AND it with a scan of the whole step's unlabeled
cells (its estimate of that rank range is a default guess), which took milliseconds a label in
a 60,000-cell step once the annotators held leases in a few projects.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_selections_leased_by_id_round_id", "selections", ["leased_by_id", "round_id"])
    op.drop_index("ix_selections_leased_by_id", table_name="selections")


def downgrade() -> None:
    op.create_index("ix_selections_leased_by_id", "selections", ["leased_by_id"])
    op.drop_index("ix_selections_leased_by_id_round_id", table_name="selections")
