"""Every listener binds 127.0.0.1 unless told otherwise (issue 14), checked on the real processes by
the addresses their ports listen on (/proc/net/tcp): Flower, the control-database exporter, the API.
Flower refuses to serve unauthenticated beyond loopback."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from migrator.fleet.processes import BIN, Process, free_port, wait_for
from migrator.fleet.services import child_env
from tests.support import ROOT
from tests.support.api import TOKEN, configure
from tests.support.listeners import listening_on

pytestmark = pytest.mark.integration


def _serve(fleet, tmp_path, name: str, args: list[str], env: dict | None = None) -> Process:
    return Process(args, {**child_env(fleet.config_path), **(env or {})}, tmp_path / f"{name}.log").start()


def _listening(proc: Process, port: int) -> set[str]:
    def up():
        if not proc.alive():
            raise RuntimeError(proc.log()[-3000:])
        return listening_on(port)

    return wait_for(up, timeout=30, what=f"port {port}")


def test_flower_binds_loopback_and_refuses_to_serve_others_without_authentication(fleet, tmp_path):
    flower = [str(BIN / "celery"), "-A", "tasks", "flower"]
    # Without authentication on every interface: refused at start, one clear line.
    port = free_port()
    out = subprocess.run([*flower, "--address=0.0.0.0", f"--port={port}"], env=child_env(fleet.config_path),
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Flower refuses to listen on 0.0.0.0" in out.stderr and "--basic-auth" in out.stderr
    # Without an address it binds 127.0.0.1 (Flower's own default is every interface); with
    # authentication it may listen wider, and asks for the credentials.
    cases = [("flower-default", [], {}, {"127.0.0.1"}, "/healthcheck", 200),
             ("flower-auth", ["--address=0.0.0.0"], {"FLOWER_BASIC_AUTH": "ops:pw-0123456789"}, {"0.0.0.0"},
              "/api/workers", 401)]
    for name, args, env, bound, path, status in cases:
        port = free_port()
        proc = _serve(fleet, tmp_path, name, [*flower, *args, f"--port={port}"], env=env)
        try:
            assert _listening(proc, port) == bound, name
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == status,  # noqa: B023
                     timeout=30, what=f"{name} answering {status}")
        finally:
            proc.stop()


def test_the_exporter_and_the_api_bind_loopback_by_default(fleet, topology_server, tmp_path):
    port = free_port()
    exporter = _serve(fleet, tmp_path, "exporter", [str(BIN / "migrator"), "metrics", "serve", "--port", str(port)])
    try:
        assert _listening(exporter, port) == {"127.0.0.1"}
        text = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, timeout=20,
                        what="exporter")
        # The Topology Service's certificates, with their expiry dates, for CertificateExpiresSoon.
        expiring = [line for line in text.splitlines()
                    if line.startswith("migrator_certificate_expiry_timestamp_seconds{")]
        assert {w for w in ("ca", "server_cert", "client_cert") if any(f'which="{w}"' in line for line in expiring)} \
            == {"ca", "server_cert", "client_cert"}
    finally:
        exporter.stop()
    configure(fleet, api={"token": TOKEN, "listen_port": free_port()})
    port = fleet.settings().api.listen_port
    api = _serve(fleet, tmp_path, "api", [str(BIN / "migrator"), "api", "serve"])
    try:
        assert _listening(api, port) == {"127.0.0.1"}
    finally:
        api.stop()
