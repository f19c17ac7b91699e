"""The demo's edge router: a sample application per cell, HAProxy and ``migrator router sync``.

When HAProxy is installed (Debian: ``apt-get install haproxy``), ``migrator demo`` puts the edge in
front of its cells, as deploy/Procfile does, and during the move sends requests for the moving
organization through it: a write and a read every 100 ms, each answer noted. The summary shows them
crossing over: answered by the source cell, refused with 503 and Retry-After while the organization
is frozen (by HAProxy itself, or by the source's freeze guard through its application), answered by
the target cell. Everything listens on unix sockets next to the demo's others: the demo opens no TCP
port. Without HAProxy the demo says how to get it and goes on without the edge.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass

import yaml

from migrator.demo.fleet import DemoError
from migrator.router.haproxy_config import write

CLIENT_INTERVAL_S = 0.1


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket."""

    def __init__(self, path: str, timeout: float = 5.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _request(path: str, method: str, url: str, body: dict | None = None, headers: dict | None = None):
    conn = UnixHTTPConnection(path)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, url, body=data, headers={**(headers or {}),
                                                      **({"Content-Type": "application/json"} if data else {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Round:
    t: float
    write: str  # what the write got: "201 from cell-1", "503 + Retry-After from HAProxy", ...
    read: str


class DemoEdge:
    """The edge's processes (registered with the demo fleet, so they stop with it) and the demo's client."""

    def __init__(self, fleet, say, router_socket: str):
        self.fleet, self.say, self.router_socket = fleet, say, router_socket
        self.rounds: list[Round] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.org: int | None = None

    @classmethod
    def start(cls, fleet, say) -> DemoEdge | None:
        """Start the edge in front of the fleet's cells (routes must exist); None without HAProxy."""
        exe = shutil.which("haproxy")
        if exe is None:
            say("edge router: not started (HAProxy is not installed; `apt-get install haproxy` shows requests "
                "following the flip through it)")
            return None

        paths = fleet.paths
        sockets = paths.topology_socket.parent  # short enough for unix socket paths
        edge_dir = paths.root / "router"
        config = yaml.safe_load(paths.config.read_text())
        for name, cell in config["cells"].items():
            cell["app_servers"] = [f"unix:{sockets / f'app-{name}.sock'}"]
        config["router"] = {"listen": f"unix:{sockets / 'router.sock'}", "map_dir": str(edge_dir),
                            "haproxy_config": str(edge_dir / "haproxy.cfg"),
                            "admin_sockets": [str(sockets / "router-admin.sock")], "metrics_port": None}
        paths.config.write_text(yaml.safe_dump(config, sort_keys=False))
        settings = fleet.settings()
        edge = cls(fleet, say, str(sockets / "router.sock"))
        started = time.monotonic()
        cli = [sys.executable, "-m", "migrator.cli.main"]
        for name in settings.cells:
            edge._start(f"app-{name}", [*cli, "sample-app", "serve", "--cell", name])
        for name in settings.cells:  # up before HAProxy's first health check
            edge._wait(lambda name=name: _request(str(sockets / f"app-{name}.sock"), "GET", "/healthz")[0] == 200,
                       f"the sample application of {name}")
        write(settings)
        edge._start("router", [exe, "-db", "-f", str(edge_dir / "haproxy.cfg")])
        reader = {"MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": str(paths.certs / "reader.pem"),
                  "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": str(paths.certs / "reader-key.pem")}
        edge._start("router-sync", [*cli, "router", "sync"], env=reader)
        edge._wait(lambda: _request(edge.router_socket, "GET", "/_migrator/healthz")[0] == 200, "HAProxy")
        say(f"edge router: HAProxy on {edge.router_socket}, a sample application per cell, `migrator router sync` "
            f"(a reader) keeping its maps current; up in {time.monotonic() - started:.1f} s. Try it: curl "
            f"--unix-socket {edge.router_socket} -H 'X-Organization-Id: ORG' http://router/orgs/ORG/notes")
        return edge

    def _start(self, name: str, args: list[str], env: dict | None = None) -> None:
        ref = self.fleet.processes.get(name)
        if ref is not None and ref.alive():
            return  # a kept fleet already runs it
        self.fleet._spawn(name, args, env)

    def _wait(self, ready, what: str, timeout: float = 60) -> None:

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise DemoError(f"{what} did not come up within {timeout:.0f} s", f"see the logs in {self.fleet.paths.logs}")

    def route(self, org: int) -> str:
        status, _, body = _request(self.router_socket, "GET", "/_migrator/route",
                                   headers={"X-Organization-Id": str(org)})
        return body.decode().strip() if status == 200 else ""

    # -- the client
    def follow(self, org: int, cell: str) -> None:
        """Send a write and a read for ``org`` through the router every 100 ms until :meth:`summary`."""
        self.org = org
        self._wait(lambda: self.route(org).startswith(cell), f"HAProxy to route organization {org}")
        self._thread = threading.Thread(target=self._run, name="demo-edge-client", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        headers = {"X-Organization-Id": str(self.org)}
        n = 0
        while not self._stop.wait(CLIENT_INTERVAL_S):
            n += 1
            t = time.time()
            try:
                write = _request(self.router_socket, "POST", f"/orgs/{self.org}/notes", {"note": f"demo {n}"}, headers)
                read = _request(self.router_socket, "GET", f"/orgs/{self.org}/notes?limit=1", None, headers)
            except OSError:
                continue
            self.rounds.append(Round(t, _describe(write), _describe(read)))

    def summary(self, target: str, out) -> dict:
        """Stop the client once HAProxy routes to ``target`` (and a few requests got there); print and return
        what happened, in order: runs of answers from the same place."""
        if self._thread is None:
            return {}
        try:
            self._wait(lambda: self.route(self.org) == f"{target} active", f"HAProxy to route to {target}", 30)
            seen = len(self.rounds)
            self._wait(lambda: len(self.rounds) >= seen + 3, "requests after the flip", 30)
        finally:
            self._stop.set()
            self._thread.join(5)
        runs: list[dict] = []
        for r in self.rounds:
            if not runs or (runs[-1]["write"], runs[-1]["read"]) != (r.write, r.read):
                runs.append({"write": r.write, "read": r.read, "rounds": 0, "from": r.t, "to": r.t})
            runs[-1]["rounds"] += 1
            runs[-1]["to"] = r.t
        out.print(f"Requests for organization {self.org} through the router during the move (a write and a read "
                  f"every {CLIENT_INTERVAL_S * 1000:.0f} ms), as they crossed over:", highlight=False, soft_wrap=True)
        start = self.rounds[0].t if self.rounds else 0.0
        for run in runs:
            out.print(f"  {run['from'] - start:6.2f} s to {run['to'] - start:6.2f} s, {run['rounds']:3d} x: "
                      f"write -> {run['write']}; read -> {run['read']}", highlight=False, soft_wrap=True)
        return {"organization_id": self.org, "rounds": len(self.rounds),
                "runs": [{k: (round(v - start, 3) if k in ("from", "to") else v) for k, v in r.items()} for r in runs]}


def _describe(answer) -> str:
    status, headers, body = answer
    where = headers.get("x-cell")
    if status == 503:
        code = ""
        if where:
            try:
                code = f" ({json.loads(body).get('code')})"
            except ValueError:
                pass
        return f"503 + Retry-After {headers.get('retry-after', '?')} s from {where or 'HAProxy (frozen)'}{code}"
    return f"{status} from {where or 'HAProxy'}"
