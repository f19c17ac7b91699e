"""GitLab's blob layouts moved end to end, on Depot (tests/schemas/depot): a sha256 as raw bytea, an md5
as hex, hashed-storage keys computed in SQL (key_sql), content-addressed LFS objects shared by
tenants of one cell, avatars without a checksum column.

Real PostgreSQL, the real Topology Service process, a real Celery worker and the real ``migrator``
command, on cells built by Depot's own SQL (adopted, not provisioned by the migrator).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from migrator.blobs.shared import copying_into, delete_unreferenced, referenced_keys
from migrator.blobs.store import LocalBlobStore, open_store
from migrator.cells.introspect import introspect
from migrator.copy.spec import stabilize_session, table_specs
from migrator.dictionary import load_dictionary
from migrator.fleet.services import wait_worker_ready
from migrator.moves import recovery
from migrator.moves import workflow as wf
from migrator.moves.steps.abort import ABORTED, run_abort
from migrator.moves.store import MoveStore, new_token
from migrator.topology.client import topology_client
from tests.schemas import depot, storefront
from tests.support.checks import leftover_keys, org_checksums
from tests.support.fleet import start_worker
from tests.support.moves import migrator, run_in_process

pytestmark = pytest.mark.integration


def _cells(fleet) -> dict[str, list[int]]:
    """Depot in every cell: two tenants in cell-1, one in each other; every object in its cell's store."""
    block = fleet.settings().topology.sequence_block
    fleet.extra["block"] = block
    return {cell: depot.create_cell(dsn, fleet.blob_dir(cell), id_base=i * block, tenants=2 if i == 0 else 1)
            for i, (cell, dsn) in enumerate(fleet.cell_dsns.items())}


@pytest.fixture
def depot_fleet(fleet, topology_server):
    storefront.adopt_config(fleet.config_path, dictionary=depot.DICTIONARY)
    fleet.extra["tenants"] = _cells(fleet)
    return fleet


@pytest.fixture
def depot_worker(depot_fleet, tmp_path):
    proc = start_worker(depot_fleet.config_path, tmp_path / "worker.log", concurrency=2)
    wait_worker_ready(proc)
    yield proc
    proc.stop()


def _json(result):
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_check_accepts_depot_and_names_each_wrong_declaration(fleet, tmp_path):
    storefront.adopt_config(fleet.config_path, dictionary=depot.DICTIONARY)
    _cells(fleet)
    report = _json(migrator(fleet, "schema", "check", "--cell", "cell-1", "--json"))
    assert report["ok"], report

    wrong = yaml.safe_load(depot.DICTIONARY.read_text())
    tables = wrong["tables"]
    tables["package_files"]["blobs"]["encoding"] = "hex"  # the column is bytea
    tables["uploads"]["blobs"]["algorithm"] = "sha256"  # character(32) cannot hold a sha256 in hex
    tables["lfs_objects_projects"]["blobs"]["key_sql"] = "'lfs/' || object_id"  # no such column
    tables["repository_bundles"]["blobs"]["key_sql"] = "project_id * 2"  # not text
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(wrong, sort_keys=False))
    storefront.adopt_config(fleet.config_path, dictionary=path)
    result = migrator(fleet, "schema", "check", "--cell", "cell-1", "--json")
    assert result.returncode == 1, result.stderr + result.stdout
    problems = {(p["table"], p["kind"]): p for p in json.loads(result.stdout)["cells"]["cell-1"]["problems"]}
    assert set(problems) == {("package_files", "blob_checksum"), ("uploads", "blob_checksum"),
                             ("lfs_objects_projects", "key_sql"), ("repository_bundles", "key_sql")}, problems
    bytea = problems[("package_files", "blob_checksum")]
    assert bytea["message"].startswith("blob checksum column package_files.file_sha256 is bytea, but the "
                                       "dictionary declares encoding: hex")
    assert "declare encoding: raw for package_files.file_sha256" in bytea["hint"]
    md5 = problems[("uploads", "blob_checksum")]
    assert "at most 32 characters, but a sha256 digest in hex takes 64" in md5["message"]
    assert "(algorithm: md5)" in md5["hint"]
    lfs = problems[("lfs_objects_projects", "key_sql")]
    assert lfs["message"].startswith("computed key (key_sql) of blob lfs_object of lfs_objects_projects does not "
                                     "evaluate on the live schema: column \"object_id\" does not exist")
    bundle = problems[("repository_bundles", "key_sql")]
    assert "gives bigint, not text" in bundle["message"] and "::text" in bundle["hint"]


