"""Adopting a fleet the migrator did not build: Storefront cells created by plain SQL scripts.

``cells init`` in adopt mode (schema and sequences left alone, sequences checked against the cell's
ID range, set only with ``--set-sequences``), ``orgs discover`` (registration and conflicts),
preflight refusing cells whose schemas differ, and ``cells uninstall`` leaving every cell exactly as
it was before adoption. The Topology Service runs in-process; the end-to-end move with a real
Topology Service and a real Celery worker is in test_adopt_e2e.py.
"""

from __future__ import annotations

import psycopg
import pytest

from migrator.cells.guard import freeze_org, unfreeze_org
from migrator.config import clear_settings_cache
from migrator.topology.client import topology_client
from tests.schemas import storefront
from tests.support.cli import run_cli, run_json

pytestmark = pytest.mark.integration


@pytest.fixture
def adopted_fleet(fleet_factory):
    """Three Storefront cells built without the migrator, in a config with ``adopt: true``.

    cell-1 and cell-2 have run for a while with disjoint ID plans (IDs from 1, and from the second
    block); cell-3 is a new cell: the schema only, its sequences still at 1.
    """

    f = fleet_factory(topology=False, upgrade=True)
    storefront.adopt_config(f.config_path)
    clear_settings_cache()
    block = f.settings().topology.sequence_block
    storefront.create_cell(f.cell_dsns["cell-1"], id_base=0, tenants=3, orders_per_customer=1)
    storefront.create_cell(f.cell_dsns["cell-2"], id_base=block, tenants=1, orders_per_customer=1)
    storefront.create_cell(f.cell_dsns["cell-3"], data=False)
    f.extra["block"] = block
    return f


