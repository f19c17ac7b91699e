"""The freeze guard on real PostgreSQL: a frozen organization's rows refuse writes (SQLSTATE MG001)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from migrator.cells.guard import (
    FROZEN_SQLSTATE,
    GuardNotInstalled,
    freeze_org,
    frozen_orgs,
    guard_gaps,
    install_guard,
    is_frozen,
    set_move_token,
    unfreeze_org,
    uninstall_guard,
)
from migrator.cells.introspect import introspect
from migrator.cells.provision import apply_sample_schema
from migrator.dictionary import Dictionary, load_dictionary
from migrator.sample import SAMPLE_DICTIONARY_PATH

pytestmark = pytest.mark.integration

FROZEN, OTHER = 1, 2


def populate(conn):
    """Two organizations, each with a namespace, project, issue, note, label, label link, pipeline, build."""
    for org in (FROZEN, OTHER):
        ns, pr = org * 10, org * 100
        conn.execute("INSERT INTO organizations (id, name, path) VALUES (%s, %s, %s)", (org, f"o{org}", f"o{org}"))
        conn.execute("INSERT INTO namespaces (id, organization_id, name, path) VALUES (%s, %s, 'n', 'n')", (ns, org))
        conn.execute("INSERT INTO projects (id, namespace_id, name, path) VALUES (%s, %s, 'p', 'p')", (pr, ns))
        conn.execute("INSERT INTO issues (id, project_id, iid, title) VALUES (%s, %s, 1, 'i')", (pr, pr))
        conn.execute("INSERT INTO notes (id, project_id, noteable_type, noteable_id, note) "
                     "VALUES (%s, %s, 'Issue', %s, 'hello')", (pr, pr, pr))
        conn.execute("INSERT INTO labels (id, project_id, title) VALUES (%s, %s, 'bug')", (pr, pr))
        conn.execute("INSERT INTO label_links (label_id, target_type, target_id) VALUES (%s, 'Issue', %s)", (pr, pr))
        conn.execute("INSERT INTO ci_pipelines (id, project_id, ref, sha) VALUES (%s, %s, 'main', 'abc')", (pr, pr))
        conn.execute("INSERT INTO ci_builds (id, pipeline_id, name, stage) VALUES (%s, %s, 'b', 'test')", (pr, pr))
        conn.execute("INSERT INTO merge_requests (id, project_id, iid, title, source_branch) "
                     "VALUES (%s, %s, 1, 'mr', 'feature')", (pr, pr))
        for t in ("uploads", "lfs_objects"):
            extra = ("filename", "'f.txt'") if t == "uploads" else ("oid", "'oid'")
            conn.execute(sql.SQL("INSERT INTO {} (id, project_id, file_key, sha256, size, {}) "
                                 "VALUES (%s, %s, 'k', 's', 1, {})").format(
                sql.Identifier(t), sql.Identifier(extra[0]), sql.SQL(extra[1])), (pr, pr))


@pytest.fixture
def cell(scratch_db):
    """A cell database with the sample schema, two organizations and the guard installed."""
    dictionary = load_dictionary(SAMPLE_DICTIONARY_PATH)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        apply_sample_schema(conn)
        populate(conn)
        live = introspect(conn)
        install_guard(conn, dictionary, live)
        yield conn, dictionary, live


def refused(conn, query, params=None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(query, params)
    assert exc.value.sqlstate == FROZEN_SQLSTATE, exc.value
    return exc.value


# ---------------------------------------------------------------------------------- writes refused


def test_direct_sharding_key_writes_to_a_frozen_org_are_refused(cell):
    conn, _, _ = cell
    freeze_org(conn, FROZEN, "tok-1")
    err = refused(conn, "INSERT INTO namespaces (organization_id, name, path) VALUES (%s, 'x', 'x')", (FROZEN,))
    assert err.diag.message_primary == (
        f"organization {FROZEN} is frozen for a move: writes are refused until the move finishes (table namespaces)")
    assert err.diag.message_hint == "retry later; the organization is read-only while it moves between cells"
    refused(conn, "UPDATE namespaces SET name = 'y' WHERE organization_id = %s", (FROZEN,))
    refused(conn, "DELETE FROM namespaces WHERE organization_id = %s", (FROZEN,))
    refused(conn, "UPDATE organizations SET name = 'renamed' WHERE id = %s", (FROZEN,))
    err = refused(conn, "DELETE FROM organizations WHERE id = %s", (FROZEN,))
    assert f"organization {FROZEN} is frozen" in err.diag.message_primary


def test_indirect_sharding_key_writes_to_a_frozen_org_are_refused(cell):
    conn, _, _ = cell
    freeze_org(conn, FROZEN, "tok-1")
    pr = FROZEN * 100
    # notes -> projects -> namespaces -> organizations
    err = refused(conn, "INSERT INTO notes (project_id, noteable_type, noteable_id, note) "
                        "VALUES (%s, 'Issue', 1, 'sneaky')", (pr,))
    assert err.diag.message_primary.startswith(f"organization {FROZEN} is frozen for a move")
    assert "(table notes)" in err.diag.message_primary
    refused(conn, "UPDATE notes SET note = 'edited' WHERE project_id = %s", (pr,))
    refused(conn, "DELETE FROM notes WHERE project_id = %s", (pr,))
    # four hops: ci_builds -> ci_pipelines -> projects -> namespaces -> organizations
    err = refused(conn, "INSERT INTO ci_builds (pipeline_id, name, stage) VALUES (%s, 'b2', 'test')", (pr,))
    assert "(table ci_builds)" in err.diag.message_primary
    # composite primary key table: label_links -> labels -> projects -> ...
    refused(conn, "INSERT INTO label_links (label_id, target_type, target_id) VALUES (%s, 'MergeRequest', 1)", (pr,))
    refused(conn, "TRUNCATE ci_builds")
    count = conn.execute("SELECT count(*) FROM notes WHERE project_id = %s", (pr,)).fetchone()[0]
    assert count == 1


def test_moving_a_row_into_a_frozen_org_is_refused(cell):
    conn, _, _ = cell
    freeze_org(conn, FROZEN, "tok-1")
    # the row belongs to OTHER (OLD passes) but NEW lands in the frozen org
    refused(conn, "UPDATE projects SET namespace_id = %s WHERE id = %s", (FROZEN * 10, OTHER * 100))
    # and out of it
    refused(conn, "UPDATE projects SET namespace_id = %s WHERE id = %s", (OTHER * 10, FROZEN * 100))


def test_other_organizations_keep_writing(cell):
    conn, _, _ = cell
    freeze_org(conn, FROZEN, "tok-1")
    pr = OTHER * 100
    conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note) VALUES (%s, 'Issue', 1, 'ok')",
                 (pr,))
    conn.execute("UPDATE notes SET note = 'edited' WHERE project_id = %s", (pr,))
    conn.execute("INSERT INTO ci_builds (pipeline_id, name, stage) VALUES (%s, 'b2', 'test')", (pr,))
    conn.execute("UPDATE namespaces SET name = 'renamed' WHERE organization_id = %s", (OTHER,))
    conn.execute("DELETE FROM label_links WHERE label_id = %s", (pr,))
    conn.execute("INSERT INTO organizations (id, name, path) VALUES (3, 'new', 'new')")
    # cell-local and cluster-wide tables are never guarded
    conn.execute("INSERT INTO application_settings (name, value) VALUES ('x', '1')")
    conn.execute("INSERT INTO users (username, email) VALUES ('u', 'u@example.com')")
    assert conn.execute("SELECT count(*) FROM notes WHERE project_id = %s", (pr,)).fetchone()[0] == 2


def test_the_move_token_bypasses_the_guard(cell):
    conn, _, _ = cell
    freeze_org(conn, FROZEN, "tok-1")
    pr = FROZEN * 100
    conn.execute("SET migrator.move_token = 'wrong'")
    refused(conn, "UPDATE notes SET note = 'x' WHERE project_id = %s", (pr,))
    conn.execute("SET migrator.move_token = 'tok-1'")
    conn.execute("UPDATE notes SET note = 'by the mover' WHERE project_id = %s", (pr,))
    conn.execute("DELETE FROM ci_builds WHERE pipeline_id = %s", (pr,))
    set_move_token(conn, None)
    refused(conn, "UPDATE notes SET note = 'x' WHERE project_id = %s", (pr,))
    # transaction-local token (what the copier uses)
    with conn.transaction():
        set_move_token(conn, "tok-1", local=True)
        conn.execute("UPDATE notes SET note = 'local' WHERE project_id = %s", (pr,))
    refused(conn, "UPDATE notes SET note = 'x' WHERE project_id = %s", (pr,))


def test_freeze_unfreeze_and_is_frozen(cell):
    conn, _, _ = cell
    assert is_frozen(conn, FROZEN) is None
    freeze_org(conn, FROZEN, "tok-1")
    first = conn.execute("SELECT frozen_at FROM migrator.frozen_orgs").fetchone()[0]
    freeze_org(conn, FROZEN, "tok-1")  # idempotent
    assert conn.execute("SELECT frozen_at FROM migrator.frozen_orgs").fetchone()[0] == first
    assert is_frozen(conn, FROZEN) == "tok-1"
    freeze_org(conn, FROZEN, "tok-2")  # a re-fenced move replaces the token
    assert frozen_orgs(conn) == {FROZEN: "tok-2"}
    conn.execute("SET migrator.move_token = 'tok-1'")
    refused(conn, "UPDATE namespaces SET name = 'x' WHERE organization_id = %s", (FROZEN,))
    assert unfreeze_org(conn, FROZEN) is True
    assert unfreeze_org(conn, FROZEN) is False
    assert is_frozen(conn, FROZEN) is None
    conn.execute("UPDATE namespaces SET name = 'x' WHERE organization_id = %s", (FROZEN,))
    conn.execute("TRUNCATE label_links")
    with pytest.raises(ValueError):
        freeze_org(conn, FROZEN, "")


def test_freeze_is_visible_to_other_sessions_and_committed(cell, scratch_db):
    conn, _, _ = cell
    with psycopg.connect(scratch_db) as tx_conn:  # not autocommit: freeze_org commits by itself
        freeze_org(tx_conn, FROZEN, "tok-1")
    with psycopg.connect(scratch_db, autocommit=True) as app:
        refused(app, "UPDATE notes SET note = 'x' WHERE project_id = %s", (FROZEN * 100,))


def test_guard_works_for_an_unprivileged_application_role(cell):
    conn, _, _ = cell
    role = f"cmt_app_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {}")
                     .format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        conn.execute("UPDATE notes SET note = 'fast path' WHERE project_id = %s", (FROZEN * 100,))
        conn.execute("RESET ROLE")
        freeze_org(conn, FROZEN, "tok-1")
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        refused(conn, "UPDATE notes SET note = 'x' WHERE project_id = %s", (FROZEN * 100,))
        refused(conn, "TRUNCATE notes")  # the truncate guard reads the tokens as its definer
        conn.execute("UPDATE notes SET note = 'x' WHERE project_id = %s", (OTHER * 100,))
        # the role sees which organizations are frozen, never the tokens
        assert conn.execute("SELECT organization_id FROM migrator.frozen_orgs").fetchall() == [(FROZEN,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT token FROM migrator.frozen_orgs")
        conn.execute("RESET ROLE")
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ---------------------------------------------------------------------------------- install / uninstall


def test_install_is_idempotent_and_repairs(cell):
    conn, dictionary, live = cell
    again = install_guard(conn, dictionary, live)
    assert not again.did_change and again.changed == [] and again.removed == []
    assert again.tables == dictionary.org_tables()
    assert guard_gaps(conn, dictionary, live) == []
    conn.execute("ALTER TABLE notes DISABLE TRIGGER migrator_freeze_guard")
    conn.execute("DROP TRIGGER migrator_freeze_guard ON projects")
    assert guard_gaps(conn, dictionary, live) == ["projects", "notes"]
    repaired = install_guard(conn, dictionary, live)
    assert "public.notes.migrator_freeze_guard" in repaired.changed
    assert "public.projects.migrator_freeze_guard" in repaired.changed
    assert guard_gaps(conn, dictionary, live) == []
    freeze_org(conn, FROZEN, "tok")
    refused(conn, "UPDATE notes SET note = 'x' WHERE project_id = %s", (FROZEN * 100,))


def test_install_drops_the_guard_of_tables_no_longer_organization_scoped(cell):
    conn, dictionary, live = cell
    data = dictionary.as_dict()
    data["tables"]["ci_builds"] = {"classification": "cell_local"}
    smaller = Dictionary.from_mapping(data)
    status = install_guard(conn, smaller, live)
    assert "public.ci_builds.migrator_freeze_guard" in status.removed
    assert "migrator.guard_ci_builds" in status.removed
    freeze_org(conn, FROZEN, "tok")
    conn.execute("INSERT INTO ci_builds (pipeline_id, name, stage) VALUES (%s, 'b2', 'test')", (FROZEN * 100,))


def test_uninstall_removes_triggers_and_functions(cell):
    conn, dictionary, _ = cell
    freeze_org(conn, FROZEN, "tok")
    dropped = uninstall_guard(conn, dictionary)
    assert "public.notes.migrator_freeze_guard" in dropped and "migrator.guard_notes" in dropped
    conn.execute("UPDATE notes SET note = 'x' WHERE project_id = %s", (FROZEN * 100,))
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'migrator_freeze_guard%'").fetchone()[0] == 0
    assert is_frozen(conn, FROZEN) == "tok"  # state is kept
    assert uninstall_guard(conn, dictionary) == []


def test_guard_not_installed_is_a_clear_error(scratch_db):
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        with pytest.raises(GuardNotInstalled, match="migrator cells init"):
            freeze_org(conn, 1, "tok")
        with pytest.raises(GuardNotInstalled):
            is_frozen(conn, 1)


# ---------------------------------------------------------------------------------- own schemas


OWN_SCHEMA = """
CREATE TABLE tenants (tenant_no integer PRIMARY KEY, name text);
CREATE TABLE groups (id bigint PRIMARY KEY, tenant_no integer NOT NULL REFERENCES tenants);
CREATE TABLE repos (id bigint PRIMARY KEY, group_id bigint NOT NULL REFERENCES groups);
-- alternatives: a tag belongs to a repo or directly to a group
CREATE TABLE tags (id bigint PRIMARY KEY, repo_id bigint REFERENCES repos, group_id bigint REFERENCES groups,
                   CHECK (num_nonnulls(repo_id, group_id) = 1));
