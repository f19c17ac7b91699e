"""Metrics after a real move (worker multiprocess endpoint + control DB exporter) and Flower."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from migrator.fleet.processes import BIN, Process, free_port, wait_for
from migrator.fleet.services import child_env
from migrator.sample.seed import seed_organizations
from tests.support.http import get, sample
from tests.support.listeners import listening_on
from tests.support.moves import migrator

pytestmark = pytest.mark.integration


@pytest.fixture
def observed(provisioned, tmp_path):
    """The fleet's config with a worker metrics port and Flower credentials, a worker and Flower."""
    from migrator.fleet.services import wait_worker_ready
    from tests.support.fleet import start_worker

    cfg = yaml.safe_load(provisioned.config_path.read_text())
    worker_port, flower_port = free_port(), free_port()
    cfg["observability"] = {"worker_metrics_port": worker_port, "flower_basic_auth": "ops:s3cret-pw",
                            "log_format": "json"}
    provisioned.config_path.write_text(yaml.safe_dump(cfg))
    worker = start_worker(provisioned.config_path, tmp_path / "worker.log", beat_schedule=tmp_path / "b")
    wait_worker_ready(worker)
    flower = Process([str(BIN / "celery"), "-A", "tasks", "flower", f"--port={flower_port}",
                     "--address=127.0.0.1"], child_env(provisioned.config_path), tmp_path / "flower.log").start()
    wait_for(lambda: get(f"http://127.0.0.1:{flower_port}/api/workers")[0] in (200, 401), timeout=30,
             what="flower")
    yield provisioned, worker_port, flower_port, worker
    flower.stop()
    worker.stop()


def test_metrics_logs_and_flower_after_a_move(observed, tmp_path):
    fleet, worker_port, flower_port, worker = observed
    settings = fleet.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=2000, blobs=4, skew=False, seed=5)
    result = migrator(fleet, "move", "--org", str(org.organization_id), "--to", "cell-2", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    move = json.loads(result.stdout)

    status, text = get(f"http://127.0.0.1:{worker_port}/metrics")
    assert status == 200
    assert listening_on(worker_port) == {"127.0.0.1"}  # observability.worker_metrics_addr's default
    assert sample(text, "migrator_rows_copied_total") == org.rows
    assert sample(text, "migrator_bytes_copied_total") > 0
    assert sample(text, "migrator_blob_bytes_copied_total") > 0
    assert sample(text, "migrator_write_window_seconds_count") == 1
    assert sample(text, "migrator_step_duration_seconds_count", step="copy_rows", kind="unit") >= 1
    assert sample(text, "migrator_moves_finished_total", state="completed") == 1

    # The control-database exporter: moves by state.
    port = free_port()
    exporter = Process([str(BIN / "migrator"), "metrics", "serve", "--port", str(port), "--addr", "127.0.0.1"],
                       child_env(fleet.config_path), tmp_path / "exporter.log").start()
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/metrics")[0] == 200, timeout=20, what="exporter")
        text = get(f"http://127.0.0.1:{port}/metrics")[1]
        assert sample(text, "migrator_moves", state="completed") == 1
        assert sample(text, "migrator_control_database_up") == 1
    finally:
        exporter.stop()

    # Structured logs: JSON lines naming the move and its step.
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert any(rec.get("move_id") == move["id"] and rec.get("step") for rec in lines)

    # Flower: the move's tasks, readable with the credentials, 401 without.
    assert get(f"http://127.0.0.1:{flower_port}/api/tasks")[0] == 401
    deadline = time.monotonic() + 20
    tasks = {}
    while time.monotonic() < deadline:
        status, body = get(f"http://127.0.0.1:{flower_port}/api/tasks", auth=("ops", "s3cret-pw"))
        assert status == 200
        tasks = json.loads(body)
        if any(t.get("name") == "migrator.unfreeze" for t in tasks.values()):
            break
        time.sleep(0.5)
    names = {t.get("name") for t in tasks.values()}
    assert {"migrator.preflight", "migrator.copy_rows_unit", "migrator.flip", "migrator.unfreeze"} <= names
    flip = next(t for t in tasks.values() if t.get("name") == "migrator.flip")
    assert move["id"] in str(flip.get("kwargs")) and str(org.organization_id) in str(flip.get("kwargs"))
