"""A capacity alert posted to a real Alertmanager reaches the API's webhook, and the rebalancer starts a move.

Real processes on loopback: Alertmanager with a config derived from deploy/alertmanager/alertmanager.yml
(webhook URL pointed at the API on a free port, the bearer token in a file, waits shortened; the
humans' receiver replaced by a local recorder), ``migrator api serve``, the Topology Service and a
Celery worker. The fleet's thresholds make cell-1 hot once seeded; approval is automatic.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import urllib.error
import urllib.request

import pytest
import yaml

from migrator.fleet.processes import BIN, Process, free_port, wait_for
from migrator.fleet.services import child_env
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.deploy.conftest import DEPLOY
from tests.support.fleet import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

TOKEN = "alert-e2e-token-0123456789abcdef"
REBALANCER = "migrator-rebalancer"


def _request(url: str, body=None, token: str | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Recorder:
    """A webhook receiver standing in for the humans' pager: keeps every payload it gets."""

    def __init__(self):
        self.payloads: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length") or 0)
                outer.payloads.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def alertmanager_test_config(api_url: str, token_file, human_url: str) -> dict:
    """deploy/alertmanager/alertmanager.yml with loopback URLs and waits of a second."""
    cfg = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())

    def fast(route: dict) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is cfg["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(cfg["route"])
    for receiver in cfg["receivers"]:
        if receiver["name"] == REBALANCER:
            [hook] = receiver["webhook_configs"]
            hook["url"] = api_url
            hook["http_config"]["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
        else:
            receiver.pop("email_configs", None)
            receiver["webhook_configs"] = [{"url": human_url, "send_resolved": True}]
    return cfg


@pytest.fixture
def hot_fleet(fleet, topology_server):
    """cell-1 with three organizations against a high-water mark of two: hot once measured."""
    cfg = yaml.safe_load(fleet.config_path.read_text())
    cfg["api"] = {"token": TOKEN}
    cfg["rebalance"] = {"approval": "auto", "defaults": {"high_water_orgs": 2, "low_water_orgs": 1},
                        "cooldown_hours": 0, "max_moves_per_cell": 1, "max_moves_total": 2}
    fleet.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from migrator.config import clear_settings_cache

    clear_settings_cache()
    fleet.init()
    seed_organizations(fleet.settings(), "cell-1", orgs=3, rows=300, blobs=3, skew=False, seed=11)
    return fleet


def test_capacity_alert_through_alertmanager_starts_a_move(hot_fleet, alertmanager_bin, tmp_path):
    fleet = hot_fleet
    settings = fleet.settings()
    procs: list[Process] = []
    human = Recorder()
    try:
        worker = start_worker(fleet.config_path, tmp_path / "worker.log", name="e2e", concurrency=2)
        procs.append(worker)
        api_port = free_port()
        api = Process([str(BIN / "migrator"), "api", "serve", "--host", "127.0.0.1", "--port", str(api_port)],
                      child_env(fleet.config_path), tmp_path / "api.log").start()
        procs.append(api)

        token_file = tmp_path / "api-token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        am_port = free_port()
        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_test_config(
            f"http://127.0.0.1:{api_port}/v1/alerts", token_file, human.url), sort_keys=False))
        alertmanager = Process([alertmanager_bin, f"--config.file={am_config}",
                               f"--storage.path={tmp_path / 'am-data'}",
                               f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                               "--log.level=debug"],
                               child_env(fleet.config_path), tmp_path / "alertmanager.log").start()
        procs.append(alertmanager)

        def ready(proc, url):
            def check():
                if not proc.alive():
                    raise RuntimeError(f"{proc.args[0]} exited:\n{proc.log()[-3000:]}")
                return _request(url)[0] == 200
            return check

        wait_for(ready(api, f"http://127.0.0.1:{api_port}/healthz"), timeout=30, what="the API")
        wait_for(ready(alertmanager, f"http://127.0.0.1:{am_port}/-/ready"), timeout=30, what="Alertmanager")
        wait_for(lambda: "ready." in worker.log(), timeout=60, what="the worker")

        # What Prometheus would send when CellCapacityHigh fires for cell-1.
        now = dt.datetime.now(dt.UTC)
        alert = {"labels": {"alertname": "CellCapacityHigh", "cell": "cell-1", "severity": "warning",
                            "job": "migrator-exporter", "instance": "exporter:9700"},
                 "annotations": {"summary": "Cell cell-1 is above its high-water mark"},
                 "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=10)).isoformat(),
                 "generatorURL": "http://prometheus.invalid/graph"}
        status, body = _request(f"http://127.0.0.1:{am_port}/api/v2/alerts", [alert])
        assert status == 200, body

        # The webhook delivered it, authenticated: the API recorded it.
        def recorded():
            status, body = _request(f"http://127.0.0.1:{api_port}/v1/alerts?cell=cell-1", token=TOKEN)
            assert status == 200, body
            return [a for a in json.loads(body) if a["alertname"] == "CellCapacityHigh"]

        [received] = wait_for(recorded, timeout=30, what="the alert at the API's webhook")
        assert received["status"] == "firing" and received["labels"]["cell"] == "cell-1"

        # The rebalancer planned for cell-1 and started a move off it.
        store = MoveStore(settings.control_dsn)

        def rebalancer_move():
            return [m for m in store.list(cell="cell-1") if m.requested_by == "rebalancer"]

        moves = wait_for(rebalancer_move, timeout=40, what="a move started by the rebalancer:\n"
                         + worker.log()[-2000:])
        assert len(moves) == 1  # max_moves_per_cell 1: the second planned item waits for a slot
        move = moves[0]
        assert move.source_cell == "cell-1" and move.target_cell in ("cell-2", "cell-3")
        def decided():  # the decision is written just after the move it records
            status, body = _request(f"http://127.0.0.1:{api_port}/v1/rebalance/decisions?cell=cell-1", token=TOKEN)
            kinds = {d["kind"] for d in json.loads(body)}
            return kinds if {"alert_received", "plan_made", "move_started"} <= kinds else None

        wait_for(decided, timeout=60, what="the rebalancer's decisions")

        done = wait_for(lambda: (m := store.get(move.id)).state in ("completed", "failed", "rejected") and m,
                        timeout=120, what=f"move {move.id} to finish")
        assert done.state == "completed", f"{done.state}: {done.error}"

        # The humans got their copy of the capacity alert too (continue: true in the route).
        wait_for(lambda: any(a["labels"].get("alertname") == "CellCapacityHigh"
                             for p in human.payloads for a in p.get("alerts", [])),
                 timeout=60, what="the copy for the humans' receiver")
        assert "401" not in alertmanager.log()
    finally:
        for proc in reversed(procs):
            proc.stop()
        human.close()
