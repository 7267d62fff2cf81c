"""users: `username_key`, the user name normalised and case-folded (backend.core.names.name_key),
unique, so that `Admin` beside `admin` (or a full-width ADMIN) cannot be created

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op
from precis_i18n import get_profile

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UNIQUE = "uq_users_username_key"
_KEY = get_profile("NicknameCaseMapped:CaseFold")


def username_key(username: str) -> str:
    """name_key as it is now; a name that it refuses keeps itself, unique, and cannot sign in."""
    try:
        return _KEY.enforce(username)
    except UnicodeEncodeError:
        return username


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("username_key", sa.String(length=100), nullable=True))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("username", sa.String), sa.column("username_key"))
    connection = op.get_bind()
    taken: dict[str, str] = {}
    for user_id, username in connection.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)):
        key = username_key(username)
        if key in taken:
            raise RuntimeError(
                f"users {taken[key]!r} and {username!r} differ only in case or width, and are now one name: "
                f"rename one (UPDATE users SET username = ...) and migrate again"
            )
        taken[key] = username
        connection.execute(users.update().where(users.c.id == user_id).values(username_key=key))
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("username_key", existing_type=sa.String(length=100), nullable=False)
        batch_op.create_unique_constraint(UNIQUE, ["username_key"])


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_constraint(UNIQUE, type_="unique")
        batch_op.drop_column("username_key")
