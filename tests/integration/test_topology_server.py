"""The real ``migrator topology serve`` process: the client, errors, the CLI, graceful stop."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from migrator.errors import MigratorError, RouteFrozen, StaleToken, StaleVersion, UnknownCell, UnknownOrganization
from migrator.fleet.processes import BIN
from migrator.fleet.services import child_env
from migrator.topology.client import TopologyClient
from migrator.topology.service import RouteConflict, RouteInfo, token_digest
from tests.support import ROOT
from tests.support.fleet import client_tls

pytestmark = pytest.mark.integration


@pytest.fixture
def client(topology_server, fleet):
    with TopologyClient(fleet.topology_listen, tls=client_tls("admin")) as c:
        for name in fleet.cell_dsns:
            c.register_cell(name)
        yield c


def test_a_move_through_the_server(client):
    client.register_route(11, "cell-1", actor="seed")
    assert client.freeze(11, "m1", expected_cell="cell-1", actor="mover").state == "frozen"
    assert client.flip(11, "cell-1", "cell-2", expected_version=1, token="m1") == RouteInfo(11, "cell-2", 2, "frozen",
                                                                                          token_digest("m1"))
    assert client.flip(11, "cell-1", "cell-2", expected_version=1, token="m1").version == 2  # retry-safe
    assert client.unfreeze(11, "m1") == RouteInfo(11, "cell-2", 2, "active", None)
    assert [h["action"] for h in client.history(11)] == ["register", "freeze", "flip", "unfreeze"]
    cells = client.list_cells()
    assert [c.name for c in cells] == ["cell-1", "cell-2", "cell-3"]
    assert all(a.seq_max < b.seq_min for a, b in zip(cells, cells[1:], strict=False))


def test_refusals_arrive_as_the_same_classes(client):
    client.register_route(12, "cell-1")
    client.freeze(12, "m1", expected_cell="cell-1")
    with pytest.raises(UnknownOrganization, match="organization 999"):
        client.classify(999)
    with pytest.raises(UnknownCell):
        client.register_route(15, "cell-9")
    client.register_route(13, "cell-1")
    with pytest.raises(RouteConflict):
        client.register_route(13, "cell-2")
    with pytest.raises(RouteFrozen):
        client.register_route(12, "cell-2")  # being moved
    with pytest.raises(RouteFrozen):
        client.freeze(12, "m2", expected_cell="cell-1")
    with pytest.raises(StaleVersion) as exc:
        client.flip(12, "cell-1", "cell-2", expected_version=7, token="m1")
    assert exc.value.hint and "history 12" in exc.value.hint
    with pytest.raises(StaleToken):
        client.flip(12, "cell-1", "cell-2", expected_version=1, token="m2")
    with pytest.raises(StaleToken):
        client.unfreeze(12, "m2")


def test_concurrent_flips_through_the_server(client):
    client.register_route(14, "cell-1")
    client.freeze(14, "m1", expected_cell="cell-1")
    barrier = threading.Barrier(20)
    outcomes = []

    def flip(i):
        target = "cell-2" if i % 2 else "cell-3"
        with TopologyClient(client.address, tls=client_tls("mover")) as own:
            barrier.wait()
            try:
                outcomes.append(own.flip(14, "cell-1", target, expected_version=1, token="m1"))
            except MigratorError as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=flip, args=(i,)) for i in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(outcomes) == 20
    routes = [o for o in outcomes if isinstance(o, RouteInfo)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    # The winner's target-mates replay the same flip (same token, same result); the others are refused.
    assert len({(r.cell, r.version) for r in routes}) == 1 and len(routes) == 10
    assert len(refused) == 10 and all(isinstance(e, StaleVersion) for e in refused)
    assert [h["action"] for h in client.history(14)].count("flip") == 1


def _cli(fleet, *args):
    return subprocess.run([str(BIN / "migrator"), "topology", *args], env=child_env(fleet.config_path), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_routes_and_history(client, fleet):
    client.register_route(21, "cell-1", actor="ops", reason="onboarding")
    client.register_route(22, "cell-2")
    out = _cli(fleet, "routes", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["organization_id"] for r in json.loads(out.stdout)] == [21, 22]
    out = _cli(fleet, "routes", "--cell", "cell-2", "--json")
    # revision: the id of the route's latest history entry (22's registration was the second change).
    assert json.loads(out.stdout) == [{"organization_id": 22, "cell": "cell-2", "version": 1, "state": "active",
                                       "token_digest": None, "revision": 2}]
    out = _cli(fleet, "history", "21", "--json")
    (entry,) = json.loads(out.stdout)
    # Who asked, and the certificate that made the call.
    assert (entry["action"], entry["actor"], entry["reason"]) == ("register", "ops [admin/admin]", "onboarding")
    out = _cli(fleet, "classify", "404")
    assert out.returncode == 1 and "organization 404" in out.stderr
    # classify has a fast path (migrator/cli/fast.py); the full command (here forced by -v) answers the same.
    fast = _cli(fleet, "classify", "21", "--json")
    full = subprocess.run([str(BIN / "migrator"), "-v", "topology", "classify", "21", "--json"],
                          env=child_env(fleet.config_path), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert fast.returncode == full.returncode == 0, fast.stderr + full.stderr
    assert json.loads(fast.stdout) == json.loads(full.stdout) == {
        "organization_id": 21, "cell": "cell-1", "version": 1, "state": "active", "token_digest": None, "revision": 1}
    assert _cli(fleet, "routes").returncode == 0


def test_serve_logs_masked_dsn_and_stops_on_sigterm(topology_server):
    topology_server.stop()
    assert topology_server.proc.returncode == 0
    log = topology_server.log()
    assert "listening on" in log and "topology service stopped" in log
