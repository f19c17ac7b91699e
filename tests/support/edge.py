"""The edge of a test fleet as real processes: a sample application per cell, HAProxy, ``router sync``.

:class:`Edge` adds ``cells.<name>.app_servers`` and a ``router:`` section (free ports, files under
its folder) to a fleet's config, then starts what a deployment runs: ``migrator sample-app serve``
per cell, ``migrator router config`` + ``haproxy -db -f``, and ``migrator router sync`` with a
reader's certificate. HAProxy comes from Debian's package (:func:`haproxy_binary` installs it with
apt-get when missing, as the deploy tests do for promtool). Used by the router tests and
benchmarks/router.py.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from pathlib import Path

import yaml

from migrator.fleet.processes import BIN, Process, ProcessExited, free_port, wait_for
from migrator.fleet.services import child_env
from tests.support import apt

PACKAGES = ("haproxy",)


def haproxy_binary() -> tuple[str | None, str | None]:
    """(path of haproxy, None) or (None, why it is missing)."""
    reason = apt.ensure(PACKAGES, lambda: [] if shutil.which("haproxy") else ["haproxy"])
    return shutil.which("haproxy"), reason


def reader_env() -> dict[str, str]:
    from migrator.fleet.config import role_env
    from tests.support.fleet import fleet_certs

    return role_env(fleet_certs(), "reader")


def http_get(port: int, path: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode(errors="replace")
    finally:
        conn.close()


def http_send(port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None,
              timeout: float = 5.0) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {**(headers or {}), **({"Content-Type": "application/json"} if data is not None else {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode(errors="replace")
    finally:
        conn.close()


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            out[head] = float(value)
    return out


class Edge:
    """Sample applications, HAProxy and router sync in front of a fleet (``fleet.config_path``)."""

    def __init__(self, config_path: Path, root: Path, cells: list[str], *, sync_env: dict | None = None,
                 router: dict | None = None):
        self.config_path = Path(config_path)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cells = list(cells)
        self.sync_env = sync_env if sync_env is not None else reader_env()
        self.app_ports = {cell: free_port() for cell in self.cells}
        self.port = free_port()
        self.metrics_port = free_port()
        self.apps: dict[str, Process] = {}
        self.haproxy: Process | None = None
        self.sync: Process | None = None
        self._sync_runs = 0
        config = yaml.safe_load(self.config_path.read_text())
        for cell in self.cells:
            config["cells"][cell]["app_servers"] = [f"127.0.0.1:{self.app_ports[cell]}"]
        config["router"] = {"listen": f"127.0.0.1:{self.port}", "map_dir": str(self.root / "maps"),
                            "haproxy_config": str(self.root / "haproxy.cfg"),
                            "admin_sockets": [str(self.root / "haproxy-admin.sock")],
                            "metrics_port": self.metrics_port, "verify_every_s": 2.0, **(router or {})}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def env(self) -> dict[str, str]:
        return child_env(self.config_path)

    def migrator(self, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "migrator"), *args], env={**self.env(), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    # -- processes
    def start_apps(self) -> None:
        for cell in self.cells:
            proc = Process([str(BIN / "migrator"), "sample-app", "serve", "--cell", cell], self.env(),
                           self.root / f"app-{cell}.log", name=f"app-{cell}").start()
            self.apps[cell] = proc
        for cell, proc in self.apps.items():
            def up(cell=cell, proc=proc):
                if not proc.alive():
                    raise ProcessExited(f"sample app of {cell} exited:\n{proc.log()[-2000:]}")
                return http_get(self.app_ports[cell], "/healthz")[0] == 200
            wait_for(up, timeout=60, what=f"the sample app of {cell}")

    def start_haproxy(self, exe: str) -> None:
        result = self.migrator("router", "config", "--json")
        if result.returncode != 0:
            raise RuntimeError(f"migrator router config failed:\n{result.stdout}{result.stderr}")
        self.haproxy = Process([exe, "-db", "-f", str(self.root / "haproxy.cfg")], self.env(),
                               self.root / "haproxy.log", name="haproxy").start()

        def up():
            if not self.haproxy.alive():
                raise ProcessExited(f"haproxy exited:\n{self.haproxy.log()[-2000:]}")
            return http_get(self.port, "/_migrator/healthz")[0] == 200
        wait_for(up, timeout=30, what="haproxy")

    def start_sync(self) -> Process:
        self._sync_runs += 1
        self.sync = Process([str(BIN / "migrator"), "router", "sync"], {**self.env(), **self.sync_env},
                            self.root / f"router-sync-{self._sync_runs}.log", name="router-sync").start()
        return self.sync

    def wait_sync_current(self, revision: int = 0, timeout: float = 60) -> dict[str, float]:
        """Wait until router sync reports its HAProxy current at ``revision`` or later; its metrics then."""
        sock = str(self.root / "haproxy-admin.sock")

        def current():
            if self.sync is None or not self.sync.alive():
                raise ProcessExited(f"router sync exited:\n{self.sync.log()[-3000:] if self.sync else ''}")
            m = self.metrics()
            applied = m.get(f'migrator_router_applied_revision{{haproxy="{sock}"}}', -1)
            lag = m.get(f'migrator_router_sync_lag_seconds{{haproxy="{sock}"}}', -1)
            return m if m.get("migrator_router_stream_connected") == 1 and lag == 0 and applied >= revision else None
        return wait_for(current, timeout=timeout, what=f"router sync current at revision {revision}")

    def metrics(self) -> dict[str, float]:
        return parse_metrics(http_get(self.metrics_port, "/metrics")[2])

    def route(self, org: int) -> tuple[str, str] | None:
        """(cell, active|frozen) HAProxy routes ``org`` to right now (its route probe), None if unknown."""
        status, _, body = http_get(self.port, "/_migrator/route", {"X-Organization-Id": str(org)})
        if status == 404:
            return None
        cell, state = body.split()
        return cell, state

    def stop(self) -> None:
        for proc in [self.sync, self.haproxy, *self.apps.values()]:
            if proc is not None:
                proc.stop()


def wait_route(edge: Edge, org: int, want: tuple[str, str], timeout: float = 30) -> None:
    wait_for(lambda: edge.route(org) == want, timeout=timeout, interval=0.02,
             what=f"HAProxy to route organization {org} to {want}")


def flip_revision(topology, org: int) -> int:
    """The revision of the organization's latest flip (route_history id)."""
    return max(h["id"] for h in topology.history(org) if h["action"] == "flip")