def test_depot_tenant_moves_with_every_blob_layout_and_its_shared_objects_stay(depot_fleet, depot_worker):
    fleet = depot_fleet
    settings = fleet.settings()
    tenants = fleet.extra["tenants"]
    (org, neighbour), (resident,) = tenants["cell-1"], tenants["cell-2"]

    assert all(r["sequences_ok"] for r in _json(migrator(fleet, "cells", "init", "--json")))
    for cell in fleet.cell_dsns:
        _json(migrator(fleet, "orgs", "discover", "--cell", cell, "--register", "--json"))

    src_dir, dst_dir = fleet.blob_dir("cell-1"), fleet.blob_dir("cell-2")
    shared = depot.lfs_key(depot.SHARED_OID)
    resident_copy = (dst_dir / shared).stat()  # cell-2's own tenant references the shared object already
    keys = depot.blob_keys(fleet.cell_dsns["cell-1"], org)
    neighbour_keys = depot.blob_keys(fleet.cell_dsns["cell-1"], neighbour)
    assert shared in keys["lfs_objects_projects"] and shared in neighbour_keys["lfs_objects_projects"]
    before = org_checksums(settings, "cell-1", org)
    before_neighbour = org_checksums(settings, "cell-1", neighbour)

    detail = _json(migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json",
                            "--reason", "blob layouts"))
    assert detail["state"] == "completed", detail.get("error")
    verification = detail["report"]["verification"]
    rows = {t: n for t, n in detail["plan"]["tables"].items()}
    # one verified reference per row with a key: uploads' rows without a path reference nothing
    assert verification["ok"] and verification["blobs_verified"] == sum(
        rows[t] for t in depot.BLOB_TABLES) - rows["uploads"] // 2
    assert org_checksums(settings, "cell-2", org) == before

    # Every object arrived with its bytes; the shared one was found identical and not written again.
    for table, table_keys in keys.items():
        for key in table_keys:
            assert (dst_dir / key).read_bytes() == (src_dir / key).read_bytes(), (table, key)
    after = (dst_dir / shared).stat()
    assert (after.st_ino, after.st_mtime_ns) == (resident_copy.st_ino, resident_copy.st_mtime_ns)
    assert _digest(dst_dir / shared) == depot.SHARED_OID

    cleaned = _json(migrator(fleet, "cleanup", detail["id"], "--force", "--json"))
    assert cleaned["state"] == "cleaned"
    report = cleaned["report"]["cleanup"]
    # The object the neighbour shares stays in cell-1, readable and intact; every other one of org's is gone.
    assert report["blobs_kept_shared"] >= 1
    assert _digest(src_dir / shared) == depot.SHARED_OID
    assert open_store(settings, "cell-1").sha256(shared) == depot.SHARED_OID
    gone = set().union(*keys.values()) - {shared}
    assert gone and not [k for k in gone if (src_dir / k).exists()]
    assert report["blobs_deleted"] == len(gone)
    assert all((src_dir / k).exists() for k in set().union(*neighbour_keys.values()))
    assert org_checksums(settings, "cell-1", neighbour) == before_neighbour
    assert org_checksums(settings, "cell-2", org) == before
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM projects WHERE tenant_id = %s", (org,)).fetchone()[0] == 0
    # cell-2's resident tenant still has its copy of the shared object, and so does the moved tenant.
    assert _digest(dst_dir / shared) == depot.SHARED_OID
    assert resident in tenants["cell-2"]


