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


# --- unique keys other than the primary key (migrator.copy.unique) ---------------------------------

PROJECTS = TableSpec(name="projects", columns=("id", "org_id", "path", "iid", "email", "archived", "doc"),
                     pk=("id",), pk_types=("bigint",), predicate=sql.SQL("t.org_id = %(org)s"))

PROJECTS_DDL = """
CREATE TABLE projects (
    id bigint PRIMARY KEY, org_id bigint NOT NULL, path text NOT NULL, iid int, email text,
    archived boolean NOT NULL DEFAULT false, doc jsonb,
    CONSTRAINT projects_path_key UNIQUE (path),
    CONSTRAINT projects_org_iid_key UNIQUE (org_id, iid)
);
CREATE UNIQUE INDEX projects_live_email ON projects (lower(email)) WHERE NOT archived;
CREATE FUNCTION project_slug(projects) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT $1.path';
CREATE UNIQUE INDEX projects_slug ON projects (project_slug(projects));
"""


@pytest.fixture
def project_cells():
    names = [unique_name("cmku"), unique_name("cmku")]
    try:
        conns = []
        for name in names:
            conn = psycopg.connect(create_database(name), autocommit=True)
            conns.append(conn)
            conn.execute(PROJECTS_DDL)
        src, tgt = conns
        src.execute("INSERT INTO projects SELECT g, 2, 'p' || g, g, 'U' || g || '@x.org', g % 2 = 0, NULL"
                    " FROM generate_series(1, 2000) g")
        tgt.execute("INSERT INTO projects SELECT g, 1, 'q' || g, g, 'v' || g || '@x.org', false, NULL"
                    " FROM generate_series(100001, 102000) g")
        yield src, tgt
        for conn in conns:
            conn.close()
    finally:
        for name in names:
            drop_database(name)


def _unique(src, tgt, org=2):
    from migrator.copy.unique import UniqueCheck, unique_conflicts

    check = UniqueCheck()
    unique_conflicts(src, tgt, PROJECTS, org, check)
    return check


def test_unique_keys_without_conflict(project_cells):
    src, tgt = project_cells
    check = _unique(src, tgt)
    assert check.conflicts == []
    # (org_id, iid) collides in value only across organizations: org_id differs, so no conflict
    assert sorted(check.checked) == ["projects.projects_live_email", "projects.projects_org_iid_key",
                                     "projects.projects_path_key"]
    [skip] = check.skipped  # a function of the whole row: not evaluable over the copied columns
    assert skip["index"] == "projects_slug" and "cannot evaluate" in skip["reason"]
    assert tgt.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '_migrator_uniq%'").fetchone()[0] == 0


def test_unique_conflicts_are_named_with_their_values(project_cells):
    src, tgt = project_cells
    tgt.execute("INSERT INTO projects VALUES (200001, 1, 'p7', 1, NULL, false, NULL),"  # path of org 2's id 7
                " (200002, 1, 'r1', 2, 'u3@X.org', false, NULL),"   # lower(email) of org 2's id 3 (not archived)
                " (200003, 1, 'r2', 3, 'u4@x.org', false, NULL),"   # id 4 is archived: outside the partial index
                " (200004, 1, 'r3', 4, 'u5@x.org', true, NULL)")    # archived here: outside the partial index
    check = _unique(src, tgt)
    found = {c.index.name: c for c in check.conflicts}
    assert set(found) == {"projects_path_key", "projects_live_email"}
    assert found["projects_path_key"].values == [("p7",)]
    assert found["projects_path_key"].message == "projects: unique constraint projects_path_key (path) = (p7)"
    assert found["projects_live_email"].values == [("u3@x.org",)]
    assert found["projects_live_email"].message == \
        "projects: unique index projects_live_email (lower(email)) WHERE NOT archived = (u3@x.org)"


