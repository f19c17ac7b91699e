"""deploy/Procfile brings up a whole system with honcho, a move completes on it, and stopping honcho
leaves no process behind.

Against a test fleet (fresh databases, a private redis-server): the env file is deploy/.env.example
with the ports and the config changed. Every process honcho starts inherits a marker variable, so
the processes left after the stop are found in /proc whatever their parent.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from migrator.fleet.processes import BIN, free_port, wait_for
from migrator.fleet.services import RedisServer, child_env
from tests.support import ROOT
from tests.support.edge import haproxy_binary, http_get
from tests.support.fleet import fleet_certs, make_fleet
from tests.support.http import get, sample
from tests.support.moves import migrator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROCFILE = ROOT / "deploy" / "Procfile"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
TOKEN = "procfile-test-token-0123456789"
FLOWER_AUTH = ("ops", "procfile-pw")
EXPECTED = {"topology", "api", "worker_control", "worker_rows", "worker_blobs", "beat", "flower", "exporter",
            "app_cell1", "app_cell2", "app_cell3", "router", "router_sync"}


def _env_file(path: Path, overrides: dict[str, str]) -> dict[str, str]:
    """deploy/.env.example with ``overrides``: every key the example sets must still be set."""
    keys = []
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0] if "=" in line and not line.startswith("#") else None
        if key in overrides:
            line = f"{key}={overrides[key]}"
        if key:
            keys.append(key)
        lines.append(line)
    missing = set(overrides) - set(keys)
    lines += [f"{k}={overrides[k]}" for k in sorted(missing)]
    path.write_text("\n".join(lines) + "\n")
    return dict(overrides)


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (all descendants of honcho)."""
    needle = f"CM_DEPLOY_TEST_MARK={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def _stat_state(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def test_procfile_lists_the_processes():
    names = {line.split(":", 1)[0] for line in PROCFILE.read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert names == EXPECTED


@pytest.mark.skipif(not (BIN / "honcho").exists(), reason="honcho is not installed in this virtualenv "
                    "(pip install honcho; the dev extras include it)")
def test_honcho_runs_the_system_and_a_move_completes(tmp_path):
    if haproxy_binary()[0] is None:
        pytest.skip(f"the Procfile's router needs haproxy ({haproxy_binary()[1]})")
    redis = RedisServer(tmp_path / "redis").start()
    fleet = make_fleet(tmp_path / "fleet", broker_url=redis.url)
    # The edge: each cell's sample application and the router on free ports, its files in the test's folder.
    config = yaml.safe_load(fleet.config_path.read_text())
    for cell in config["cells"].values():
        cell["app_servers"] = [f"127.0.0.1:{free_port()}"]
    router_port, edge = free_port(), tmp_path / "edge"
    config["router"] = {"listen": f"127.0.0.1:{router_port}", "map_dir": str(edge),
                        "haproxy_config": str(edge / "haproxy.cfg"), "admin_sockets": [str(edge / "admin.sock")]}
    fleet.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    marker = uuid.uuid4().hex
    honcho = None
    log_path = tmp_path / "honcho.log"
    try:
        ports = {name: free_port() for name in ("api", "flower", "exporter", "control", "rows", "blobs", "sync")}
        _env_file(tmp_path / "deploy.env", {
            "MIGRATOR_CONFIG": str(fleet.config_path),
            "TOPOLOGY_CERTS": str(fleet_certs()["ca"].parent),  # the API and the workers call as movers
            "MIGRATOR_API__TOKEN": TOKEN,
            "MIGRATOR_API__LISTEN_PORT": str(ports["api"]),
            "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
            "FLOWER_PORT": str(ports["flower"]),
            "EXPORTER_PORT": str(ports["exporter"]),
            "WORKER_CONTROL_METRICS_PORT": str(ports["control"]),
            "WORKER_ROWS_METRICS_PORT": str(ports["rows"]),
            "WORKER_BLOBS_METRICS_PORT": str(ports["blobs"]),
            "WORKER_ROWS_CONCURRENCY": "2",
            "BEAT_SCHEDULE": str(tmp_path / "celerybeat-schedule"),
            "ROUTER_SYNC_METRICS_PORT": str(ports["sync"]),
        })
        env = child_env(fleet.config_path)
        env["CM_DEPLOY_TEST_MARK"] = marker
        with open(log_path, "wb") as log:
            honcho = subprocess.Popen([str(BIN / "honcho"), "start", "-f", str(PROCFILE), "-e",
                                       str(tmp_path / "deploy.env"), "--no-colour"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def up(url, ok=(200,), headers=None):
            def check():
                if honcho.poll() is not None:
                    raise RuntimeError(f"honcho exited {honcho.returncode}:\n{log_path.read_text()[-4000:]}")
                return get(url, headers)[0] in ok
            return check

        host, port = fleet.topology_listen.rsplit(":", 1)
        wait_for(up(f"http://127.0.0.1:{ports['api']}/healthz"), timeout=40, what="the API's /healthz")
        for queue in ("control", "rows", "blobs"):
            wait_for(up(f"http://127.0.0.1:{ports[queue]}/metrics"), timeout=40, what=f"worker_{queue} metrics")
        wait_for(up(f"http://127.0.0.1:{ports['exporter']}/metrics"), timeout=60, what="the exporter")
        wait_for(up(f"http://127.0.0.1:{ports['flower']}/api/workers", ok=(401,)), timeout=30, what="flower")
        wait_for(lambda: "beat: Starting" in log_path.read_text(), timeout=60, what="celery beat")
        wait_for(up(f"http://127.0.0.1:{router_port}/_migrator/healthz"), timeout=40, what="the router")
        wait_for(up(f"http://127.0.0.1:{ports['sync']}/metrics"), timeout=40, what="router sync's metrics")

        # The operator's commands, as in docs/deploy.md.
        result = migrator(fleet, "cells", "init", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        result = migrator(fleet, "seed", "--cell", "cell-1", "--orgs", "1", "--rows", "1500", "--blobs", "6",
                          "--no-skew", "--seed", "3", "--json", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        [org] = json.loads(result.stdout)["organizations"]
        result = migrator(fleet, "move", "--org", str(org["organization_id"]), "--to", "cell-2", "--wait", "--json",
                          "--reason", "deploy/Procfile test", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr + log_path.read_text()[-4000:]
        move = json.loads(result.stdout)
        assert move["state"] == "completed"
        # The router followed the flip: the organization's requests reach cell-2's application.
        org_header = {"X-Organization-Id": str(org["organization_id"])}
        wait_for(lambda: http_get(router_port, "/_migrator/route", org_header)[2] == "cell-2 active", timeout=30,
                 what="the router to route the organization to cell-2")
        status, headers, _ = http_get(router_port, f"/orgs/{org['organization_id']}/notes", org_header)
        assert (status, headers["x-cell"]) == (200, "cell-2")

        # Each queue was served by its own worker: row units on rows, blob units on blobs.
        metrics = {q: get(f"http://127.0.0.1:{ports[q]}/metrics")[1] for q in ("control", "rows", "blobs")}
        assert sample(metrics["rows"], "migrator_rows_copied_total") == org["rows"]
        assert sample(metrics["control"], "migrator_rows_copied_total") == 0
        assert sample(metrics["blobs"], "migrator_blob_bytes_copied_total") > 0
        assert sample(metrics["control"], "migrator_steps_total", step="flip", outcome="done") >= 1 or \
            sample(metrics["control"], "migrator_step_duration_seconds_count", step="flip") >= 1
        exporter = get(f"http://127.0.0.1:{ports['exporter']}/metrics")[1]
        assert sample(exporter, "migrator_moves", state="completed") == 1
        status, body = get(f"http://127.0.0.1:{ports['api']}/v1/moves/{move['id']}",
                            {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["state"] == "completed"
        auth = "Basic " + base64.b64encode(":".join(FLOWER_AUTH).encode()).decode()
        def flower_tasks():
            status, body = get(f"http://127.0.0.1:{ports['flower']}/api/tasks", {"Authorization": auth})
            assert status == 200, body
            tasks = {t.get("name"): str(t.get("worker")).split("@")[0] for t in json.loads(body).values()}
            return tasks if "migrator.unfreeze" in tasks else None

        ran_on = wait_for(flower_tasks, timeout=60, what="the move's tasks in Flower")
        assert ran_on.get("migrator.flip") == "control", ran_on
        assert ran_on.get("migrator.copy_rows_unit") == "rows", ran_on
        assert ran_on.get("migrator.copy_blobs_unit") == "blobs", ran_on
        assert honcho.poll() is None, "a process of the Procfile exited:\n" + log_path.read_text()[-4000:]
        running = _marked_pids(marker)

        # Stop: honcho terminates every process group it started.
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(30)
        wait_for(lambda: not [p for p in _marked_pids(marker) if _stat_state(p) not in ("Z", "gone")], timeout=15,
                 what="every process started by honcho to exit")
        assert len(running) >= len(EXPECTED)
    finally:
        if honcho is not None and honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        for pid in _marked_pids(marker):  # only processes this test started (they carry its marker)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        redis.stop()
        fleet.drop()


def test_env_example_and_config_are_consistent():
    """The example env file points at the example config, which loads."""
    env = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#") and "=" in line)
    assert env["MIGRATOR_CONFIG"] == "deploy/migrator.example.yaml"
    assert len(env["MIGRATOR_API__TOKEN"]) >= 16
    ports = [env[k] for k in env if k.endswith("_PORT")]
    assert len(ports) == len(set(ports)), ports
    from migrator.config import load_settings

    settings = load_settings(ROOT / env["MIGRATOR_CONFIG"])
    assert settings.api.listen_port not in {int(p) for p in ports}
    assert yaml.safe_load((ROOT / env["MIGRATOR_CONFIG"]).read_text())["celery"]["queue_prefix"] == ""
