"""Engines and sessions on the control database, and its schema upgrade (Alembic)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from migrator.dsn import mask_dsn
from migrator.errors import CellUnavailable

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(dsn: str) -> str:
    """A SQLAlchemy URL (psycopg 3 driver) for a libpq DSN in URL form."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    # key=value form: let psycopg parse it.
    return "postgresql+psycopg://"


def make_engine(dsn: str, **kwargs) -> Engine:
    url = sqlalchemy_url(dsn)
    if url == "postgresql+psycopg://":
        kwargs.setdefault("creator", lambda: psycopg.connect(dsn, application_name="cells-migrator-control"))
    else:
        kwargs.setdefault("connect_args", {"application_name": "cells-migrator-control"})
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 2)
    kwargs.setdefault("max_overflow", 4)
    return create_engine(url, **kwargs)


@lru_cache(maxsize=16)
def control_engine(dsn: str) -> Engine:
    return make_engine(dsn)


def session_factory(dsn: str) -> sessionmaker[Session]:
    return sessionmaker(control_engine(dsn), expire_on_commit=False)


def alembic_config(dsn: str):
    # deferred: alembic is slow to import and only upgrades need it
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["dsn"] = dsn
    return cfg


def upgrade_control_db(dsn: str, revision: str = "head") -> None:
    """Bring the control database's schema to ``revision`` (idempotent)."""
    # deferred: alembic is slow to import and only upgrades need it
    from alembic import command

    try:
        with psycopg.connect(dsn, connect_timeout=10):
            pass
    except psycopg.OperationalError as exc:
        raise CellUnavailable(
            f"control database {mask_dsn(dsn)} does not answer: {str(exc).strip().splitlines()[0]}",
            "check control_dsn in the config and that PostgreSQL is running",
        ) from None
    command.upgrade(alembic_config(dsn), revision)