-- a partitioned organization table
CREATE TABLE events (id bigint NOT NULL, repo_id bigint NOT NULL, at date NOT NULL, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- the sharding key points at a non-primary-key column through its foreign key
CREATE TABLE repo_codes (repo_id bigint PRIMARY KEY REFERENCES repos, code text NOT NULL UNIQUE);
CREATE TABLE pushes (id bigint PRIMARY KEY, code text NOT NULL REFERENCES repo_codes (code));
"""

OWN_DICTIONARY = {
    "version": 1,
    "root": "tenants",
    "tables": {
        "tenants": {"root": True},
        "groups": {"sharding_key": {"tenant_no": "tenants"}},
        "repos": {"sharding_key": {"group_id": "groups"}},
        "tags": {"sharding_key": {"repo_id": "repos", "group_id": "groups"}},
        "events": {"sharding_key": {"repo_id": "repos"}},
        "repo_codes": {"sharding_key": {"repo_id": "repos"}},
        "pushes": {"sharding_key": {"code": "repo_codes"}},
    },
}


@pytest.fixture
def own_cell(scratch_db):
    dictionary = Dictionary.from_mapping(OWN_DICTIONARY)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute(OWN_SCHEMA)
        for t in (1, 2):
            conn.execute("INSERT INTO tenants VALUES (%s, 't')", (t,))
            conn.execute("INSERT INTO groups VALUES (%s, %s)", (t * 10, t))
            conn.execute("INSERT INTO repos VALUES (%s, %s)", (t * 100, t * 10))
            conn.execute("INSERT INTO tags VALUES (%s, %s, NULL), (%s, NULL, %s)",
                         (t * 100, t * 100, t * 100 + 1, t * 10))
            conn.execute("INSERT INTO events VALUES (%s, %s, '2026-05-01')", (t * 100, t * 100))
            conn.execute("INSERT INTO repo_codes VALUES (%s, %s)", (t * 100, f"code-{t}"))
            conn.execute("INSERT INTO pushes VALUES (%s, %s)", (t * 100, f"code-{t}"))
        live = introspect(conn)
        install_guard(conn, dictionary, live)
        yield conn, dictionary, live


def test_own_schema_alternatives_partitions_and_fk_columns(own_cell):
    conn, _, _ = own_cell
    freeze_org(conn, 1, "tok")
    refused(conn, "INSERT INTO tags VALUES (900, 100, NULL)")  # via repo
    refused(conn, "INSERT INTO tags VALUES (901, NULL, 10)")  # via group
    refused(conn, "UPDATE tags SET id = id + 1000 WHERE group_id = 10")
    refused(conn, "INSERT INTO events VALUES (900, 100, '2026-06-01')")  # partitioned table
    refused(conn, "UPDATE events SET at = '2026-07-01' WHERE repo_id = 100")
    refused(conn, "INSERT INTO pushes VALUES (900, 'code-1')")  # pushes.code -> repo_codes.code
    conn.execute("INSERT INTO tags VALUES (902, 200, NULL), (903, NULL, 20)")
    conn.execute("INSERT INTO events VALUES (901, 200, '2026-06-01')")
    conn.execute("INSERT INTO pushes VALUES (901, 'code-2')")


@pytest.mark.parametrize("which", ["cell", "own_cell"])
def test_predicates_and_org_of_row_agree_with_the_data(request, which):
    """Every row is selected by exactly its organization's predicate, and org_of_row names that organization."""
    conn, dictionary, live = request.getfixturevalue(which)
    orgs = [r[0] for r in conn.execute(sql.SQL("SELECT {} FROM {}").format(
        sql.Identifier(dictionary.root_key(live)), sql.Identifier(dictionary.root_table)))]
    for table in dictionary.org_tables():
        total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        assert total > 0, table
        selected = 0
        for org in orgs:
            query = sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
                sql.Identifier(table), dictionary.org_predicate(table, live))
            selected += conn.execute(query, {"org": org}).fetchone()[0]
            mismatched = conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE {} AND {} IS DISTINCT FROM %(org)s")
                                      .format(sql.Identifier(table), dictionary.org_predicate(table, live),
                                              dictionary.org_of_row_sql(table, live, "t")),
                                      {"org": org}).fetchone()[0]
            assert mismatched == 0, table
        assert selected == total, table
