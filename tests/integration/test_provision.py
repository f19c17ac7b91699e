"""``migrator cells init`` / ``cells list`` / ``orgs list`` on real PostgreSQL (Topology Service in-process)."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from migrator.cells.guard import FROZEN_SQLSTATE, freeze_org
from migrator.cells.provision import cell_stats, init_cells
from migrator.errors import ConfigError, UnknownCell
from migrator.sample import SAMPLE_SCHEMA_PATH
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration


def sequence_state(dsn: str) -> dict[str, tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1")]
        state = {}
        for name in names:
            last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(name))).fetchone()
            smin, smax = conn.execute("SELECT min_value, max_value FROM pg_sequences WHERE sequencename = %s",
                                      (name,)).fetchone()
            state[name] = (last, called, smin, smax)
        return state


def test_init_provisions_every_cell_and_a_second_run_changes_nothing(local_fleet):
    first = local_fleet.init()
    assert [r["cell"] for r in first] == ["cell-1", "cell-2", "cell-3"]
    for r in first:
        assert r["schema_applied"] and r["guard_installed"] and r["guard_tables"] == 12
        assert r["sequences"] >= 13 and r["sequences_set"] == r["sequences"]
        assert r["guard_missing_tables"] == []
    ranges = [tuple(r["range"]) for r in first]
    for i, (lo, hi) in enumerate(ranges):
        assert lo <= hi
        for lo2, hi2 in ranges[i + 1:]:
            assert hi < lo2 or hi2 < lo, "sequence ranges overlap"

    before = {cell: sequence_state(dsn) for cell, dsn in local_fleet.cell_dsns.items()}
    for cell, (lo, hi) in zip(local_fleet.cell_dsns, ranges, strict=True):
        assert before[cell] and all((smin, smax) == (lo, hi) for _, _, smin, smax in before[cell].values())

    second = local_fleet.init()
    for r, r1 in zip(second, first, strict=True):
        assert not r["schema_applied"] and not r["guard_installed"] and r["sequences_set"] == 0
        assert r["range"] == r1["range"] and r["guard_tables"] == 12
    assert {cell: sequence_state(dsn) for cell, dsn in local_fleet.cell_dsns.items()} == before

    # IDs drawn in each cell come from its own range; the blob store directories exist
    for (cell, dsn), (lo, hi) in zip(local_fleet.cell_dsns.items(), ranges, strict=True):
        with psycopg.connect(dsn, autocommit=True) as conn:
            org = conn.execute("INSERT INTO organizations (name, path) VALUES ('o', 'o') RETURNING id").fetchone()[0]
            ns = conn.execute("INSERT INTO namespaces (organization_id, name, path) VALUES (%s, 'n', 'n') "
                              "RETURNING id", (org,)).fetchone()[0]
            assert lo <= org <= hi and lo <= ns <= hi
            info = dict(conn.execute("SELECT key, value FROM migrator.cell_info").fetchall())
            assert info["cell"] == cell and info["seq_min"] == str(lo) and "installed_at" in info
        assert local_fleet.blob_dir(cell).is_dir()

    # after IDs were drawn, a third run still keeps the sequences where they are
    drawn = {cell: sequence_state(dsn) for cell, dsn in local_fleet.cell_dsns.items()}
    third = local_fleet.init(["cell-2"])
    assert third[0]["sequences_set"] == 0
    assert sequence_state(local_fleet.cell_dsns["cell-2"]) == drawn["cell-2"]


def test_init_installs_a_working_guard(local_fleet):
    local_fleet.init(["cell-1"])
    with psycopg.connect(local_fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        org = conn.execute("INSERT INTO organizations (name, path) VALUES ('o', 'o') RETURNING id").fetchone()[0]
        ns = conn.execute("INSERT INTO namespaces (organization_id, name, path) VALUES (%s, 'n', 'n') RETURNING id",
                          (org,)).fetchone()[0]
        freeze_org(conn, org, "tok")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("INSERT INTO projects (namespace_id, name, path) VALUES (%s, 'p', 'p')", (ns,))
        assert exc.value.sqlstate == FROZEN_SQLSTATE


def test_init_restarts_sequences_below_the_range_and_refuses_ones_beyond(local_fleet):
    dsn2 = local_fleet.cell_dsns["cell-2"]
    with psycopg.connect(dsn2, autocommit=True) as conn:  # an existing application schema with used sequences
        conn.execute(SAMPLE_SCHEMA_PATH.read_text())
        conn.execute("SELECT setval('users_id_seq', 42)")
    [r1] = local_fleet.init(["cell-1"])
    [r2] = local_fleet.init(["cell-2"])
    assert not r2["schema_applied"]
    lo, hi = r2["range"]
    assert lo > r1["range"][1]
    state = sequence_state(dsn2)
    assert state["users_id_seq"][:2] == (lo, False)  # restarted: 42 < lo

    with psycopg.connect(local_fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        conn.execute("ALTER SEQUENCE users_id_seq MAXVALUE 9223372036854775807")
        conn.execute("SELECT setval('users_id_seq', %s)", (r1["range"][1] + 5,))
    with pytest.raises(Exception, match="beyond the cell's range"):
        local_fleet.init(["cell-1"])


def test_adopted_cells_keep_their_schema(local_fleet):
    text = local_fleet.config_path.read_text().replace(
        "  cell-3:\n", "  cell-3:\n    adopt: true\n")
    local_fleet.config_path.write_text(text)
    with psycopg.connect(local_fleet.cell_dsns["cell-3"], autocommit=True) as conn:
        conn.execute("CREATE TABLE organizations (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)")
    [r] = local_fleet.init(["cell-3"])
    assert not r["schema_applied"]
    assert r["guard_tables"] == 1 and "notes" in r["guard_missing_tables"]
    # adopted: the sequences are the application's; checked (identity columns' too), not changed
    assert r["sequences"] == 1 and r["sequences_set"] == 0
    # the first cell registered: its range starts at 1, but nothing keeps the sequence below its end
    assert r["sequences_ok"] and not r["sequences_outside"]
    assert [s["name"] for s in r["sequences_unbounded"]] == ["organizations_id_seq"]
    [r] = init_cells(local_fleet.settings(), ["cell-3"], set_sequences=True)
    assert r["sequences_set"] == 1 and r["sequences_ok"]
    lo, hi = r["range"]
    with psycopg.connect(local_fleet.cell_dsns["cell-3"], autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('public.notes')").fetchone()[0] is None
        org = conn.execute("INSERT INTO organizations (name) VALUES ('x') RETURNING id").fetchone()[0]
        assert lo <= org <= hi
    assert local_fleet.init(["cell-3"])[0]["sequences_set"] == 0


def test_two_cells_sharing_a_database_are_refused(local_fleet):
    local_fleet.init(["cell-1"])
    text = local_fleet.config_path.read_text().replace(local_fleet.cell_dsns["cell-2"], local_fleet.cell_dsns["cell-1"])
    local_fleet.config_path.write_text(text)
    with pytest.raises(ConfigError, match="already belongs to cell 'cell-1'"):
        local_fleet.init(["cell-2"])


def test_unknown_cell(local_fleet):
    with pytest.raises(UnknownCell):
        init_cells(local_fleet.settings(), ["cell-9"])


def test_cell_stats(local_fleet):
    local_fleet.init(["cell-1"])
    with psycopg.connect(local_fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        for i in range(3):
            org = conn.execute("INSERT INTO organizations (name, path) VALUES ('o', %s) RETURNING id",
                               (f"o{i}",)).fetchone()[0]
            conn.execute("INSERT INTO namespaces (organization_id, name, path) VALUES (%s, 'n', 'n')", (org,))
    stats = cell_stats(local_fleet.settings(), "cell-1")
    assert stats["organizations"] == 3
    assert stats["tables"]["namespaces"]["rows"] == 3 and stats["tables"]["notes"]["rows"] == 0
    assert stats["rows"] == 6
    assert stats["bytes"] > stats["org_bytes"] > 0


# ---------------------------------------------------------------------------------- the commands


def test_cells_init_and_list_commands(local_fleet):
    result = run_cli("cells", "init", "--cell", "cell-1", "--cell", "cell-2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["cell"] for r in data] == ["cell-1", "cell-2"] and all(r["schema_applied"] for r in data)

    result = run_cli("cells", "init")
    assert result.exit_code == 0, result.output
    assert "cell-3" in result.output and "unchanged" in result.output

    from migrator.topology.client import topology_client

    settings = local_fleet.settings()
    tc = topology_client(settings)
    with psycopg.connect(local_fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        for _ in range(2):
            org = conn.execute("INSERT INTO organizations (name, path) VALUES ('o', md5(random()::text)) "
                               "RETURNING id").fetchone()[0]
            tc.register_route(org, "cell-1")

    result = run_cli("cells", "list", "--json")
    assert result.exit_code == 0, result.output
    cells = {c["cell"]: c for c in json.loads(result.output)}
    assert set(cells) == {"cell-1", "cell-2", "cell-3"}
    assert cells["cell-1"]["organizations_routed"] == 2 and cells["cell-1"]["organizations"] == 2
    assert cells["cell-2"]["organizations_routed"] == 0 and cells["cell-2"]["state"] == "active"
    assert cells["cell-1"]["seq_max"] < cells["cell-2"]["seq_min"]
    assert cells["cell-1"]["bytes"] > 0 and cells["cell-1"]["rows"] == 2

    result = run_cli("cells", "list")
    assert result.exit_code == 0 and "cell-3" in result.output


def test_cells_list_fails_when_a_cell_is_down(local_fleet):
    local_fleet.init(["cell-1"])
    text = local_fleet.config_path.read_text().replace(local_fleet.cell_dsns["cell-2"],
                                                        local_fleet.cell_dsns["cell-2"].replace("5432", "1"))
    local_fleet.config_path.write_text(text)
    result = run_cli("cells", "list", "--json")
    assert result.exit_code == 1
    cells = {c["cell"]: c for c in json.loads(result.output)}
    assert cells["cell-2"]["error"] and "does not answer" in cells["cell-2"]["error"]
    assert cells["cell-1"]["error"] is None


def test_orgs_list_command(local_fleet):
    local_fleet.init(["cell-1", "cell-2"])
    from migrator.topology.client import topology_client

    tc = topology_client(local_fleet.settings())
    orgs = {}
    with psycopg.connect(local_fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        for name in ("a", "b", "stray"):
            org = conn.execute("INSERT INTO organizations (name, path) VALUES (%s, %s) RETURNING id",
                               (name, name)).fetchone()[0]
            ns = conn.execute("INSERT INTO namespaces (organization_id, name, path) VALUES (%s, 'n', 'n') "
                              "RETURNING id", (org,)).fetchone()[0]
            pr = conn.execute("INSERT INTO projects (namespace_id, name, path) VALUES (%s, 'p', 'p') RETURNING id",
                              (ns,)).fetchone()[0]
            conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note) "
                         "VALUES (%s, 'Issue', 1, 'x'), (%s, 'Issue', 1, 'y')", (pr, pr))
            orgs[name] = org
    tc.register_route(orgs["a"], "cell-1")
    tc.register_route(orgs["b"], "cell-1")
    with psycopg.connect(local_fleet.cell_dsns["cell-2"], autocommit=True) as conn:
        other = conn.execute("INSERT INTO organizations (name, path) VALUES ('c', 'c') RETURNING id").fetchone()[0]
    tc.register_route(other, "cell-2")

    result = run_cli("orgs", "list", "--json")
    assert result.exit_code == 0, result.output
    routes = json.loads(result.output)
    assert [(r["organization_id"], r["cell"], r["state"], r["version"]) for r in routes] == sorted(
        [(orgs["a"], "cell-1", "active", 1), (orgs["b"], "cell-1", "active", 1), (other, "cell-2", "active", 1)])

    result = run_cli("orgs", "list", "--cell", "cell-1", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["organization_id"]: r for r in json.loads(result.output)}
    assert set(rows) == {orgs["a"], orgs["b"], orgs["stray"]}
    assert rows[orgs["a"]]["rows"] == 5  # organization, namespace, project, two notes
    assert rows[orgs["stray"]]["state"] == "unrouted"

    result = run_cli("orgs", "list", "--cell", "cell-1")
    assert result.exit_code == 0 and "unrouted" in result.output
    result = run_cli("orgs", "list", "--cell", "nope")
    assert result.exit_code == 1 and "unknown cell" in result.output


def test_help_texts():
    for args in (["cells", "--help"], ["cells", "init", "--help"], ["cells", "list", "--help"],
                 ["orgs", "--help"], ["orgs", "list", "--help"]):
        result = run_cli(*args)
        assert result.exit_code == 0 and "Usage" in result.output, args
