"""A real move: real PostgreSQL, a private real Redis, a real Celery worker process."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from migrator.blobs.store import open_store
from migrator.fleet.processes import BIN
from migrator.fleet.services import child_env
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.support.checks import duplicate_keys, org_checksums

pytestmark = pytest.mark.integration


def migrator(fleet, *args, timeout=300):
    return subprocess.run([str(BIN / "migrator"), *args], env=child_env(fleet.config_path), capture_output=True,
                          text=True, timeout=timeout)


def _project_of(conn, org):
    return conn.execute("SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
                        "WHERE n.organization_id = %s ORDER BY p.id LIMIT 1", (org,)).fetchone()[0]


@pytest.fixture
def seeded(provisioned):
    settings = provisioned.settings()
    src = seed_organizations(settings, "cell-1", orgs=3, rows=3000, blobs=12, skew=False, seed=7)
    other = seed_organizations(settings, "cell-2", orgs=1, rows=1000, blobs=3, skew=False, seed=8)
    return provisioned, settings, src, other


def test_organization_moves_and_verifies(seeded, worker):
    fleet, settings, src, other = seeded
    org = src[0].organization_id
    bystanders = [(o.organization_id, "cell-1") for o in src[1:]] + [(o.organization_id, "cell-2") for o in other]
    before_source = org_checksums(settings, "cell-1", org)
    before_bystanders = {o: org_checksums(settings, c, o) for o, c in bystanders}

    result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json", "--reason", "e2e")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed"
    assert detail["report"]["verification"]["ok"] is True

    # Target holds exactly the source's rows; the source copy is unchanged.
    assert org_checksums(settings, "cell-2", org) == before_source
    assert org_checksums(settings, "cell-1", org) == before_source
    assert sum(r for r, _ in before_source.values()) == src[0].rows
    assert not duplicate_keys(settings, "cell-2")
    # Bystanders untouched in both cells.
    assert {o: org_checksums(settings, c, o) for o, c in bystanders} == before_bystanders

    # Route flipped exactly once.
    topo = topology_client(settings)
    route = topo.classify(org)
    assert route.cell == "cell-2" and route.state == "active"
    assert [h["action"] for h in topo.history(org)].count("flip") == 1

    # Blobs: every referenced object is in the target store with its checksum.
    target_store = open_store(settings, "cell-2")
    with psycopg.connect(fleet.cell_dsns["cell-2"]) as conn:
        refs = conn.execute("SELECT u.file_key, u.sha256 FROM uploads u JOIN projects p ON p.id = u.project_id "
                            "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = %s",
                            (org,)).fetchall()
    assert refs
    for key, sha in refs:
        assert target_store.sha256(key) == sha

    # Writable on the target, read-only on the source.
    with psycopg.connect(fleet.cell_dsns["cell-2"], autocommit=True) as conn:
        conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note) VALUES (%s, 'Issue', 1, 'hi')",
                     (_project_of(conn, org),))
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note) "
                         "VALUES (%s, 'Issue', 1, 'lost?')", (_project_of(conn, org),))
        assert err.value.sqlstate == "MG001"

    status = migrator(fleet, "status", detail["id"], "--json")
    history = json.loads(status.stdout)["history"]
    events = [(h["step"], h["event"]) for h in history]
    for step in ("preflight", "freeze", "drain", "copy_rows", "copy_blobs", "verify", "flip", "unfreeze"):
        assert (step, "finished") in events
