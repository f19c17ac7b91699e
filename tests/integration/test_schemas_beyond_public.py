"""Tables beyond the ``public`` schema, end to end with a real worker: Storefront cells whose ``stores``,
``notes`` and ``attachments`` (with blobs) live in a schema ``shop`` (named ``shop.stores`` … in the dictionary,
``customers`` in ``public`` keyed through ``shop.stores``) and whose partitions of ``activity`` live in
a third schema (as GitLab keeps them in ``gitlab_partitions_dynamic``)."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from tests.integration.test_adopt_e2e import run_json
from tests.schemas import storefront
from tests.support.checks import duplicate_keys, org_checksums
from tests.support.moves import migrator

pytestmark = pytest.mark.integration

PARTS = "storefront_parts"
MOVED = {"stores": "shop", "notes": "shop", "attachments": "shop"}

# Our triggers (guard, capture) on the tables of a schema.
TRIGGERS = ("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal")


@pytest.fixture
def schemas_fleet(fleet, topology_server, tmp_path):
    storefront.adopt_config(fleet.config_path,
                            dictionary=storefront.dictionary_in_schemas(MOVED, tmp_path / "dictionary.yaml"))
    block = fleet.settings().topology.sequence_block
    for i, (cell, dsn) in enumerate(fleet.cell_dsns.items()):
        storefront.create_cell(dsn, id_base=i * block, tenants=3 if i == 0 else 1, partition_schema=PARTS,
                               table_schemas=MOVED)
        storefront.write_blobs(dsn, fleet.blob_dir(cell), ("shop", "attachments"))
    fleet.extra["block"] = block
    return fleet


@pytest.fixture
def schemas_worker(schemas_fleet, tmp_path):
    from migrator.fleet.services import wait_worker_ready
    from tests.support.fleet import start_worker

    proc = start_worker(schemas_fleet.config_path, tmp_path / "worker.log", concurrency=2)
    wait_worker_ready(proc)
    yield proc
    proc.stop()


def test_tables_and_partitions_in_other_schemas_move_end_to_end(schemas_fleet, schemas_worker):
    fleet = schemas_fleet
    settings = fleet.settings()
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        where = dict(conn.execute(
            "SELECT c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE (c.relname LIKE 'activity%%' OR c.relname IN ('stores', 'notes')) AND c.relkind IN ('r', 'p')"))
    assert where == {"activity": "public", "stores": "shop", "notes": "shop",
                     **{p: PARTS for p in storefront.ACTIVITY_PARTITIONS}}

    check = run_json("schema", "check")
    assert check["ok"], check
    results = run_json("cells", "init")
    assert all(r["guard_tables"] == 10 and r["capture_tables"] == 10 for r in results)
    # shop.notes' sequence moved with it: checked (in the cell's range), like public's
    assert all(r["sequences"] == 6 and r["sequences_ok"] for r in results)
    assert "shop.notes_note_id_seq" not in {s["name"] for r in results for s in r["sequences_skipped"]}
    for cell in fleet.cell_dsns:
        found = run_json("orgs", "discover", "--cell", cell, "--register")
        assert found["conflicts"] == 0

    org, bystander = 1, 2
    before = org_checksums(settings, "cell-1", org)
    assert set(before) >= {"shop.stores", "shop.notes", "shop.attachments", "customers", "activity"}
    assert all(rows for rows, _ in before.values())
    before_bystander = org_checksums(settings, "cell-1", bystander)

    dry = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert json.loads(dry.stdout)["tables"]["shop.notes"] == before["shop.notes"][0]

    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json", "--reason", "schemas")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed"
    verification = detail["report"]["verification"]
    assert verification["ok"] is True and set(verification["tables"]) == set(before)
    assert verification["blobs_verified"] == 5  # shop.attachments' objects, copied and checksummed
    assert org_checksums(settings, "cell-2", org) == before
    assert org_checksums(settings, "cell-1", org) == before
    assert org_checksums(settings, "cell-1", bystander) == before_bystander
    assert not duplicate_keys(settings, "cell-2")

    # The source copy is guarded in every schema: a table of shop, a partition in the third schema.
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        for stmt in (sql.SQL("UPDATE {} SET body = 'lost?' WHERE store_handle IN "
                             "(SELECT store_handle FROM shop.stores WHERE tenant_id = %s)").format(
                                 sql.Identifier("shop", "notes")),
                     sql.SQL("UPDATE {} SET action = 'lost?' WHERE tenant_id = %s").format(
                         sql.Identifier(PARTS, "activity_2024"))):
            with pytest.raises(psycopg.Error) as err:
                conn.execute(stmt, (org,))
            assert err.value.sqlstate == "MG001"
        # the bystander is writable
        conn.execute("UPDATE shop.notes SET body = body WHERE store_handle IN "
                     "(SELECT store_handle FROM shop.stores WHERE tenant_id = %s)", (bystander,))

    # cleanup deletes the source copy in every schema, and nothing of the bystander
    done = migrator(fleet, "cleanup", detail["id"], "--force")
    assert done.returncode == 0, done.stderr + done.stdout
    assert all(rows == 0 for rows, _ in org_checksums(settings, "cell-1", org).values())
    assert org_checksums(settings, "cell-1", bystander) == before_bystander
    assert org_checksums(settings, "cell-2", org) == before

    # uninstall (cell-3: no move touched it) leaves no trigger of ours in any schema
    with psycopg.connect(fleet.cell_dsns["cell-3"], autocommit=True) as conn:
        assert all(conn.execute(TRIGGERS, (s,)).fetchone()[0] > 0 for s in ("public", "shop", PARTS))
    run_json("cells", "uninstall", "--cell", "cell-3")
    with psycopg.connect(fleet.cell_dsns["cell-3"], autocommit=True) as conn:
        assert all(conn.execute(TRIGGERS, (s,)).fetchone()[0] == 0 for s in ("public", "shop", PARTS))
