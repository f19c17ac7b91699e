"""Requests follow the flip through a real HAProxy fed by `migrator router sync`, and no write is lost.

The edge of the fleet runs as deployed (tests/support/edge.py): a sample application per cell, HAProxy
configured by `migrator router config`, `migrator router sync` calling the Topology Service as a reader.
HAProxy comes from Debian's package, installed with apt-get when missing (skipped where that is impossible).
"""

from __future__ import annotations

import json

import pytest

from migrator.moves.operations import Operations
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.support.edge import Edge, flip_revision, haproxy_binary, http_get, http_send, wait_route
from tests.support.moves import HeldTable, migrator, wait_copying, wait_move
from tests.support.traffic import Traffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def edge(provisioned, tmp_path):
    exe, reason = haproxy_binary()
    if exe is None:
        pytest.skip(f"haproxy is not available ({reason}); it comes from Debian's haproxy package")
    edge = Edge(provisioned.config_path, tmp_path / "edge", ["cell-1", "cell-2"])
    try:
        edge.start_apps()
        edge.start_haproxy(exe)
        edge.start_sync()
        edge.wait_sync_current()
        yield edge
    finally:
        edge.stop()


def _final_cell_dsn(settings):
    topology = topology_client(settings)
    return lambda org: settings.cell(topology.classify(org).cell).dsn


def test_requests_follow_the_flip_and_no_write_is_lost(provisioned, edge, worker):
    settings = provisioned.settings()
    org, other = (o.organization_id for o in
                  seed_organizations(settings, "cell-1", orgs=2, rows=300, blobs=2, skew=False, seed=5))
    wait_route(edge, org, ("cell-1", "active"))  # registered after sync started: it came by the stream
    traffic = Traffic("127.0.0.1", edge.port, [org, other], rate=60, threads=3, weights={org: 2, other: 1}).start()
    try:
        assert traffic.wait_for(lambda outs: sum(o.status == 201 for o in outs) >= 10, 30)
        result = migrator(provisioned, "move", "--org", str(org), "--to", "cell-2", "--strategy", "online", "--wait",
                          "--json", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["state"] == "completed"
        wait_route(edge, org, ("cell-2", "active"))
        assert traffic.wait_for(lambda outs: sum(o.org == org and o.cell == "cell-2" and o.op != "read"
                                                 and 200 <= o.status < 300 for o in outs) >= 5, 30)
    finally:
        traffic.stop()
    totals = traffic.check(_final_cell_dsn(settings))
    assert (totals.lost_writes, totals.reads_failed, totals.bad_answers) == (0, 0, 0), totals.examples
    mine = [o for o in traffic.outcomes if o.org == org and 200 <= o.status < 300]
    assert {"cell-1", "cell-2"} <= {o.cell for o in mine}  # it crossed over
    # The bystander was never frozen: every one of its requests was answered by its cell at once.
    theirs = [o for o in traffic.outcomes if o.org == other]
    assert theirs and all(o.attempts == 1 and o.cell == "cell-1" for o in theirs)
    assert edge.migrator("router", "check").returncode == 0


def test_router_sync_killed_mid_move_catches_up_and_a_stale_route_loses_nothing(provisioned, edge, worker):
    settings = provisioned.settings()
    [org] = [o.organization_id for o in seed_organizations(settings, "cell-1", orgs=1, rows=400, blobs=2, skew=False,
                                                           seed=6)]
    headers = {"X-Organization-Id": str(org)}
    wait_route(edge, org, ("cell-1", "active"))
    status, hdrs, body = http_send(edge.port, "POST", f"/orgs/{org}/notes", {"note": "before"}, headers)
    assert (status, hdrs["x-cell"]) == (201, "cell-1"), body
    note = json.loads(body)["id"]

    # The move cannot pass copy_rows while the test holds the target's notes: kill router sync then.
    with HeldTable(provisioned.cell_dsns["cell-2"], "notes") as hold:
        move = Operations(settings).request_move(org, "cell-2", actor="test", reason="router sync killed",
                                                 strategy="online")
        wait_copying(settings, move.id)
        edge.sync.kill()
        hold.release()
        assert wait_move(settings, move.id).state == "completed"

    # Nobody updates HAProxy now: it still routes the organization to its old cell (it never saw the freeze).
    assert edge.route(org) == ("cell-1", "active")
    # A write it sends there is refused by the source's freeze guard: a retryable 503, nothing written.
    status, hdrs, body = http_send(edge.port, "POST", f"/orgs/{org}/notes", {"note": "stale"}, headers)
    assert (status, hdrs.get("x-cell"), json.loads(body)["code"]) == (503, "cell-1", "organization_frozen"), body
    assert int(hdrs["retry-after"]) >= 1
    # Reads are still answered, from the source copy.
    assert http_get(edge.port, f"/orgs/{org}/notes/{note}", headers)[:2][0] == 200

    # Restarted, it resyncs everything and reports itself current only once HAProxy routes right.
    topology = topology_client(settings)
    flipped = flip_revision(topology, org)
    sock = str(edge.root / "haproxy-admin.sock")
    edge.start_sync()
    samples = []

    def current():
        try:
            m = edge.metrics()
        except OSError:
            return None  # its metrics endpoint is not up yet
        current = (m.get("migrator_router_stream_connected") == 1
                   and m.get(f'migrator_router_sync_lag_seconds{{haproxy="{sock}"}}') == 0
                   and m.get(f'migrator_router_applied_revision{{haproxy="{sock}"}}', 0) >= flipped)
        samples.append((current, edge.route(org)))
        return m if current else None

    from migrator.fleet.processes import wait_for

    metrics = wait_for(current, timeout=60, interval=0.02, what="router sync to report HAProxy current")
    assert all(route == ("cell-2", "active") for ok, route in samples if ok)
    assert metrics[f'migrator_router_resyncs_total{{haproxy="{sock}",reason="stream"}}'] >= 1
    assert edge.route(org) == ("cell-2", "active")
    status, hdrs, body = http_send(edge.port, "POST", f"/orgs/{org}/notes", {"note": "after"}, headers)
    assert (status, hdrs["x-cell"]) == (201, "cell-2"), body
    status, hdrs, body = http_get(edge.port, f"/orgs/{org}/notes/{note}", headers)
    assert (status, hdrs["x-cell"], json.loads(body)["note"]) == (200, "cell-2", "before")
    assert edge.migrator("router", "check").returncode == 0
