"""Connections to cell databases (psycopg 3), with transient errors retried by tenacity.

Cell databases are reached with plain psycopg: the copy path needs the COPY protocol and full
control of transactions. Every failure to connect is raised as
:class:`~migrator.errors.CellUnavailable` naming the cell and its masked DSN.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from migrator.dsn import mask_dsn, redact
from migrator.errors import CellUnavailable

log = logging.getLogger(__name__)

# SQLSTATE classes that mean "try again": connection exceptions, operator intervention
# (admin shutdown, pg_terminate_backend), serialization failures and deadlocks.
TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "40001", "40P01", "53300")


# Every connection the migrator opens says who it is (pg_stat_activity.application_name).
APPLICATION_NAME = "cells-migrator"


def is_transient(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    if orig is not None and orig is not exc and isinstance(orig, BaseException):
        return is_transient(orig)
    if isinstance(exc, CellUnavailable):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        state = getattr(exc, "sqlstate", None)
        return state is None or state.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return True
    return False


def transient_retry(attempts: int = 5, max_wait: float = 8.0):
    """Retry a function on transient database errors: ``attempts`` tries, then re-raise."""
    return retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.25, max=max_wait),
        reraise=True,
        before_sleep=before_sleep_log(log, logging.WARNING),
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


def connect(dsn: str, *, what: str = "database", autocommit: bool = False, **kwargs) -> psycopg.Connection:
    """Open a connection; a failure is a :class:`CellUnavailable` that names ``what``."""
    kwargs.setdefault("connect_timeout", 10)
    kwargs.setdefault("application_name", APPLICATION_NAME)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise CellUnavailable(
            f"{what} ({mask_dsn(dsn)}) does not answer: {first_line(exc)}",
            "check that its PostgreSQL server is running and the DSN in the config is right",
        ) from None


@contextmanager
def connection(dsn: str, *, what: str = "database", autocommit: bool = False, **kwargs) -> Iterator[psycopg.Connection]:
    conn = connect(dsn, what=what, autocommit=autocommit, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def cell_dsn(settings, cell: str) -> str:
    return settings.cell(cell).dsn


@contextmanager
def cell_connection(settings, cell: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    with connection(cell_dsn(settings, cell), what=f"cell {cell!r} database", autocommit=autocommit) as conn:
        yield conn