def test_unique_conflict_on_a_many_row_organization_uses_one_pass(project_cells):
    """Most of the target's table: matched by a hash join, still finds the first values in order."""
    src, tgt = project_cells
    tgt.execute("DELETE FROM projects")
    tgt.execute("INSERT INTO projects SELECT g + 500000, 1, 'p' || g, g, NULL, false, NULL"
                " FROM generate_series(10, 20) g")
    check = _unique(src, tgt)
    [conflict] = check.conflicts
    assert conflict.values == [("p10",), ("p11",), ("p12",), ("p13",), ("p14",)]


EVENTS = TableSpec(name="app.events", columns=("id", "org_id", "at", "ref"), pk=("id", "at"),
                   pk_types=("bigint", "date"), predicate=sql.SQL("t.org_id = %(org)s"))

EVENTS_DDL = """
CREATE SCHEMA app; CREATE SCHEMA app_parts;
CREATE TABLE app.events (id bigint, org_id bigint NOT NULL, at date NOT NULL, ref text,
                         PRIMARY KEY (id, at), CONSTRAINT events_ref_at_key UNIQUE (ref, at)) PARTITION BY RANGE (at);
CREATE TABLE app_parts.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE app_parts.events_2027 PARTITION OF app.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE UNIQUE INDEX events_2027_org_ref ON app_parts.events_2027 (org_id, ref);
"""


def test_unique_keys_of_a_partitioned_table_in_another_schema(project_cells):
    from migrator.copy.unique import UniqueCheck, unique_conflicts

    src, tgt = project_cells
    for conn in (src, tgt):
        conn.execute(EVENTS_DDL)
    src.execute("INSERT INTO app.events SELECT g, 2, date '2026-01-01' + g, 'r' || g FROM generate_series(1, 500) g")
    tgt.execute("INSERT INTO app.events VALUES (9001, 1, date '2026-01-01' + 7, 'r7'), "
                "(9002, 1, date '2026-01-01' + 9, 'r8')")  # r8 on another day: (ref, at) differs
    check = UniqueCheck()
    unique_conflicts(src, tgt, EVENTS, 2, check)
    [conflict] = check.conflicts
    assert conflict.message == "app.events: unique constraint events_ref_at_key (ref, at) = (r7, 2026-01-08)"
    assert check.checked == ["app.events.events_ref_at_key"]
    [skip] = check.skipped  # one partition's own index: rows are routed by the parent
    assert skip["table"] == "app.events" and skip["index"] == "events_2027_org_ref"
    assert "partition app_parts.events_2027 alone" in skip["reason"]


def test_values_repeated_among_the_organizations_rows_under_a_target_only_index(project_cells):
    """Cells may differ in indexes: a unique index the source lacks can be violated by the moving rows alone."""
    src, tgt = project_cells
    src.execute("UPDATE projects SET doc = jsonb_build_object('team', id % 3) WHERE id <= 6")
    tgt.execute("CREATE UNIQUE INDEX projects_team ON projects ((doc ->> 'team'))")
    check = _unique(src, tgt)
    [conflict] = check.conflicts
    assert conflict.within and conflict.values == [("0",), ("1",), ("2",)]
    assert conflict.message == ("projects: unique index projects_team ((doc ->> 'team'::text)) = (0), (1), (2), "
                                "repeated among the organization's own rows (the source has no such unique index)")


def test_nulls_not_distinct_index_counts_nulls_as_equal(project_cells):
    src, tgt = project_cells
    if tgt.info.server_version < 150000:
        pytest.skip("NULLS NOT DISTINCT needs PostgreSQL 15")
    for conn in (src, tgt):
        conn.execute("CREATE UNIQUE INDEX projects_iid_email ON projects (iid, email) NULLS NOT DISTINCT")
    src.execute("UPDATE projects SET email = NULL WHERE id = 5")
    tgt.execute("INSERT INTO projects VALUES (300001, 1, 'z1', 5, NULL, false, NULL)")  # (5, NULL) as org 2's id 5
    check = _unique(src, tgt)
    [conflict] = check.conflicts
    assert conflict.index.name == "projects_iid_email" and conflict.values == [("5", None)]
    assert conflict.message == "projects: unique index projects_iid_email (iid, email) = (5, NULL)"
