"""Moves with S3 blob stores, end to end: real PostgreSQL, Redis, Celery workers and a real S3-compatible
server process (moto_server over HTTP on loopback). Bucket to bucket (server-side), S3 -> local,
local -> S3 with a multipart object, and units on two workers that share no path."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import psycopg
import pytest
import yaml

from migrator.blobs.copier import blob_units, iter_refs
from migrator.blobs.store import open_store
from migrator.cells.introspect import introspect
from migrator.copy.spec import table_specs
from migrator.dictionary import load_dictionary
from migrator.fleet.processes import BIN, Process
from migrator.fleet.s3_server import s3_blobs, use_test_credentials
from migrator.fleet.services import child_env, wait_worker_ready
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.support.checks import org_checksums
from tests.support.moves import migrator

pytestmark = pytest.mark.integration

MB = 1024 * 1024


@pytest.fixture
def fleet(fleet_factory, s3_server, monkeypatch):
    """Overrides conftest's fleet: cell-1 and cell-2 keep their blobs in two buckets of one S3 endpoint,
    cell-3 in a local directory."""
    use_test_credentials(monkeypatch)
    tag = uuid.uuid4().hex[:10]
    buckets = {"cell-1": f"cell-1-{tag}", "cell-2": f"cell-2-{tag}"}
    s3_server.create_buckets(*buckets.values())
    return fleet_factory(overrides={"moves": {"blob_workers": 4}},
                         blobs={cell: s3_blobs(s3_server, bucket) for cell, bucket in buckets.items()})


def blob_refs(settings, cell: str, org: int) -> list:
    """Every object the organization's rows in ``cell`` reference."""
    dictionary = load_dictionary(settings.dictionary_file())
    out = []
    with psycopg.connect(settings.cell(cell).dsn, autocommit=True) as conn:
        specs = table_specs(dictionary, introspect(conn))
        for table, blob in blob_units(dictionary):
            for refs in iter_refs(conn, specs[table], blob, org, after=None, hi=None, batch=1000):
                out += refs
    return out


def assert_blobs(settings, cell: str, refs: list) -> None:
    """Every object is in the cell's store, its bytes (read back, not a stored checksum) as the row says."""
    store = open_store(settings, cell)
    for ref in refs:
        assert store.read_sha256(ref.key) == ref.checksum, f"{ref.key} in {cell}"


def add_large_upload(settings, cell: str, org: int, size: int) -> str:
    """Make one of the organization's uploads a large object (a multipart upload with the tests' sizes)."""
    data = os.urandom(size)
    key = f"org-{org}/uploads/large-{uuid.uuid4().hex}"
    open_store(settings, cell).put_bytes(key, data)
    with psycopg.connect(settings.cell(cell).dsn, autocommit=True) as conn:
        conn.execute("UPDATE uploads SET file_key = %s, sha256 = %s, size = %s WHERE id = (SELECT u.id FROM uploads u "
                     "JOIN projects p ON p.id = u.project_id JOIN namespaces n ON n.id = p.namespace_id "
                     "WHERE n.organization_id = %s ORDER BY u.id LIMIT 1)",
                     (key, hashlib.sha256(data).hexdigest(), size, org))
    return key


def move(fleet, org: int, to: str) -> dict:
    result = migrator(fleet, "move", "--org", str(org), "--to", to, "--wait", "--json", "--strategy", "frozen")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed" and detail["report"]["verification"]["ok"] is True
    return detail


def copy_results(settings, move_id) -> dict:
    """The copy_blobs units' results (BlobCopyStats), summed."""
    total: dict = {}
    for unit in MoveStore(settings.control_dsn).units(move_id, "copy_blobs"):
        for k, v in (unit.result or {}).items():
            total[k] = total.get(k, 0) + v
    return total


