"""Alembic owns the schema: the migrations must build exactly what the models describe."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from backend.core.db.models import Base


def test_migrations_build_what_the_models_describe(service_env):
    from backend.core.db.session import get_engine

    with get_engine().connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_migrations_run_up_and_down_on_the_embedded_sqlite(tmp_path):
    from alembic import command

    from backend.core.db.migrate import alembic_config

    config = alembic_config(f"sqlite:///{tmp_path / 'xal.db'}")
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    command.upgrade(config, "head")


def test_the_user_name_key_migration_fills_the_keys_and_stops_at_look_alike_names(tmp_path):
    from alembic import command

    from backend.core.db.migrate import alembic_config

    def database_with_users(name: str, *usernames: str):
        url = f"sqlite:///{tmp_path / name}"
        config = alembic_config(url)
        command.upgrade(config, "0010")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            for username in usernames:
                connection.execute(
                    sa.text("INSERT INTO users (username, role, created_at) VALUES (:u, 'client', CURRENT_TIMESTAMP)"),
                    {"u": username},
                )
        return config, engine

    config, engine = database_with_users("keys.db", "Admin", "Ｌａｂ Lead")
    command.upgrade(config, "0011")
    with engine.connect() as connection:
        keys = dict(connection.execute(sa.text("SELECT username, username_key FROM users")).all())
    assert keys == {"Admin": "admin", "Ｌａｂ Lead": "lab lead"}

    config, _ = database_with_users("look-alikes.db", "admin", "ADMIN")
    with pytest.raises(RuntimeError, match="users 'admin' and 'ADMIN' differ only in case or width"):
        command.upgrade(config, "0011")
