"""Certificates, roles and the transport rules of the Topology Service (issue 14), without a server."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest

from migrator.errors import ConfigError
from migrator.observability.flower import check_flower
from migrator.topology.certs import CertificateError, Identity, describe, identity_of_pem, init_fleet, issue_client
from migrator.topology.service import RouteInfo, token_digest
from migrator.topology.tls import check_listen, client_tls, host_of, is_local


def test_a_fleet_of_certificates_with_roles(tmp_path):
    made = init_fleet(tmp_path / "certs", sans=["topology", "10.0.0.7"])
    assert made["created"] == ["ca", "server", "reader", "mover", "admin"]
    for role in ("reader", "mover", "admin"):
        pem = made["clients"][role]["cert"].read_bytes()
        assert identity_of_pem(pem) == Identity(role, role)
        assert stat.S_IMODE(os.stat(made["clients"][role]["key"]).st_mode) == 0o600
    server = describe(made["server"]["cert"])
    assert {"localhost", "127.0.0.1", "::1", "topology", "10.0.0.7"} <= set(server["sans"])
    assert identity_of_pem(made["server"]["cert"].read_bytes()).role is None  # a server certificate grants nothing
    assert 396 < server["days_left"] <= 397
    # Again: the CA and the certificates are kept; --renew issues new leaves from the same CA.
    assert init_fleet(tmp_path / "certs")["created"] == []
    before = made["clients"]["mover"]["cert"].read_bytes()
    assert init_fleet(tmp_path / "certs", renew=True)["created"] == ["server", "reader", "mover", "admin"]
    assert made["clients"]["mover"]["cert"].read_bytes() != before
    assert describe(made["clients"]["mover"]["cert"])["issuer"] == describe(made["ca"])["subject"]
    router = issue_client(tmp_path / "certs", "router-7", "reader", days=30)
    assert identity_of_pem(router["cert"].read_bytes()) == Identity("router-7", "reader")
    with pytest.raises(CertificateError):
        issue_client(tmp_path / "certs", "ca", "admin")
    with pytest.raises(CertificateError, match="no CA"):
        issue_client(tmp_path / "empty", "x", "reader")


def test_roles_are_ordered():
    reader, mover, admin, nobody = (Identity("x", r) for r in ("reader", "mover", "admin", None))
    assert reader.may("reader") and not reader.may("mover") and not reader.may("admin")
    assert mover.may("reader") and mover.may("mover") and not mover.may("admin")
    assert admin.may("reader") and admin.may("mover") and admin.may("admin")
    assert not nobody.may("reader")


def test_routes_carry_a_digest_that_only_a_token_holder_can_match():
    route = RouteInfo(1, "a", 1, "frozen", token_digest("tok-1"))
    assert route.held_by("tok-1") and not route.held_by("tok-2") and not route.held_by(None)
    assert route.holder(["x", "tok-1"]) == "tok-1" and route.holder(["x"]) is None
    assert "tok-1" not in repr(route)
    assert not RouteInfo(1, "a", 1, "active", None).held_by("tok-1")


@pytest.mark.parametrize("address, host, local", [
    ("127.0.0.1:50051", "127.0.0.1", True), ("localhost:1", "localhost", True), ("[::1]:5", "::1", True),
    ("unix:/tmp/t.sock", None, True), ("0.0.0.0:50051", "0.0.0.0", False), ("topology:50051", "topology", False),
    ("dns:///topology:50051", "topology", False), ("10.1.2.3:1", "10.1.2.3", False), ("127.1.2.3:1", "127.1.2.3", True),
])
def test_which_addresses_are_local(address, host, local):
    assert host_of(address) == host
    assert is_local(address) is local


def _settings(**topology):
    base = {"address": "127.0.0.1:50051", "listen": "127.0.0.1:50051", "tls": None, "insecure": False}
    return SimpleNamespace(topology=SimpleNamespace(**{**base, **topology}), resolve_path=lambda p: p)


def test_without_tls_only_local_addresses(caplog):
    check_listen(_settings(), "127.0.0.1:50051")  # allowed, with a warning
    assert "WITHOUT TLS" in caplog.text
    with pytest.raises(ConfigError, match="refuses to listen on 0.0.0.0:50051 without TLS"):
        check_listen(_settings(), "0.0.0.0:50051")
    caplog.clear()
    check_listen(_settings(insecure=True), "0.0.0.0:50051")
    assert "INSECURE" in caplog.text
    assert client_tls(_settings()) is None
    with pytest.raises(ConfigError, match="would travel in clear"):
        client_tls(_settings(address="topology:50051"))
    assert client_tls(_settings(address="topology:50051", insecure=True)) is None


def _flower(**options):
    return SimpleNamespace(**{"address": "", "port": 5555, "unix_socket": "", "basic_auth": None, "auth": "",
                              **options})


def test_flower_binds_loopback_unless_authenticated():
    default = _flower()
    assert check_flower(default) is None and default.address == "127.0.0.1"
    assert check_flower(_flower(address="localhost")) is None
    assert "refuses to listen on 0.0.0.0:5555" in check_flower(_flower(address="0.0.0.0"))
    assert check_flower(_flower(address="0.0.0.0", basic_auth=["ops:pw"])) is None
    assert check_flower(_flower(address="10.0.0.2", auth=".*@example.com")) is None
    assert check_flower(_flower(unix_socket="/run/flower.sock")) is None