def test_adopt_checks_sequences_changes_nothing_twice_and_uninstall_restores_every_cell(adopted_fleet):
    f = adopted_fleet
    before = {cell: storefront.schema_snapshot(dsn) for cell, dsn in f.cell_dsns.items()}

    # First run: everything installed; cell-3's sequences are reported, not changed.
    first = {r["cell"]: r for r in run_json("cells", "init", code=1)}
    assert all(r["adopt"] and not r["schema_applied"] and r["guard_installed"] for r in first.values())
    assert all(r["guard_tables"] == len(storefront.ORG_TABLES) and not r["guard_missing_tables"]
               for r in first.values())
    assert first["cell-1"]["sequences_ok"] and first["cell-2"]["sequences_ok"]
    assert all(r["sequences_set"] == 0 for r in first.values())
    outside = {s["name"]: s for s in first["cell-3"]["sequences_outside"]}
    assert set(outside) == {"tenants_tenant_id_seq", "customers_customer_id_seq", "orders_order_id_seq",
                            "notes_note_id_seq", "attachments_display_no_seq", "activity_activity_id_seq"}
    assert outside["orders_order_id_seq"]["tables"] == ["orders"]
    assert outside["activity_activity_id_seq"]["tables"] == ["activity"]  # the partitioned parent
    # job_queue is cell-local: its IDs never move, so its sequence is none of our business
    assert "job_queue_job_id_seq" not in outside
    assert {s["name"] for s in first["cell-1"]["sequences_unbounded"]} == set(outside)
    with psycopg.connect(f.cell_dsns["cell-3"]) as conn:
        assert conn.execute("SELECT last_value FROM orders_order_id_seq").fetchone()[0] == 1
    result = run_cli("cells", "init")
    assert result.exit_code == 1 and "--set-sequences" in result.output and "orders_order_id_seq" in result.output

    # The explicit flag moves cell-3's sequences into its range.
    [r3] = run_json("cells", "init", "--cell", "cell-3", "--set-sequences")
    assert r3["sequences_set"] == len(outside) and r3["sequences_ok"] and not r3["sequences_unbounded"]
    lo, hi = r3["range"]
    assert lo == 2 * f.extra["block"] + 1
    with psycopg.connect(f.cell_dsns["cell-3"], autocommit=True) as conn:
        tenant = conn.execute("INSERT INTO tenants (slug, display_name) VALUES ('new', 'New') "
                              "RETURNING tenant_id").fetchone()[0]
        assert lo <= tenant <= hi
        conn.execute("DELETE FROM tenants WHERE tenant_id = %s", (tenant,))

    # Again: nothing changes anywhere.
    installed = {cell: storefront.schema_snapshot(dsn) for cell, dsn in f.cell_dsns.items()}
    assert all(installed[cell] != before[cell] for cell in f.cell_dsns)  # (so the final comparison means something)
    again = {r["cell"]: r for r in run_json("cells", "init")}
    for r in again.values():
        assert not r["guard_installed"] and not r["namespace_created"] and r["sequences_set"] == 0
    assert run_cli("schema", "check").exit_code == 0
    assert {cell: storefront.schema_snapshot(dsn) for cell, dsn in f.cell_dsns.items()} == installed

    # The application sees the migrator only as a schema of its own and triggers on its organization tables,
    # each calling a function of that schema.
    with psycopg.connect(f.cell_dsns["cell-1"]) as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname !~ '^(pg_|information)'")}
        assert schemas == {"public", "migrator"}
        triggers = conn.execute(
            "SELECT c.relname, p.pronamespace::regnamespace::text FROM pg_trigger t JOIN pg_class c ON c.oid = tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal AND t.tgparentid = 0").fetchall()
        assert {table for table, _ in triggers} == set(storefront.ORG_TABLES)
        assert {fn_schema for _, fn_schema in triggers} == {"migrator"}

    # Uninstall is refused while an organization is frozen (a move would lose its guard).
    with psycopg.connect(f.cell_dsns["cell-1"], autocommit=True) as conn:
        freeze_org(conn, 1, "tok")
        result = run_cli("cells", "uninstall", "--cell", "cell-1")
        assert result.exit_code == 1 and "frozen" in result.output
        unfreeze_org(conn, 1)

    # ... and while an object of the application depends on the migrator's schema (it would go with it).
    with psycopg.connect(f.cell_dsns["cell-2"], autocommit=True) as conn:
        conn.execute("CREATE VIEW public.frozen_view AS SELECT organization_id FROM migrator.frozen_orgs")
        result = run_cli("cells", "uninstall", "--cell", "cell-2")
        assert result.exit_code == 1 and "view frozen_view" in result.output, result.output
        assert conn.execute("SELECT to_regclass('migrator.frozen_orgs')").fetchone()[0] is not None
        conn.execute("DROP VIEW public.frozen_view")

    removed = {r["cell"]: r for r in run_json("cells", "uninstall")}
    assert set(removed["cell-3"]["sequences_restored"]) == set(outside)
    assert all(any(r.startswith("schema migrator") for r in done["removed"]) for done in removed.values())
    after = {cell: storefront.schema_snapshot(dsn) for cell, dsn in f.cell_dsns.items()}
    for cell in f.cell_dsns:
        assert after[cell]["catalog"] == before[cell]["catalog"], cell
        assert after[cell].get("pg_dump") == before[cell].get("pg_dump"), cell
    # and a second uninstall finds nothing to do
    assert all(not r["removed"] for r in run_json("cells", "uninstall"))


