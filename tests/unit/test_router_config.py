"""The router's pieces that need no fleet: HAProxy's configuration, map files, the fast classify path."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from migrator.cli.fast import _apply_env, _classify_args
from migrator.config import load_settings
from migrator.errors import ConfigError
from migrator.router.check import compare
from migrator.router.haproxy_config import org_expression, render, write
from migrator.router.maps import MapFiles, frozen_entries, orgs_entries, read_map_file
from migrator.router.maps import render as render_map
from migrator.topology.routes import RouteInfo
from tests.support.edge import haproxy_binary


def _settings(tmp_path, router=None, **cells):
    cells = cells or {"cell-1": ["127.0.0.1:8101"], "cell-2": ["127.0.0.1:8102", "127.0.0.1:8112"]}
    config = {"control_dsn": "postgresql://u:secret@127.0.0.1/c",
              "cells": {n: {"dsn": f"postgresql://u@127.0.0.1/{n}", "app_servers": s} for n, s in cells.items()},
              "router": {"map_dir": "maps", "admin_sockets": ["run/admin.sock"], **(router or {})}}
    path = tmp_path / "migrator.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


def test_the_configuration_routes_by_map_and_refuses_frozen_writes(tmp_path):
    text = render(_settings(tmp_path))
    maps = tmp_path / "maps"
    assert f"stats socket {tmp_path / 'run' / 'admin.sock'} mode 600 level admin" in text
    assert f"var(txn.org),map({maps / 'orgs.map'})" in text
    assert "use_backend cell_%[var(txn.cell)] if { var(txn.cell) -m found }" in text
    assert f"{{ var(txn.org),map({maps / 'frozen.map'}) -m found }}" in text
    assert "hdr Retry-After 1 if { var(txn.state) -m str frozen } !METH_GET !METH_HEAD !METH_OPTIONS" in text
    assert "http-request return status 404" in text and "default_backend no_cell_backend" in text
    assert "server app1 127.0.0.1:8102 check" in text and "server app2 127.0.0.1:8112 check" in text
    assert "secret" not in text


@pytest.mark.parametrize(("router", "expression"), [
    ({}, "req.fhdr(X-Organization-Id)"),
    ({"org_from": "path", "org_path_segment": 2}, "path,field(3,/)"),
    ({"org_from": "sample", "org_sample": "req.cook(org)"}, "req.cook(org)"),
])
def test_how_a_request_names_its_organization(tmp_path, router, expression):
    settings = _settings(tmp_path, router)
    assert org_expression(settings.router) == expression
    assert f"http-request set-var(txn.org) {expression}" in render(settings)


def test_unix_sockets_for_the_frontend_and_the_applications(tmp_path):
    text = render(_settings(tmp_path, {"listen": "unix:/run/router.sock"}, **{"cell-1": ["unix:/run/app-1.sock"]}))
    assert "    bind /run/router.sock\n" in text and "    server app1 /run/app-1.sock check" in text


def test_a_default_cell_instead_of_404_and_a_cell_without_servers(tmp_path):
    text = render(_settings(tmp_path, {"unknown_org": "cell-1"}, **{"cell-1": ["127.0.0.1:8101"], "cell-3": []}))
    assert "default_backend cell_cell-1" in text and "http-request return status 404" not in text
    assert "cell cell-3 has no application servers" in text


def test_bad_router_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="router.unknown_org 'cell-9' is neither 404 nor a configured cell"):
        _settings(tmp_path, {"unknown_org": "cell-9"})
    with pytest.raises(ConfigError, match="org_from: sample needs org_sample"):
        _settings(tmp_path, {"org_from": "sample"})
    with pytest.raises(ConfigError, match="app_servers"):
        _settings(tmp_path, **{"cell-1": ["no-port"]})
    with pytest.raises(ConfigError, match="no cell has application servers"):
        render(_settings(tmp_path, **{"cell-1": []}))


@pytest.fixture(scope="module")
def haproxy():
    """HAProxy's binary, installed with apt when missing and possible (as the router's integration tests do:
    a collection-time skipif would skip these on a fresh machine where a later test installs it)."""
    path, why = haproxy_binary()
    if path is None:
        pytest.skip(f"haproxy is not installed (Debian package haproxy): {why}")
    return path


@pytest.mark.parametrize("router", [{}, {"org_from": "path"}, {"unknown_org": "cell-2", "access_log": True},
                                    {"listen": "unix:/tmp/router.sock"}])
def test_haproxy_accepts_the_configuration(tmp_path, router, haproxy):
    cells = {"cell-1": ["127.0.0.1:8101"], "cell-2": [f"unix:{tmp_path}/app-2.sock"]}
    result = write(_settings(tmp_path, router, **cells))
    assert result["checked_with_haproxy"] and read_map_file(tmp_path / "maps" / "orgs.map") == {}
    check = subprocess.run([haproxy, "-c", "-f", result["config"]], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_maps_from_routes_and_their_files(tmp_path):
    routes = [RouteInfo(1, "cell-1", 1, "active", None, 3), RouteInfo(10, "cell-2", 2, "frozen", "ab", 9),
              RouteInfo(2, "cell-1", 1, "active", None, 4)]
    orgs, frozen = orgs_entries(routes), frozen_entries(routes)
    assert orgs == {"1": "cell-1", "2": "cell-1", "10": "cell-2"} and frozen == {"10": "cell-2"}
    path = MapFiles(tmp_path).orgs
    path.write_text(render_map(orgs, "written by a test\nrevision 9"))
    assert path.read_text().splitlines() == ["# written by a test", "# revision 9", "1 cell-1", "2 cell-1",
                                             "10 cell-2"]
    assert read_map_file(path) == orgs
    assert compare(orgs, {"1": "cell-2", "10": "cell-2", "77": "cell-1"}) == (
        1, 1, 1, ["2: missing (want cell-1)", "77: extra (cell-1)", "1: cell-2, want cell-1"])


def test_the_fast_classify_path_takes_only_what_it_understands(monkeypatch):
    monkeypatch.delenv("MIGRATOR_CONFIG", raising=False)
    assert _classify_args(["42"]) == (42, False, None)
    assert _classify_args(["42", "--json", "-c", "x.yaml"]) == (42, True, "x.yaml")
    assert _classify_args(["--config=y.yaml", "7"]) == (7, False, "y.yaml")
    for other in (["--help"], ["42", "43"], ["x"], [], ["42", "--verbose"]):
        assert _classify_args(other) is None, other  # the full CLI answers those
    for name in [k for k in __import__("os").environ if k.upper().startswith("MIGRATOR_TOPOLOGY")]:
        monkeypatch.delenv(name)
    topology = {"address": "a:1", "tls": {"ca": "ca.pem"}}
    monkeypatch.setenv("MIGRATOR_TOPOLOGY__ADDRESS", "b:2")
    monkeypatch.setenv("migrator_topology__tls__client_cert", "me.pem")
    monkeypatch.setenv("MIGRATOR_TOPOLOGY__LISTEN", "0.0.0.0:1")
    assert _apply_env(topology) and topology == {"address": "b:2", "tls": {"ca": "ca.pem", "client_cert": "me.pem"}}
    monkeypatch.setenv("MIGRATOR_TOPOLOGY", '{"address": "c:3"}')
    assert not _apply_env(dict(topology))
