"""Alembic owns the schema: the migrations must build exactly what the models describe."""

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
