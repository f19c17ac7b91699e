"""preflight's key-collision check on real PostgreSQL, against a target whose statistics do not yet
count the rows an earlier move just copied in (the case that once made preflight take minutes)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from migrator.copy.keys import colliding_keys
from migrator.copy.spec import TableSpec
from migrator.fleet.databases import create_database, drop_database, unique_name

pytestmark = pytest.mark.integration

SPEC = TableSpec(name="things", columns=("id", "org_id", "body"), pk=("id",), pk_types=("bigint",),
                 predicate=sql.SQL("t.org_id = %(org)s"))


@pytest.fixture
def cells():
    names = [unique_name("cmkc"), unique_name("cmkc")]
    try:
        conns = []
        for name in names:
            conn = psycopg.connect(create_database(name), autocommit=True)
            conns.append(conn)
            conn.execute("CREATE TABLE things (id bigint PRIMARY KEY, org_id bigint NOT NULL, body text)")
            conn.execute("ANALYZE things")  # analyzed while empty, like a freshly initialised cell
        src, tgt = conns
        src.execute("INSERT INTO things SELECT g, 2, 'moving' FROM generate_series(100001, 160000) g")
        # an earlier move's rows, just copied in: the target's statistics still say "empty"
        tgt.execute("INSERT INTO things SELECT g, 1, 'resident' FROM generate_series(1, 60000) g")
        yield src, tgt
        for conn in conns:
            conn.close()
    finally:
        for name in names:
            drop_database(name)


def test_collision_check_plans_no_nested_loop(cells):
    src, tgt = cells
    # auto_explain sends the plan of every statement colliding_keys runs back to this session
    plans: list[str] = []
    tgt.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    tgt.execute("LOAD 'auto_explain'")
    tgt.execute("SET auto_explain.log_min_duration = 0")
    tgt.execute("SET auto_explain.log_level = 'notice'")
    assert colliding_keys(src, tgt, SPEC, 2) == []
    [plan] = [p for p in plans if "LIMIT" in p and "_migrator_keys_things" in p]
    assert "Nested Loop" not in plan, plan


def test_collisions_are_found_and_named(cells):
    src, tgt = cells
    tgt.execute("INSERT INTO things VALUES (150000, 1, 'resident'), (100001, 1, 'resident')")
    assert colliding_keys(src, tgt, SPEC, 2) == [(100001,), (150000,)]
    assert colliding_keys(src, tgt, SPEC, 2, limit=1) == [(100001,)]
