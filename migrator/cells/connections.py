"""Cell connections a worker process reuses from one task to the next.

A unit task used to open new connections to its cells (connect, then the stable session settings)
and close them at its end: about 10 ms per unit task, a quarter of the framework cost measured in
docs/performance.md. ``MoveContext`` now takes connections from here and gives them back when the
task ends; only healthy, idle connections are kept, and each is checked with one round trip when it
is taken again (a cell restarted or a backend terminated in between costs a reconnect, not an error).

Not ``psycopg_pool``: its ``getconn`` waits for a background thread to connect and, when the cell is
down, fails only after its timeout with a ``PoolTimeout``. A move step must fail at once with the
server's own message (``CellUnavailable``, retried by the task), so a missing connection is opened
in the caller's thread exactly as before; only its idle-connection check is borrowed.

Keyed by process id: a forked Celery pool process never uses (or closes) its parent's connections.
"""

from __future__ import annotations

import contextlib
import os
import threading

import psycopg
from psycopg_pool import ConnectionPool

from migrator.copy.spec import stabilize_session
from migrator.db import connect

MAX_IDLE_PER_CELL = 3  # a unit holds at most a source and a target connection, a step a few more

_lock = threading.Lock()
_idle: dict[tuple[int, str, bool], list[psycopg.Connection]] = {}


def _key(dsn: str, autocommit: bool) -> tuple[int, str, bool]:
    return (os.getpid(), dsn, autocommit)


def _discard(conn: psycopg.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def checkout(dsn: str, *, what: str, autocommit: bool = True) -> psycopg.Connection:
    """An idle connection of this process to ``dsn`` that answers, or a new one (stable session)."""
    key = _key(dsn, autocommit)
    while True:
        with _lock:
            idle = _idle.get(key)
            conn = idle.pop() if idle else None
        if conn is None:
            break
        try:
            ConnectionPool.check_connection(conn)
            return conn
        except psycopg.Error:
            _discard(conn)
    conn = connect(dsn, what=what, autocommit=autocommit)
    stabilize_session(conn)
    if not autocommit:
        conn.commit()  # the session settings stay; the connection is idle, as a kept one would be
    return conn


def checkin(conn: psycopg.Connection, dsn: str, *, autocommit: bool = True) -> None:
    """Give a connection back: kept if idle and healthy (and there is room), closed otherwise."""
    if conn.closed or conn.broken or conn.autocommit != autocommit \
            or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        _discard(conn)
        return
    key = _key(dsn, autocommit)
    with _lock:
        idle = _idle.setdefault(key, [])
        if len(idle) < MAX_IDLE_PER_CELL:
            idle.append(conn)
            return
    _discard(conn)


def close_idle() -> int:
    """Close this process's idle connections (tests, and a worker shutting down)."""
    pid = os.getpid()
    with _lock:
        mine = [k for k in _idle if k[0] == pid]
        conns = [c for k in mine for c in _idle.pop(k)]
    for conn in conns:
        _discard(conn)
    return len(conns)


def idle_count() -> int:
    pid = os.getpid()
    with _lock:
        return sum(len(v) for k, v in _idle.items() if k[0] == pid)
