"""The Topology Service locked down (issue 14): a real `migrator topology serve` with mutual TLS,
called the way an attacker on the same network would, with raw gRPC stubs.

Refused: every rpc without a client certificate, with one from another CA, and every write rpc with
a reader's certificate. A reader classifies; no answer carries a move token; repair clears only a
freeze no live move owns.
"""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
import yaml

from migrator.errors import CellUnavailable, PermissionDenied, RouteFrozen
from migrator.fleet.processes import BIN, free_port
from migrator.fleet.services import child_env, start_topology_server
from migrator.moves.store import MoveStore
from migrator.topology.certs import init_fleet
from migrator.topology.client import TopologyClient
from migrator.topology.proto import topology_pb2 as pb
from migrator.topology.proto import topology_pb2_grpc as pb_grpc
from migrator.topology.service import token_digest
from tests.support import ROOT
from tests.support.fleet import client_tls, fleet_certs

pytestmark = pytest.mark.integration

ORG, FROZEN_ORG = 41, 42
MOVE_TOKEN = "0123456789abcdef0123456789abcdef"  # the shape of a real move token (uuid4 hex)

# Every write rpc with a request that would succeed for an admin (the attack's calls among them).
WRITES = {
    "RegisterCell": pb.RegisterCellRequest(name="cell-evil", address="evil:5432"),
    "SetCellState": pb.SetCellStateRequest(name="cell-1", state="draining"),
    "RegisterRoute": pb.RegisterRouteRequest(organization_id=999, cell="cell-2", actor="evil"),
    "Freeze": pb.FreezeRequest(organization_id=ORG, token="made-up", expected_cell="cell-1", actor="evil"),
    "Refence": pb.RefenceRequest(organization_id=FROZEN_ORG, old_token=MOVE_TOKEN, new_token="made-up"),
    "Flip": pb.FlipRequest(organization_id=FROZEN_ORG, from_cell="cell-1", to_cell="cell-2", expected_version=1,
                           token=MOVE_TOKEN),
    "Unfreeze": pb.UnfreezeRequest(organization_id=FROZEN_ORG, token=MOVE_TOKEN),
    "Repair": pb.RepairRequest(organization_id=FROZEN_ORG, actor="evil", reason="because"),
}
READS = {
    "Classify": pb.ClassifyRequest(organization_id=ORG),
    "ListRoutes": pb.ListRoutesRequest(),
    "ListCells": pb.ListCellsRequest(),
    "GetCell": pb.GetCellRequest(name="cell-1"),
    "History": pb.HistoryRequest(organization_id=FROZEN_ORG),
    "WatchRoutes": pb.WatchRoutesRequest(),  # a stream: its first message (the route map)
}


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A complete certificate set from a CA the fleet does not trust."""
    return init_fleet(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture
def secured(topology_server, fleet):
    """Cells registered; ORG routed to cell-1; FROZEN_ORG frozen by MOVE_TOKEN (as a worker would)."""
    with TopologyClient(fleet.topology_listen, tls=client_tls("admin")) as admin:
        for name in fleet.cell_dsns:
            admin.register_cell(name)
        admin.register_route(ORG, "cell-1", actor="seed")
        admin.register_route(FROZEN_ORG, "cell-1", actor="seed")
    with TopologyClient(fleet.topology_listen, tls=client_tls("mover")) as mover:
        mover.freeze(FROZEN_ORG, MOVE_TOKEN, expected_cell="cell-1", actor="move m1")
    return fleet


def _channel(address: str, *, ca: bytes | None = None, cert: dict | None = None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=cert["key"].read_bytes() if cert else None,
                                         certificate_chain=cert["cert"].read_bytes() if cert else None)
    return grpc.secure_channel(address, creds)


def _call(channel: grpc.Channel, rpc: str, request):
    try:
        answer = getattr(pb_grpc.TopologyStub(channel), rpc)(request, timeout=5)
        if rpc == "WatchRoutes":
            first = next(answer)
            answer.cancel()
            return first
        return answer
    except grpc.RpcError as exc:
        return exc


def _state(fleet) -> tuple:
    """Everything the calls above could have changed."""
    with TopologyClient(fleet.topology_listen, tls=client_tls("admin")) as admin:
        return (admin.list_cells(), admin.list_routes(), admin.history(ORG), admin.history(FROZEN_ORG),
                admin.history(999))


def test_every_rpc_is_refused_without_a_certificate_of_this_ca(secured, other_ca):
    ca = fleet_certs()["ca"].read_bytes()
    before = _state(secured)
    attackers = {
        "no TLS": _channel(secured.topology_listen),
        "TLS without a client certificate": _channel(secured.topology_listen, ca=ca),
        "an admin certificate of another CA": _channel(secured.topology_listen, ca=ca,
                                                      cert=other_ca["clients"]["admin"]),
    }
    for who, channel in attackers.items():
        for rpc, request in {**WRITES, **READS}.items():
            outcome = _call(channel, rpc, request)
            assert isinstance(outcome, grpc.RpcError), f"{rpc} with {who} answered {outcome}"
            # The handshake itself is refused: the service never sees the call.
            assert outcome.code() == grpc.StatusCode.UNAVAILABLE, (who, rpc, outcome.code(), outcome.details())
        channel.close()
    assert _state(secured) == before


def test_a_reader_can_read_but_every_write_is_refused(secured):
    fleet = fleet_certs()
    before = _state(secured)
    channel = _channel(secured.topology_listen, ca=fleet["ca"].read_bytes(), cert=fleet["clients"]["reader"])
    route = _call(channel, "Classify", READS["Classify"])
    assert (route.organization_id, route.cell, route.state) == (ORG, "cell-1", "active")
    for rpc in READS:
        assert not isinstance(_call(channel, rpc, READS[rpc]), grpc.RpcError), rpc
    for rpc, request in WRITES.items():
        outcome = _call(channel, rpc, request)
        assert isinstance(outcome, grpc.RpcError), f"a reader could {rpc}: {outcome}"
        assert outcome.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, outcome.code())
        role = "admin" if rpc in ("RegisterCell", "SetCellState", "RegisterRoute", "Repair") else "mover"
        assert f"{rpc} needs the {role} role" in outcome.details() and "CN=reader" in outcome.details()
    channel.close()
    assert _state(secured) == before
    # The same refusal through the migrator's own client: one clear error naming the role.
    with TopologyClient(secured.topology_listen, tls=client_tls("reader")) as reader, \
            pytest.raises(PermissionDenied, match="Freeze needs the mover role") as exc:
        reader.freeze(ORG, "made-up", expected_cell="cell-1")
    assert "--role mover" in exc.value.hint


def test_the_route_hijack_fails_at_its_first_call(secured, other_ca):
    """The attack of issue 14 (freeze with a made-up token, flip to a cell without the data,
    unfreeze), by every caller that is not a mover: the freeze is refused and nothing follows."""
    fleet = fleet_certs()
    before = _state(secured)
    attempts = {
        "no TLS": _channel(secured.topology_listen),
        "another CA": _channel(secured.topology_listen, ca=fleet["ca"].read_bytes(), cert=other_ca["clients"]["mover"]),
        "a reader": _channel(secured.topology_listen, ca=fleet["ca"].read_bytes(), cert=fleet["clients"]["reader"]),
    }
    for who, channel in attempts.items():
        steps = [("Freeze", pb.FreezeRequest(organization_id=ORG, token="attacker", expected_cell="cell-1")),
                 ("Flip", pb.FlipRequest(organization_id=ORG, from_cell="cell-1", to_cell="cell-3",
                                         expected_version=1, token="attacker")),
                 ("Unfreeze", pb.UnfreezeRequest(organization_id=ORG, token="attacker"))]
        done = []
        for rpc, request in steps:
            outcome = _call(channel, rpc, request)
            if isinstance(outcome, grpc.RpcError):
                break
            done.append(rpc)
        assert done == [], f"{who} got through {done}"
        channel.close()
    assert _state(secured) == before


def test_reads_never_show_a_token(secured):
    fleet = fleet_certs()
    channel = _channel(secured.topology_listen, ca=fleet["ca"].read_bytes(), cert=fleet["clients"]["reader"])
    answers = [_call(channel, "Classify", pb.ClassifyRequest(organization_id=FROZEN_ORG)),
               _call(channel, "ListRoutes", pb.ListRoutesRequest()),
               _call(channel, "History", pb.HistoryRequest(organization_id=FROZEN_ORG)),
               _call(channel, "WatchRoutes", pb.WatchRoutesRequest())]
    channel.close()
    for answer in answers:
        assert not isinstance(answer, grpc.RpcError), answer
        assert MOVE_TOKEN.encode() not in answer.SerializeToString()
    assert answers[0].state == "frozen" and answers[0].token_digest == token_digest(MOVE_TOKEN)
    assert answers[3].kind == pb.RouteEvent.SNAPSHOT and {r.organization_id for r in answers[3].routes} == {
        ORG, FROZEN_ORG}
    # The mover's own refusals name the holder by digest too.
    with TopologyClient(secured.topology_listen, tls=client_tls("mover")) as mover, \
            pytest.raises(RouteFrozen) as exc:
        mover.freeze(FROZEN_ORG, "another-move", expected_cell="cell-1")
    assert MOVE_TOKEN not in str(exc.value) and token_digest(MOVE_TOKEN) in str(exc.value)
    for args in (["routes", "--json"], ["history", str(FROZEN_ORG), "--json"], ["classify", str(FROZEN_ORG)]):
        out = subprocess.run([str(BIN / "migrator"), "topology", *args], env=child_env(secured.config_path), cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert MOVE_TOKEN not in out.stdout


def test_a_certificate_of_another_ca_gets_a_clear_error(secured, other_ca):
    from migrator.topology.tls import ClientTls

    ours = fleet_certs()
    theirs = other_ca["clients"]["admin"]
    tls = ClientTls(ca=ours["ca"].read_bytes(), cert=theirs["cert"].read_bytes(), key=theirs["key"].read_bytes(),
                    server_name=None)
    with TopologyClient(secured.topology_listen, tls=tls, attempts=1) as client, \
            pytest.raises(CellUnavailable) as exc:
        client.classify(ORG)
    assert "client_cert" in exc.value.hint and "CA" in exc.value.hint


def _repair(fleet, org: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "migrator"), "topology", "repair", str(org), *extra],
                          env=child_env(fleet.config_path), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_repair_clears_only_a_freeze_no_live_move_owns(provisioned):
    from migrator.cells.guard import freeze_org, is_frozen
    from migrator.db import connection

    fleet = provisioned
    with TopologyClient(fleet.topology_listen, tls=client_tls("admin")) as admin:
        admin.register_route(ORG, "cell-1", actor="seed")
        admin.register_route(FROZEN_ORG, "cell-1", actor="seed")
    # FROZEN_ORG: frozen by a live move (recorded in the control database, as `migrator move` does).
    move = MoveStore(fleet.control_dsn).create(organization_id=FROZEN_ORG, source="cell-1", target="cell-2",
                                               requested_by="test", reason="live move")
    with TopologyClient(fleet.topology_listen, tls=client_tls("mover")) as mover:
        mover.freeze(FROZEN_ORG, move.token, expected_cell="cell-1")
        mover.freeze(ORG, "left-by-nobody", expected_cell="cell-1")  # a token no move owns
    with connection(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        freeze_org(conn, ORG, "left-by-nobody")

    refused = _repair(fleet, FROZEN_ORG, "--reason", "try")
    assert refused.returncode == 1
    assert f"frozen by move {move.id}, which is queued" in refused.stderr and "migrator abort" in refused.stderr
    with TopologyClient(fleet.topology_listen, tls=client_tls("reader")) as reader, \
            pytest.raises(PermissionDenied, match="Repair needs the admin role"):
        reader.repair(ORG, reason="a reader tries")
    assert _repair(fleet, ORG).returncode == 2  # --reason is required

    out = _repair(fleet, ORG, "--reason", "freeze left by a deleted move", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    import json

    result = json.loads(out.stdout)
    assert result["route_cleared"] and result["guard_cleared"]
    assert result["cleared_token_digest"] == token_digest("left-by-nobody")
    with TopologyClient(fleet.topology_listen, tls=client_tls("reader")) as reader:
        assert reader.classify(ORG).state == "active"
        assert reader.classify(FROZEN_ORG).held_by(move.token)
        last = reader.history(ORG)[-1]
    assert (last["action"], last["reason"]) == ("repair", "freeze left by a deleted move")
    assert last["actor"].endswith("[admin/admin]")
    with connection(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        assert is_frozen(conn, ORG) is None
    again = _repair(fleet, ORG, "--reason", "again", "--json")  # idempotent: nothing left to clear
    assert again.returncode == 0 and not json.loads(again.stdout)["route_cleared"]


def test_without_tls_the_server_refuses_a_non_loopback_address(fleet, tmp_path):
    data = yaml.safe_load(fleet.config_path.read_text())
    del data["topology"]["tls"]
    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run([str(BIN / "migrator"), "topology", "serve", "--listen", f"0.0.0.0:{free_port()}"],
                         env=child_env(config), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refuses to listen on 0.0.0.0" in out.stderr and "topology.tls" in out.stderr
    # topology.insecure: true serves, and says loudly what it costs.
    data["topology"]["insecure"] = True
    config.write_text(yaml.safe_dump(data))
    listen = f"0.0.0.0:{free_port()}"
    proc = start_topology_server(config, listen, tmp_path / "insecure.log")
    try:
        assert "INSECURE: the Topology Service listens on " + listen + " WITHOUT TLS" in proc.log()
    finally:
        proc.stop()


def test_rotating_the_ca_takes_effect_without_a_restart(fleet, tmp_path, other_ca):
    """The server re-reads its CA and certificate when the files change: a fleet moves to a new CA
    without restarting the Topology Service (docs/runbooks/topology-certificate-expiring.md)."""
    certs = tmp_path / "certs"
    shutil.copytree(fleet_certs()["ca"].parent, certs)
    data = yaml.safe_load(fleet.config_path.read_text())
    data["topology"]["tls"].update(ca=str(certs / "ca.pem"), server_cert=str(certs / "server.pem"),
                                   server_key=str(certs / "server-key.pem"))
    config = tmp_path / "rotating.yaml"
    config.write_text(yaml.safe_dump(data))
    from migrator.control.engine import upgrade_control_db

    upgrade_control_db(fleet.control_dsn)
    proc = start_topology_server(config, fleet.topology_listen, tmp_path / "rotating.log")
    try:
        with TopologyClient(fleet.topology_listen, tls=client_tls("reader"), attempts=1) as old:
            assert old.list_cells() == []
        # The new CA (and a server certificate it signed) replace the old files in place.
        for name in ("ca.pem", "server.pem", "server-key.pem"):
            src = other_ca["ca"].parent / name
            tmp = certs / (name + ".new")
            shutil.copy(src, tmp)
            tmp.replace(certs / name)
        from migrator.topology.tls import ClientTls

        new_admin = other_ca["clients"]["reader"]
        tls = ClientTls(ca=other_ca["ca"].read_bytes(), cert=new_admin["cert"].read_bytes(),
                        key=new_admin["key"].read_bytes(), server_name=None)
        with TopologyClient(fleet.topology_listen, tls=tls, attempts=1) as new:
            assert new.list_cells() == []
        with TopologyClient(fleet.topology_listen, tls=client_tls("reader"), attempts=1) as old, \
                pytest.raises(CellUnavailable):
            old.list_cells()
        assert "certificate files changed" in proc.log()
    finally:
        proc.stop()
