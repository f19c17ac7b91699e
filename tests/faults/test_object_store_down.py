"""The object store stops in the middle of copy_blobs: the move fails resumably; resumed once the store is
back, it completes without writing again any object that was finished before the stop.

Everything is real: moto_server is a process, stopped (SIGTERM) and started again on the same port with
the objects it had (migrator/fleet/s3_server.py); the worker is a Celery process. The test holds the move at the
moment it acts (locks it takes and releases itself), so it never races the worker:

1. a worker for the control and row queues only: the move stops at copy_blobs with its units queued;
2. the source's ``uploads`` table is locked (ACCESS EXCLUSIVE): a blob worker copies the two other units'
   objects while the uploads unit waits to read its first batch;
3. the uploads unit's row in the control database is locked: once the unit has copied its first batch
   (two objects) its checkpoint waits; then the object store is stopped and the row released.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from migrator.fleet.processes import wait_for
from migrator.fleet.s3_server import MotoServer, s3_blobs, use_test_credentials
from migrator.sample.seed import seed_organizations
from tests.faults.conftest import fault_fleet
from tests.integration.test_s3_moves import assert_blobs, blob_refs
from tests.support.checks import org_checksums
from tests.support.moves import migrator, wait_move

pytestmark = pytest.mark.faults


@pytest.fixture
def s3_fault_fleet(tmp_path, monkeypatch):
    use_test_credentials(monkeypatch)
    server = MotoServer(tmp_path / "moto", record=True).start()
    tag = uuid.uuid4().hex[:10]
    buckets = {"cell-1": f"src-{tag}", "cell-2": f"dst-{tag}"}
    server.create_buckets(*buckets.values())
    try:
        # One object at a time, two per checkpoint; one task retry, so an outage fails the move in seconds.
        with fault_fleet(tmp_path, monkeypatch, cells=2, blobs={c: s3_blobs(server, b) for c, b in buckets.items()},
                         overrides={"moves": {"blob_batch": 2, "blob_workers": 1, "task_retries": 1,
                                              "lease_ttl_s": 60, "stale_after_s": 120}}) as ff:
            yield ff, server, buckets
    finally:
        server.stop()


def test_object_store_stopped_mid_copy_fails_resumably_and_resume_copies_nothing_twice(s3_fault_fleet, tmp_path):
    ff, server, buckets = s3_fault_fleet
    fleet, settings = ff.fleet, ff.settings
    [seeded] = seed_organizations(settings, "cell-1", orgs=1, rows=300, blobs=12, skew=False, seed=41)
    org = seeded.organization_id
    refs = blob_refs(settings, "cell-1", org)
    uploads = [r for r in refs if r.table == "uploads"]
    assert len(uploads) >= 4
    before = org_checksums(settings, "cell-1", org)
    prefix = settings.celery.queue_prefix
    target = server.client()

    def present() -> set[str]:
        return {r.key for r in refs if _exists(target, buckets["cell-2"], r.key)}

    # 1. The move runs up to copy_blobs, whose units wait in the blob queue.
    ff.worker(concurrency=2, beat=False, queues=f"{prefix}control,{prefix}rows")
    started = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--strategy", "frozen", "--json")
    assert started.returncode == 0, started.stderr
    move_id = json.loads(started.stdout)["id"]
    wait_move(settings, move_id, timeout=120, predicate=lambda m, s: len(s.units(m.id, "copy_blobs")) == 3)

    unit = "uploads.file_key"
    with (psycopg.connect(settings.cell("cell-1").dsn) as source_lock,
          psycopg.connect(settings.control_dsn) as unit_lock):
        # 2. The uploads unit cannot read its first batch; the other two units copy everything.
        source_lock.execute("LOCK TABLE uploads IN ACCESS EXCLUSIVE MODE")
        ff.worker(concurrency=3, beat=False, queues=f"{prefix}blobs")

        def others_done_uploads_claimed(move, s) -> bool:
            units = {u.unit: u for u in s.units(move.id, "copy_blobs")}
            return (all(u.state == "done" for name, u in units.items() if name != unit)
                    and units[unit].lease_owner is not None)

        wait_move(settings, move_id, timeout=120, predicate=others_done_uploads_claimed)
        # 3. Its checkpoint will wait on the unit's row; let it read and copy its first batch.
        unit_lock.execute("SELECT 1 FROM move_units WHERE move_id = %s AND step = 'copy_blobs' AND unit = %s "
                          "FOR UPDATE", (move_id, unit))
        source_lock.rollback()
        first_batch = {r.key for r in uploads[:2]}
        wait_for(lambda: first_batch <= present(), timeout=60, what="the first batch of uploads in the target")
        finished = present()
        assert finished == {r.key for r in refs if r.table != "uploads"} | first_batch
        server.stop()
        unit_lock.rollback()  # the checkpoint of the first batch commits; the next batch meets the stopped store

    failed = wait_move(settings, move_id, timeout=120)
    assert failed.state == "failed" and failed.error_code == "blob_store_unavailable", failed.error
    assert buckets["cell-2"] in failed.error and "object-store-down.md" in failed.error
    with psycopg.connect(settings.cell("cell-1").dsn, autocommit=True) as conn:  # the source is writable again
        conn.execute("UPDATE organizations SET name = name WHERE id = %s", (org,))

    server.restart()  # the same port, the objects it had
    assert present() == finished
    since = server.recorded_lines()
    resumed = migrator(fleet, "resume", move_id)
    assert resumed.returncode == 0, resumed.stderr
    done = wait_move(settings, move_id, timeout=120)
    assert done.state == "completed", done.error
    assert done.report["verification"]["ok"] is True
    assert_blobs(settings, "cell-2", refs)
    assert org_checksums(settings, "cell-2", org) == before
    written = [key for _, key in server.writes(buckets["cell-2"], since=since)]
    assert not set(written) & finished, "objects finished before the outage were written again"
    assert sorted(written) == sorted(r.key for r in refs if r.key not in finished)  # each missing one, once


def _exists(client, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False