def test_moves_between_buckets_and_across_store_kinds(provisioned, worker, s3_server):
    settings = provisioned.settings()
    [seeded] = seed_organizations(settings, "cell-1", orgs=1, rows=300, blobs=6, skew=False, seed=31)
    org = seeded.organization_id
    large = add_large_upload(settings, "cell-1", org, 12 * MB)
    refs = blob_refs(settings, "cell-1", org)
    before = org_checksums(settings, "cell-1", org)

    # 1. Bucket to bucket behind one endpoint: copied by the server, no object byte through the worker.
    first = move(provisioned, org, "cell-2")
    got = copy_results(settings, first["id"])
    assert got["blobs"] == got["copied"] == got["server_side"] == len(refs)
    assert got["bytes_read"] == 0
    assert_blobs(settings, "cell-2", refs)
    assert org_checksums(settings, "cell-2", org) == before
    # The source copy goes (rows and objects): the bucket of cell-1 no longer has them.
    cleaned = migrator(provisioned, "cleanup", first["id"], "--force")
    assert cleaned.returncode == 0, cleaned.stderr
    source = open_store(settings, "cell-1")
    assert all(source.stat(ref.key) is None for ref in refs)

    # 2. S3 -> local: streamed through the worker.
    second = move(provisioned, org, "cell-3")
    got = copy_results(settings, second["id"])
    assert got["copied"] == len(refs) and got["bytes_read"] == got["bytes_written"] == sum(r.size for r in refs)
    assert_blobs(settings, "cell-3", refs)

    # 3. local -> S3: the large object in parts (transfer manager), into the bucket emptied by the cleanup.
    third = move(provisioned, org, "cell-1")
    assert copy_results(settings, third["id"])["copied"] == len(refs)
    assert_blobs(settings, "cell-1", refs)
    etag = source.client.head_object(Bucket=source.bucket, Key=large)["ETag"].strip('"')
    assert etag.endswith("-3"), f"the large object was not uploaded in parts: {etag}"
    assert source.client.list_multipart_uploads(Bucket=source.bucket).get("Uploads", []) == []
    assert org_checksums(settings, "cell-1", org) == before


def test_units_on_two_workers_that_share_no_path(provisioned, s3_server, tmp_path):
    """One worker takes the control and row queues, the other the blob queue; each runs in a directory of
    its own with its own copy of the config: blobs written by one are verified by the other, which only
    works because nothing of a blob store is host-local. Both cells stream (no server-side copy)."""
    settings = provisioned.settings()
    config = yaml.safe_load(provisioned.config_path.read_text())
    config["cells"]["cell-2"]["blobs"]["server_side_copy"] = False
    prefix = config["celery"]["queue_prefix"]
    workers = []
    try:
        for name, queues in (("a", f"{prefix}control,{prefix}rows"), ("b", f"{prefix}blobs")):
            home = tmp_path / f"host-{name}"
            home.mkdir()
            (home / "migrator.yaml").write_text(yaml.safe_dump(config))
            proc = Process([str(BIN / "celery"), "-A", "tasks", "worker", "--loglevel=INFO", "--concurrency=2",
                           "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-Q", queues],
                           child_env(home / "migrator.yaml"), home / "worker.log", cwd=home).start()
            workers.append(proc)
        for proc in workers:
            wait_worker_ready(proc)
        [seeded] = seed_organizations(settings, "cell-1", orgs=1, rows=300, blobs=9, skew=False, seed=32)
        org = seeded.organization_id
        refs = blob_refs(settings, "cell-1", org)
        detail = move(provisioned, org, "cell-2")
        got = copy_results(settings, detail["id"])
        assert got["copied"] == len(refs) and got["server_side"] == 0 and got["bytes_read"] > 0
        assert_blobs(settings, "cell-2", refs)
        a, b = (proc.log() for proc in workers)
        assert "migrator.copy_blobs_unit[" in b and "migrator.copy_blobs_unit[" not in a
        assert "migrator.verify_unit[" in a and "migrator.verify_unit[" not in b
    finally:
        for proc in workers:
            proc.stop()