def test_an_object_other_rows_reference_is_kept_and_deletion_waits_for_copies_into_the_cell(scratch_db, tmp_path):
    blob_dir = tmp_path / "blobs"
    org, other = depot.create_cell(scratch_db, blob_dir, tenants=2)
    dictionary = load_dictionary(depot.DICTIONARY)
    keys = sorted(set().union(*depot.blob_keys(scratch_db, org).values()))
    shared = depot.lfs_key(depot.SHARED_OID)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        stabilize_session(conn)
        specs = table_specs(dictionary, introspect(conn))
        # found through the computed key of another tenant's row; none of org's own rows count
        assert referenced_keys(conn, dictionary, specs, keys, org) == {shared}
        assert referenced_keys(conn, dictionary, specs, keys, other) == set(keys)  # org's rows reference all

    store = LocalBlobStore(blob_dir)
    with psycopg.connect(scratch_db, autocommit=True) as copier, \
            psycopg.connect(scratch_db, autocommit=True) as cleaner, \
            psycopg.connect(scratch_db, autocommit=True) as watch:
        pid = cleaner.info.backend_pid
        result: dict = {}
        with copying_into(copier):  # a move copying objects into this cell holds the lock shared
            worker = threading.Thread(target=lambda: result.update(
                done=delete_unreferenced(cleaner, store, dictionary, specs, keys, org)))
            worker.start()
            deadline = time.monotonic() + 60  # a failsafe, not a threshold: the wait is seen in pg_locks
            while not watch.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s "
                                    "AND NOT granted", (pid,)).fetchone()[0]:
                assert time.monotonic() < deadline and worker.is_alive(), result
                time.sleep(0.05)
            assert all((blob_dir / k).exists() for k in keys)  # nothing deleted while the copy runs
        worker.join(60)
    assert result["done"] == (len(keys) - 1, 1)
    assert [k for k in keys if (blob_dir / k).exists()] == [shared]
    assert hashlib.sha256((blob_dir / shared).read_bytes()).hexdigest() == depot.SHARED_OID


def test_abort_keeps_the_objects_the_targets_tenants_reference(depot_fleet):
    fleet = depot_fleet
    settings = fleet.settings()
    org = fleet.extra["tenants"]["cell-1"][0]
    (resident,) = fleet.extra["tenants"]["cell-2"]
    _json(migrator(fleet, "cells", "init", "--json"))
    for cell in fleet.cell_dsns:
        _json(migrator(fleet, "orgs", "discover", "--cell", cell, "--register", "--json"))
    dst_dir = fleet.blob_dir("cell-2")
    shared = depot.lfs_key(depot.SHARED_OID)
    resident_copy = (dst_dir / shared).stat()
    before_resident = org_checksums(settings, "cell-2", resident)
    own = set().union(*depot.blob_keys(fleet.cell_dsns["cell-1"], org).values()) - {shared}

    store = MoveStore(settings.control_dsn)
    move = store.create(organization_id=org, source="cell-1", target="cell-2", requested_by="test",
                        reason="abort after copy_blobs", strategy="frozen")
    store.start(move.id, move.token)
    run_in_process(settings, move, wf.FROZEN[: wf.FROZEN.index("copy_blobs") + 1])
    assert all((dst_dir / k).exists() for k in own)

    # What `migrator abort` does, in this process: fence the attempt out, then the abort task's work.
    move = store.get(move.id)
    token = new_token()
    recovery.take_over_freeze(topology_client(settings), move, token, actor="test", reason="abort")
    assert store.rotate_token(move.id, move.token, token, state=wf.ABORTING) is not None
    assert run_abort(settings, move.id, token, "test") == ABORTED

    report = store.get(move.id).report["abort"]
    assert report["blobs_deleted"] == len(own) and report["blobs_kept_shared"] >= 1
    assert not [k for k in own if (dst_dir / k).exists()]
    after = (dst_dir / shared).stat()  # the resident tenant's object: never rewritten, never deleted
    assert (after.st_ino, after.st_mtime_ns) == (resident_copy.st_ino, resident_copy.st_mtime_ns)
    assert open_store(settings, "cell-2").sha256(shared) == depot.SHARED_OID
    assert org_checksums(settings, "cell-2", resident) == before_resident
    assert leftover_keys(settings, "cell-1", "cell-2", org) == {}
