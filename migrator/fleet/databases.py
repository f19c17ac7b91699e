"""Throwaway PostgreSQL databases with unique names, on one server reached through an admin DSN.

The server is ``$MIGRATOR_TEST_PG`` (the test suite; ``$MIGRATOR_BENCH_PG`` first for benchmarks), else
``postgresql://postgres@127.0.0.1:5432/postgres``.
"""

from __future__ import annotations

import os
import uuid

import psycopg
from psycopg import sql

ADMIN_DSN = os.environ.get("MIGRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(dbname: str, admin_dsn: str = ADMIN_DSN) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def unique_name(prefix: str = "cm") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_database(name: str, admin_dsn: str = ADMIN_DSN) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn_for(name, admin_dsn)


def drop_database(name: str, admin_dsn: str = ADMIN_DSN) -> None:
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.OperationalError:
        pass  # the server is gone; nothing left to drop
