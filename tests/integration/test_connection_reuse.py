"""Cell connections reused across a worker process's tasks, and the schema read once per move attempt:
on real PostgreSQL, including a backend terminated while idle and a cell that does not answer."""

from __future__ import annotations

import types
import uuid

import psycopg
import pytest

from migrator.cells import connections
from migrator.errors import CellUnavailable
from migrator.fleet.databases import create_database, drop_database, unique_name
from migrator.moves.context import MoveContext

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn():
    name = unique_name("cmcr")
    connections.close_idle()  # this process's pool starts empty, whatever ran before
    try:
        yield create_database(name)
    finally:
        connections.close_idle()
        drop_database(name)


def test_an_idle_connection_is_reused_with_its_session_settings(dsn):
    conn = connections.checkout(dsn, what="cell 'x' database")
    pid = conn.info.backend_pid
    assert conn.execute("SHOW TimeZone").fetchone()[0] == "UTC"
    connections.checkin(conn, dsn)
    again = connections.checkout(dsn, what="cell 'x' database")
    assert again is conn and again.info.backend_pid == pid
    assert again.execute("SHOW extra_float_digits").fetchone()[0] == "3"
    # two held at once are two connections
    other = connections.checkout(dsn, what="cell 'x' database")
    assert other is not again
    connections.checkin(again, dsn)
    connections.checkin(other, dsn)
    assert connections.idle_count() == 2


def test_a_terminated_backend_is_replaced_not_handed_out(dsn):
    conn = connections.checkout(dsn, what="cell 'x' database")
    pid = conn.info.backend_pid
    connections.checkin(conn, dsn)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    fresh = connections.checkout(dsn, what="cell 'x' database")
    assert fresh.info.backend_pid != pid
    assert fresh.execute("SELECT 1").fetchone() == (1,)
    connections.checkin(fresh, dsn)


def test_a_connection_given_back_mid_transaction_is_closed(dsn):
    conn = connections.checkout(dsn, what="cell 'x' database")
    conn.execute("BEGIN")
    conn.execute("SELECT 1")
    connections.checkin(conn, dsn)
    assert conn.closed
    assert connections.idle_count() == 0
    broken = connections.checkout(dsn, what="cell 'x' database")
    with pytest.raises(psycopg.Error):
        broken.execute("SELECT no_such_column FROM pg_class")
    assert broken.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # autocommit: nothing open
    connections.checkin(broken, dsn)
    assert connections.checkout(dsn, what="cell 'x' database") is broken


def test_a_cell_that_does_not_answer_fails_at_once_with_its_name():
    dead = "postgresql://postgres:secret@127.0.0.1:1/nothing"
    with pytest.raises(CellUnavailable) as exc:
        connections.checkout(dead, what="cell 'cell-9' database")
    assert "cell 'cell-9' database" in exc.value.message and "secret" not in exc.value.message


def test_the_schema_is_read_once_per_move_attempt(provisioned):
    settings = provisioned.settings()
    move = types.SimpleNamespace(id=uuid.uuid4(), source_cell="cell-1", target_cell="cell-2", organization_id=1)

    def ctx(token):
        return MoveContext(settings=settings, store=None, move=move, token=token, owner="test")

    first = ctx("token-1")
    live = first.source_schema
    first.close()
    assert ctx("token-1").source_schema is live  # a later task of the same attempt
    with psycopg.connect(settings.cell("cell-1").dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE notes ADD COLUMN reviewed boolean")
    resumed = ctx("token-2")  # a resume is a new attempt with a new token: the schema is read again
    assert resumed.source_schema is not live
    assert resumed.source_schema.tables["notes"].has_column("reviewed")
    assert not live.tables["notes"].has_column("reviewed")
    resumed.close()
