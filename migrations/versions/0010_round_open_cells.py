"""rounds: `open_cells`, how many cells of the round's step have no label yet. The label that
takes it to 0 opens the next round; decrementing a counter in the round's row serialises the
step's last labels on that row without a second statement (backend.services.annotating).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch_op:
        batch_op.add_column(sa.Column("open_cells", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE rounds SET open_cells = (SELECT count(*) FROM selections WHERE selections.round_id = rounds.id"
        " AND selections.rank < rounds.n_selected AND NOT selections.labeled) WHERE state = 'done'"
    )


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch_op:
        batch_op.drop_column("open_cells")
