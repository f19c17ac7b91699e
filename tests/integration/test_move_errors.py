"""Every bad input ends in one clear message, and the source stays authoritative and unchanged."""

from __future__ import annotations

import json
import os
import threading

import psycopg
import pytest

from migrator.blobs.store import open_store
from migrator.moves.operations import Operations
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.support.checks import org_checksums
from tests.support.moves import migrator, wait_move

pytestmark = pytest.mark.integration


@pytest.fixture
def one_org(provisioned):
    settings = provisioned.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=800, blobs=4, skew=False, seed=3)
    return provisioned, settings, org.organization_id


def _rejected(fleet, *args):
    result = migrator(fleet, *args)
    assert result.returncode != 0
    return result.stderr


def test_unknown_organization_cell_and_same_cell(one_org):
    fleet, settings, org = one_org
    err = _rejected(fleet, "move", "--org", "999999999", "--to", "cell-2")
    assert "organization 999999999 is not routed" in err
    err = _rejected(fleet, "move", "--org", str(org), "--to", "cell-9")
    assert "unknown cell 'cell-9'" in err and "cell-1" in err
    err = _rejected(fleet, "move", "--org", str(org), "--to", "cell-1")
    assert f"organization {org} already lives in cell 'cell-1'" in err


def test_second_concurrent_move_is_refused_by_the_database(one_org):
    fleet, settings, org = one_org
    # No worker: moves stay queued. Two operators at the same moment: exactly one move exists.
    results, errors = [], []

    def request():
        try:
            results.append(Operations(settings).request_move(org, "cell-2", actor="op", reason="race"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1
    assert len(errors) == 5 and all(e.code == "move_conflict" for e in errors)
    assert str(results[0].id) in errors[0].message
    err = _rejected(fleet, "move", "--org", str(org), "--to", "cell-3")
    assert "already has an active move" in err


def _rejected_move(fleet, settings, org, expect: str, target="cell-2", target_clean=True):
    before = org_checksums(settings, "cell-1", org)
    result = migrator(fleet, "move", "--org", str(org), "--to", target, "--wait", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    detail = json.loads(result.stdout)
    assert detail["state"] in ("rejected", "failed")
    assert expect in detail["error"], detail["error"]
    # The source is authoritative, writable and unchanged; the target has none of the rows.
    route = topology_client(settings).classify(org)
    assert route.cell == "cell-1" and route.state == "active"
    assert org_checksums(settings, "cell-1", org) == before
    if target_clean:
        assert all(rows == 0 for rows, _ in org_checksums(settings, target, org).values())
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        conn.execute("UPDATE organizations SET name = name WHERE id = %s", (org,))
    return detail


def test_unclassified_table_is_refused(one_org, worker):
    fleet, settings, org = one_org
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        conn.execute("CREATE TABLE audit_trail (id bigserial PRIMARY KEY, what text)")
    detail = _rejected_move(fleet, settings, org, "audit_trail")
    assert detail["state"] == "rejected" and detail["error_code"] == "dictionary_error"


def test_primary_key_collision_in_target_is_refused(one_org, worker):
    fleet, settings, org = one_org
    with psycopg.connect(fleet.cell_dsns["cell-2"], autocommit=True) as conn:
        conn.execute("INSERT INTO organizations (id, name, path) VALUES (%s, 'squatter', 'squatter')", (org,))
    detail = _rejected_move(fleet, settings, org, f"organizations: primary keys of organization {org} already exist",
                            target_clean=False)
    assert detail["error_code"] == "key_collision"


def test_missing_blob_fails_naming_the_key_and_lifts_the_freeze(one_org, worker):
    fleet, settings, org = one_org
    with psycopg.connect(fleet.cell_dsns["cell-1"]) as conn:
        key = conn.execute("SELECT u.file_key FROM uploads u JOIN projects p ON p.id = u.project_id "
                           "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = %s LIMIT 1",
                           (org,)).fetchone()[0]
    store = open_store(settings, "cell-1")
    os.remove(store.root / key)
    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json")
    assert result.returncode == 1
    detail = json.loads(result.stdout)
    assert detail["state"] == "failed" and detail["error_code"] == "blob_missing"
    assert key in detail["error"]
    route = topology_client(settings).classify(org)
    assert route.cell == "cell-1" and route.state == "active"
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        conn.execute("UPDATE organizations SET name = name WHERE id = %s", (org,))  # writable again
    # Abort leaves the target without the organization's rows.
    assert migrator(fleet, "abort", detail["id"]).returncode == 0
    assert all(rows == 0 for rows, _ in org_checksums(settings, "cell-2", org).values())
    assert wait_move(settings, detail["id"]).state == "aborted"


def test_unreachable_target_database(one_org, worker):
    fleet, settings, org = one_org
    # cell-3's database goes away (dropped): the move is refused naming the cell; no password shown.
    from migrator.fleet.databases import drop_database

    drop_database(fleet.cell_dbs["cell-3"])
    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-3", "--wait", "--json")
    assert result.returncode == 1
    detail = json.loads(result.stdout)
    assert detail["error_code"] == "cell_unavailable"
    assert "cell 'cell-3' database" in detail["error"]
    route = topology_client(settings).classify(org)
    assert route.cell == "cell-1" and route.state == "active"


def test_password_never_shown(one_org, tmp_path):
    fleet, settings, org = one_org
    import yaml

    cfg = yaml.safe_load(fleet.config_path.read_text())
    cfg["cells"]["cell-3"]["dsn"] = "postgresql://app:hunter2secret@127.0.0.1:1/nowhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    result = migrator(fleet, "schema", "check", "--cell", "cell-3", env={"MIGRATOR_CONFIG": str(bad)})
    assert result.returncode != 0
    assert "hunter2secret" not in result.stdout + result.stderr
    assert "app:***@" in result.stdout + result.stderr


def test_move_ids_by_unique_prefix(fleet):
    """Every command that takes a move id takes a unique prefix of it (as git does); an ambiguous one lists
    the candidates; a prefix too short or not hex is refused with a hint."""
    import uuid

    from migrator.control.engine import upgrade_control_db
    from migrator.errors import UnknownMove
    from migrator.moves.store import MoveStore

    upgrade_control_db(fleet.control_dsn)
    store = MoveStore(fleet.control_dsn)
    ids = [uuid.UUID("abcd1234-0000-4000-8000-000000000001"), uuid.UUID("abcd1299-0000-4000-8000-000000000002"),
           uuid.UUID("ef001234-0000-4000-8000-000000000003")]
    with psycopg.connect(fleet.control_dsn, autocommit=True) as conn:
        for i, move_id in enumerate(ids):
            conn.execute("INSERT INTO moves (id, organization_id, source_cell, target_cell, strategy, state, step,"
                         " token, attempt, requested_by, reason) VALUES (%s, %s, 'cell-1', 'cell-2', 'online',"
                         " 'completed', 'unfreeze', 't', 1, 'test', 'prefix')", (move_id, 100 + i))
    assert store.get("ef00").id == ids[2]
    assert store.get("ABCD1234").id == ids[0]  # case does not matter
    with pytest.raises(UnknownMove, match="ambiguous") as exc:
        store.get("abcd12")
    assert str(ids[0]) in exc.value.message and str(ids[1]) in exc.value.message
    for bad, why in (("abc", "at least 4"), ("zzzz1", "not a move id"), ("0000", "no move id starts with")):
        with pytest.raises(UnknownMove) as exc:
            store.get(bad)
        assert why in exc.value.message + (exc.value.hint or "")
    result = migrator(fleet, "status", "ef00", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == str(ids[2])
    result = migrator(fleet, "status", "abcd")
    assert result.returncode == 1 and "ambiguous" in result.stderr and str(ids[1]) in result.stderr
