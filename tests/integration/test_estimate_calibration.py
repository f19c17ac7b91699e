"""The estimate calibrates from what real moves measured (``move_throughput`` in the control database)."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from migrator.fleet.processes import BIN
from migrator.fleet.services import child_env
from migrator.sample.seed import seed_organizations

pytestmark = pytest.mark.integration


def migrator(fleet, *args, timeout=300):
    return subprocess.run([str(BIN / "migrator"), *args], env=child_env(fleet.config_path), capture_output=True,
                          text=True, timeout=timeout)


def test_a_move_records_its_throughput_and_the_next_dry_run_is_calibrated(provisioned, worker):
    fleet, settings = provisioned, provisioned.settings()
    moved, nxt = seed_organizations(settings, "cell-1", orgs=2, rows=40_000, blobs=6, skew=False, seed=11)

    before = migrator(fleet, "move", "--org", str(nxt.organization_id), "--to", "cell-2", "--dry-run")
    assert before.returncode == 0, before.stderr + before.stdout
    assert "estimate from config defaults" in before.stdout

    result = migrator(fleet, "move", "--org", str(moved.organization_id), "--to", "cell-2", "--wait", "--json",
                      "--strategy", "frozen", "--reason", "calibration")
    assert result.returncode == 0, result.stderr + result.stdout
    detail = json.loads(result.stdout)
    assert detail["state"] == "completed"
    assert detail["plan"]["calibration"]["moves"] == 0  # its own plan was made before anything was measured

    with psycopg.connect(settings.control_dsn) as conn:
        rows = conn.execute("SELECT kind, table_name, rows, copy_s, verify_s, strategy, source_cell, target_cell"
                            " FROM move_throughput WHERE move_id = %s", (detail["id"],)).fetchall()
    by_table = {(kind, table): (n, copy_s, verify_s) for kind, table, n, copy_s, verify_s, *_ in rows}
    assert sum(n for (kind, _), (n, _, _) in by_table.items() if kind == "rows") == moved.rows
    assert all(r[5:] == ("frozen", "cell-1", "cell-2") for r in rows)
    assert all(copy_s > 0 and verify_s is not None and verify_s > 0
               for (kind, _), (n, copy_s, verify_s) in by_table.items() if kind == "rows" and n)
    assert any(kind == "blobs" for kind, _ in by_table)
    # The tables' shares add up to the steps' wall time the report recorded.
    report = detail["report"]
    copy_total = sum(c for (kind, _), (_, c, _) in by_table.items() if kind == "rows")
    assert copy_total == pytest.approx(report["copy_rows"]["seconds"], rel=0.01, abs=0.01)
    verify_total = sum(v or 0 for _, (_, _, v) in by_table.items())
    assert verify_total == pytest.approx(report["verification"]["seconds"], rel=0.01, abs=0.01)

    after = migrator(fleet, "move", "--org", str(nxt.organization_id), "--to", "cell-2", "--dry-run")
    assert after.returncode == 0, after.stderr + after.stdout
    assert "estimate calibrated from 1 recent move" in after.stdout
    plan = json.loads(migrator(fleet, "move", "--org", str(nxt.organization_id), "--to", "cell-2", "--dry-run",
                               "--strategy", "frozen", "--json").stdout)
    cal = plan["calibration"]
    assert cal["moves"] == 1 and cal["fixed_costs"] == "measured"
    assert cal["tables"]["config"] == 0 and cal["tables"]["table"] >= 1

    # status MOVE shows the plan with the estimate's basis.
    status = migrator(fleet, "status", detail["id"])
    assert status.returncode == 0, status.stderr
    assert "estimate from config defaults" in status.stdout
