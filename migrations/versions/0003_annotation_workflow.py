"""skips and unsure notes, label first then reveal, relevance maps

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.add_column(sa.Column("reveal_after_label", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("labels") as batch_op:
        batch_op.add_column(sa.Column("hints_seen", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table(
        "cell_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cell_notes") as batch_op:
        batch_op.create_index(batch_op.f("ix_cell_notes_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cell_notes_project_id"), ["project_id"], unique=False)
    op.create_table(
        "relevance_maps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("png_key", sa.String(length=64), nullable=False),
        sa.Column("npy_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "model_version_id", "method"),
    )
    with op.batch_alter_table("relevance_maps") as batch_op:
        batch_op.create_index(batch_op.f("ix_relevance_maps_image_id"), ["image_id"], unique=False)


def downgrade() -> None:
    op.drop_table("relevance_maps")
    op.drop_table("cell_notes")
    with op.batch_alter_table("labels") as batch_op:
        batch_op.drop_column("hints_seen")
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("reveal_after_label")
