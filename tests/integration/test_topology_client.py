"""TopologyClient against an in-process gRPC server: same results, same exception classes."""

from __future__ import annotations

import socket

import pytest

from migrator import errors as err
from migrator.control.engine import control_engine, upgrade_control_db
from migrator.fleet.processes import free_port
from migrator.topology.client import TopologyClient, topology_client
from migrator.topology.server import build_server
from migrator.topology.service import RouteConflict, TopologyService, token_digest

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(scratch_db):
    """(in-process service, client of a gRPC server on the same database)."""
    upgrade_control_db(scratch_db)
    service = TopologyService(scratch_db, sequence_block=100)
    listen = f"127.0.0.1:{free_port()}"
    server = build_server(service, listen)
    server.start()
    client = TopologyClient(listen)
    yield service, client
    client.close()
    server.stop(0).wait()
    control_engine(scratch_db).dispose()


def test_client_mirrors_the_service(pair):
    service, client = pair
    cells = [client.register_cell(n, f"addr-{n}") for n in ("a", "b")]
    assert client.list_cells() == service.list_cells() == cells
    assert client.get_cell("a") == service.get_cell("a")
    assert client.set_cell_state("b", "draining").state == "draining"
    assert client.register_route(5, "a", actor="me", reason="new") == service.classify(5)
    assert client.classify(5).token_digest is None
    assert client.freeze(5, "t1", expected_cell="a").token_digest == token_digest("t1")
    assert client.refence(5, "t1", "t2").held_by("t2")
    assert client.flip(5, "a", "b", expected_version=1, token="t2").version == 2
    assert client.unfreeze(5, "t2") == service.classify(5)
    assert client.list_routes() == service.list_routes()
    assert client.list_routes("a") == []
    assert client.history(5) == service.history(5)
    assert [h["action"] for h in client.history(5)] == ["register", "freeze", "refence", "flip", "unfreeze"]
    assert client.history(5)[0]["from_cell"] is None


def _refusal(call):
    try:
        call()
    except err.MigratorError as exc:
        return exc
    raise AssertionError("expected a err.MigratorError")


def test_errors_arrive_as_the_same_class_message_and_hint(pair):
    service, client = pair
    for name in ("a", "b"):
        service.register_cell(name)
    service.register_route(5, "a")
    service.register_route(6, "a")
    service.freeze(6, "t1", expected_cell="a")
    cases = [
        (err.UnknownOrganization, lambda t: t.classify(404)),
        (err.UnknownCell, lambda t: t.get_cell("zz")),
        (RouteConflict, lambda t: t.register_route(5, "b")),
        (err.RouteFrozen, lambda t: t.freeze(6, "t9", expected_cell="a")),
        (err.StaleVersion, lambda t: t.flip(6, "a", "b", expected_version=3, token="t1")),
        (err.StaleToken, lambda t: t.flip(6, "a", "b", expected_version=1, token="t9")),
        (err.InvalidMoveState, lambda t: t.flip(6, "b", "a", expected_version=1, token="t1")),
        (err.SameCell, lambda t: t.flip(6, "a", "a", expected_version=1, token="t1")),
        (err.MigratorError, lambda t: t.set_cell_state("a", "sleepy")),
    ]
    for cls, call in cases:
        local, remote = _refusal(lambda: call(service)), _refusal(lambda: call(client))  # noqa: B023
        assert type(local) is type(remote) is cls
        assert (remote.message, remote.hint, remote.code) == (local.message, local.hint, local.code)


def test_unreachable_server_is_cell_unavailable():
    address = f"127.0.0.1:{free_port()}"
    client = TopologyClient(address, attempts=3)
    with pytest.raises(err.CellUnavailable) as exc:
        client.classify(1)
    assert address in exc.value.message
    assert "migrator topology serve" in exc.value.hint
    client.close()


def test_second_server_on_the_same_port_fails(pair, scratch_db):
    service, client = pair
    with pytest.raises(err.MigratorError, match="cannot listen"):
        build_server(service, client.address)
    with socket.create_connection(tuple(client.address.rsplit(":", 1))):  # the first still serves
        pass


def test_topology_client_factory(fleet):
    settings = fleet.settings()
    remote = topology_client(settings)
    assert isinstance(remote, TopologyClient) and remote.address == fleet.topology_listen
    remote.close()
    local = topology_client(settings.model_copy(update={"topology": settings.topology.model_copy(
        update={"address": None, "sequence_block": 77})}))
    assert isinstance(local, TopologyService) and local.sequence_block == 77
    assert local.control_dsn == fleet.control_dsn