def test_discover_registers_organizations_and_reports_conflicts(adopted_fleet):
    f = adopted_fleet
    block = f.extra["block"]
    run_json("cells", "init", "--set-sequences")
    settings = f.settings()
    topology = topology_client(settings)
    # Conflicts an adopted fleet can have: tenant 3 also exists in cell-3 (a botched copy), tenant 2
    # is already routed to cell-3 where it has no rows, and tenant 999 is routed to cell-2 without rows.
    with psycopg.connect(f.cell_dsns["cell-3"], autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (tenant_id, slug, display_name) OVERRIDING SYSTEM VALUE "
                     "VALUES (3, 'dup', 'Duplicate')")
    topology.register_route(2, "cell-3")
    topology.register_route(999, "cell-2")

    found = run_json("orgs", "discover", "--cell", "cell-1", code=1)
    assert found["root_table"] == "tenants"
    status = {o["organization_id"]: o for o in found["organizations"]}
    assert status[1]["status"] == "unregistered"
    assert status[2]["status"] == "conflict" and "where it has no rows" in status[2]["reason"]
    assert status[3]["status"] == "conflict" and status[3]["also_in"] == ["cell-3"]
    assert "several cells" in status[3]["reason"]
    assert {r.organization_id for r in topology.list_routes()} == {2, 999}  # nothing registered

    found = run_json("orgs", "discover", "--cell", "cell-1", "--register", code=1)
    status = {o["organization_id"]: o["status"] for o in found["organizations"]}
    assert status == {1: "registered_now", 2: "conflict", 3: "conflict"}
    assert {r.organization_id: r.cell for r in topology.list_routes()} == {1: "cell-1", 2: "cell-3", 999: "cell-2"}

    found = run_json("orgs", "discover", "--cell", "cell-2", "--register", code=1)
    status = {o["organization_id"]: o for o in found["organizations"]}
    assert status[block + 1]["status"] == "registered_now"
    assert status[999]["status"] == "missing" and "no row in tenants" in status[999]["reason"]

    found = run_json("orgs", "discover", "--cell", "cell-3", code=1)
    status = {o["organization_id"]: o["status"] for o in found["organizations"]}
    assert status == {2: "missing", 3: "conflict"}

    # Resolved (the stray copy deleted, the wrong route... left to the operator): discovery is idempotent.
    with psycopg.connect(f.cell_dsns["cell-3"], autocommit=True) as conn:
        conn.execute("DELETE FROM tenants WHERE tenant_id = 3")
    found = run_json("orgs", "discover", "--cell", "cell-1", "--register", code=1)
    status = {o["organization_id"]: o["status"] for o in found["organizations"]}
    assert status == {1: "registered", 2: "conflict", 3: "registered_now"}
    result = run_cli("orgs", "discover", "--cell", "cell-2")
    assert result.exit_code == 1 and "missing" in result.output and "conflict" in result.output


def test_preflight_names_a_missing_table_and_a_missing_column_and_refuses(adopted_fleet):
    f = adopted_fleet
    run_json("cells", "init", "--set-sequences")
    run_json("orgs", "discover", "--cell", "cell-1", "--register")

    plan = run_json("move", "--org", "1", "--to", "cell-2", "--dry-run")
    assert set(plan["tables"]) == set(storefront.ORG_TABLES) and all(plan["tables"].values())
    assert plan["blobs"] == 5 and plan["blob_bytes"] > 0

    # A column present in cell-1 but not in cell-2.
    with psycopg.connect(f.cell_dsns["cell-2"], autocommit=True) as conn:
        conn.execute("ALTER TABLE orders DROP COLUMN gift_note")
    result = run_cli("move", "--org", "1", "--to", "cell-2", "--dry-run")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "cells 'cell-1' and 'cell-2' have different schemas" in text
    assert "column orders.gift_note: present in cell-1, missing in cell-2" in text

    # A table of the dictionary absent from cell-3.
    with psycopg.connect(f.cell_dsns["cell-3"], autocommit=True) as conn:
        conn.execute("DROP TABLE notes")
    result = run_cli("move", "--org", "1", "--to", "cell-3", "--dry-run")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "cell 'cell-3' does not match the data dictionary" in text
    assert "table notes is in the data dictionary (organization) but not in the database" in text

    # schema check says the same, cell by cell
    report = run_json("schema", "check", code=1)["cells"]
    assert {(p["kind"], p["table"], p["column"]) for p in report["cell-2"]["problems"]} == {
        ("drift", "orders", "gift_note")}
    assert ("missing_table", "notes", None) in {(p["kind"], p["table"], p["column"])
                                                for p in report["cell-3"]["problems"]}
    with psycopg.connect(f.cell_dsns["cell-1"]) as conn:  # nothing was frozen or changed
        assert conn.execute("SELECT count(*) FROM migrator.frozen_orgs").fetchone()[0] == 0


def test_a_schema_named_migrator_of_the_application_is_never_taken_over(scratch_db):
    from migrator.cells.namespace import claim_namespace, namespace_state
    from migrator.cells.uninstall import uninstall_cell
    from migrator.errors import MigratorError

    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA migrator")
        assert namespace_state(conn) == "ours"  # empty: nothing of anyone's
        conn.execute("CREATE TABLE migrator.jobs (id int)")
        assert namespace_state(conn) == "foreign"
        with pytest.raises(MigratorError, match="table jobs"):
            claim_namespace(conn, "cell-9")
        assert uninstall_cell(conn, cell="cell-9")["removed"] == []
        assert conn.execute("SELECT to_regclass('migrator.jobs')").fetchone()[0] is not None
