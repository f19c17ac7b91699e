"""An adopted fleet end to end: Storefront cells built by plain SQL, adopted, discovered, a tenant moved.

Real PostgreSQL, the real Topology Service process, a real Celery worker and the real ``migrator``
command; nothing of the sample application is involved (the root table is ``tenants``).
"""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from migrator.blobs.store import open_store
from migrator.topology.client import topology_client
from tests.schemas import storefront
from tests.support.checks import duplicate_keys, org_checksums
from tests.support.moves import migrator

pytestmark = pytest.mark.integration


def run_json(*args, code: int = 0):
    from migrator.cli.main import app

    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_an_adopted_fleet_moves_a_tenant_end_to_end(storefront_fleet, storefront_worker):
    fleet = storefront_fleet
    block = fleet.extra["block"]
    settings = fleet.settings()

    results = run_json("cells", "init")
    assert [r["cell"] for r in results] == ["cell-1", "cell-2", "cell-3"]
    assert all(r["adopt"] and r["sequences_ok"] and r["sequences_set"] == 0 for r in results)
    # job_queue is cell_local: its sequence is skipped, not counted among those init sets or checks
    assert all(r["sequences"] == 6 for r in results)
    assert all([s["name"] for s in r["sequences_skipped"]] == ["job_queue_job_id_seq"] for r in results)
    from migrator.cli.main import app

    text = CliRunner().invoke(app, ["cells", "init"], catch_exceptions=False, env={"COLUMNS": "200"}).output
    assert text.count("0 set of 6, 1 skipped") == 3, text
    tenants = {}
    for cell in fleet.cell_dsns:
        found = run_json("orgs", "discover", "--cell", cell, "--register")
        assert found["conflicts"] == 0
        tenants[cell] = [o["organization_id"] for o in found["organizations"]]
        assert all(o["status"] == "registered_now" for o in found["organizations"])
    assert tenants == {"cell-1": [1, 2, 3], "cell-2": [block + 1], "cell-3": [2 * block + 1]}

    org = 1
    bystanders = [(2, "cell-1"), (3, "cell-1"), (block + 1, "cell-2")]
    before = org_checksums(settings, "cell-1", org)
    before_bystanders = {o: org_checksums(settings, c, o) for o, c in bystanders}
    assert all(rows for rows, _ in before.values())  # the tenant has rows in every table

    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json", "--reason", "adopted")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed"
    verification = detail["report"]["verification"]
    assert verification["ok"] is True and verification["blobs_verified"] == 5
    assert set(verification["tables"]) == set(storefront.ORG_TABLES)
    assert all(t["match"] and t["source_rows"] == before[name][0] for name, t in verification["tables"].items())

    # The target holds exactly the source's rows, the source copy is unchanged, bystanders untouched.
    assert org_checksums(settings, "cell-2", org) == before
    assert org_checksums(settings, "cell-1", org) == before
    assert {o: org_checksums(settings, c, o) for o, c in bystanders} == before_bystanders
    assert not duplicate_keys(settings, "cell-2")

    topology = topology_client(settings)
    route = topology.classify(org)
    assert route.cell == "cell-2" and route.state == "active"
    assert [h["action"] for h in topology.history(org)].count("flip") == 1

    target_store = open_store(settings, "cell-2")
    with psycopg.connect(fleet.cell_dsns["cell-2"], autocommit=True) as conn:
        refs = conn.execute("SELECT x.blob_key, x.blob_sha256 FROM attachments x JOIN accounts a "
                            "ON a.account_id = x.uploaded_by WHERE a.tenant_id = %s AND x.blob_key IS NOT NULL",
                            (org,)).fetchall()
        assert len(refs) == 5
        for key, sha in refs:
            assert target_store.sha256(key) == sha
        # Writable on the target: a new order draws its GENERATED ALWAYS id from cell-2's range.
        customer = conn.execute("SELECT c.customer_id FROM customers c JOIN stores s USING (store_handle) "
                                "WHERE s.tenant_id = %s LIMIT 1", (org,)).fetchone()[0]
        order = conn.execute("INSERT INTO orders (customer_id) VALUES (%s) RETURNING order_id",
                             (customer,)).fetchone()[0]
        assert block < order <= 2 * block
    # Read-only on the source until cleanup, through four hops as through the root.
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        for stmt in ("UPDATE tenants SET display_name = 'lost?' WHERE tenant_id = %s",
                     "UPDATE line_items li SET quantity = 9 FROM orders o JOIN customers c USING (customer_id) "
                     "JOIN stores s USING (store_handle) WHERE li.order_id = o.order_id AND s.tenant_id = %s"):
            with pytest.raises(psycopg.Error) as err:
                conn.execute(stmt, (org,))
            assert err.value.sqlstate == "MG001"

    # Discovery after the move: the source copy is recognized, not a conflict.
    found = run_json("orgs", "discover", "--cell", "cell-1")
    status = {o["organization_id"]: o["status"] for o in found["organizations"]}
    assert status == {1: "moved_away", 2: "registered", 3: "registered"}
    found = run_json("orgs", "discover", "--cell", "cell-2")
    assert {o["organization_id"]: o["status"] for o in found["organizations"]} == {
        1: "registered", block + 1: "registered"}
