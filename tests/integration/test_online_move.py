"""The online strategy: copy while writable, catch up from the change log, freeze only for the delta."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

from migrator.fleet.services import child_env
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.faults.invariants import blob_violations
from tests.faults.writer import lost_writes
from tests.support import ROOT
from tests.support.checks import duplicate_keys, org_checksums
from tests.support.moves import migrator

pytestmark = pytest.mark.integration


def test_online_move_under_writes_loses_nothing(provisioned, worker, tmp_path):
    settings = provisioned.settings()
    [org, other] = [o.organization_id for o in
                    seed_organizations(settings, "cell-1", orgs=2, rows=6000, blobs=6, skew=False, seed=21)]
    logs = {org: tmp_path / "org.jsonl", other: tmp_path / "other.jsonl"}
    env = child_env(provisioned.config_path)
    writers = [subprocess.Popen([sys.executable, "-m", "tests.faults.writer", "--org", str(o), "--seconds", "14",
                                 "--out", str(path), "--seed", str(i), "--rate", "100"], env=env, cwd=ROOT)
               for i, (o, path) in enumerate(logs.items())]
    time.sleep(1.5)
    result = migrator(provisioned, "move", "--org", str(org), "--to", "cell-2", "--strategy", "online", "--wait",
                      "--json")
    for w in writers:
        w.wait(60)
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["strategy"] == "online" and detail["state"] == "completed"
    report = detail["report"]
    assert report["verification"]["ok"]
    assert report["catch_up"]["rounds"] >= 1 and report["catch_up"]["keys_applied"] > 0

    for o, path in logs.items():
        cell = topology_client(settings).classify(o).cell
        lost, counts = lost_writes(settings, cell, str(path))
        assert lost == [], lost
        assert counts["errors"] == 0
        if o == other:
            assert counts["rejected"] == 0
    assert topology_client(settings).classify(org).cell == "cell-2"
    assert not duplicate_keys(settings, "cell-2")
    assert blob_violations(settings, "cell-2", org) == []
    # The capture is gone with the move: no trigger state, no log left to grow.
    with psycopg.connect(provisioned.cell_dsns["cell-1"]) as conn:
        assert conn.execute("SELECT count(*) FROM migrator.captures").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM migrator.change_log").fetchone()[0] == 0
    history = [h["action"] for h in topology_client(settings).history(org)]
    assert history.count("flip") == 1


def test_online_move_without_writes_matches_checksums(provisioned, worker):
    settings = provisioned.settings()
    [o] = seed_organizations(settings, "cell-1", orgs=1, rows=2000, blobs=3, skew=False, seed=22)
    before = org_checksums(settings, "cell-1", o.organization_id)
    result = migrator(provisioned, "move", "--org", str(o.organization_id), "--to", "cell-3", "--strategy",
                      "online", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    assert org_checksums(settings, "cell-3", o.organization_id) == before
