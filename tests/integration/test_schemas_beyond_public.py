"""Tables beyond the ``public`` schema, end to end with a real worker: Storefront cells whose partitions
of ``activity`` live in a second schema (as GitLab keeps them in ``gitlab_partitions_dynamic``)."""

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


@pytest.fixture
def parted_fleet(fleet, topology_server):
    storefront.adopt_config(fleet.config_path)
    block = fleet.settings().topology.sequence_block
    for i, (cell, dsn) in enumerate(fleet.cell_dsns.items()):
        storefront.create_cell(dsn, id_base=i * block, tenants=3 if i == 0 else 1, partition_schema=PARTS)
        storefront.write_blobs(dsn, fleet.blob_dir(cell))
    fleet.extra["block"] = block
    return fleet


@pytest.fixture
def parted_worker(parted_fleet, tmp_path):
    from migrator.fleet.services import wait_worker_ready
    from tests.support.fleet import start_worker

    proc = start_worker(parted_fleet.config_path, tmp_path / "worker.log", concurrency=2)
    wait_worker_ready(proc)
    yield proc
    proc.stop()


def test_partitions_in_a_second_schema_move_end_to_end(parted_fleet, parted_worker):
    fleet = parted_fleet
    settings = fleet.settings()
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        where = dict(conn.execute(
            "SELECT c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname LIKE 'activity%%' AND c.relkind IN ('r', 'p')"))
    assert where == {"activity": "public", **{p: PARTS for p in storefront.ACTIVITY_PARTITIONS}}
    check = run_json("schema", "check")
    assert check["ok"], check
    results = run_json("cells", "init")
    assert all(r["guard_tables"] == 10 for r in results)
    for cell in fleet.cell_dsns:
        run_json("orgs", "discover", "--cell", cell, "--register")
    org = 1
    before = org_checksums(settings, "cell-1", org)
    assert before["activity"][0] > 0
    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json", "--reason", "parts")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed"
    assert org_checksums(settings, "cell-2", org) == before
    assert not duplicate_keys(settings, "cell-2")
    # the source's partitions in the second schema are guarded too
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql.SQL("UPDATE {} SET action = 'lost?' WHERE tenant_id = %s").format(
                sql.Identifier(PARTS, "activity_2024")), (org,))
        assert err.value.sqlstate == "MG001"

    # uninstall (cell-3: no move touched it) leaves no trigger of ours on the partitions either
    triggers = ("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal")
    with psycopg.connect(fleet.cell_dsns["cell-3"], autocommit=True) as conn:
        assert conn.execute(triggers, (PARTS,)).fetchone()[0] > 0
    run_json("cells", "uninstall", "--cell", "cell-3")
    with psycopg.connect(fleet.cell_dsns["cell-3"], autocommit=True) as conn:
        assert conn.execute(triggers, (PARTS,)).fetchone()[0] == 0
        assert conn.execute(triggers, ("public",)).fetchone()[0] == 0
