"""Alembic environment for the control database (run through migrator.control.engine)."""

from alembic import context
from sqlalchemy import text

from migrator.control.engine import make_engine
from migrator.control.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    dsn = config.attributes["dsn"]
    engine = make_engine(dsn)
    with engine.connect() as connection:
        # Two processes upgrading at once must not both create the tables.
        connection.execute(text("SELECT pg_advisory_xact_lock(724242)"))
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    engine.dispose()


run_migrations_online()
