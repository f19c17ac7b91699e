"""``migrator router config``: HAProxy's configuration, written from the migrator's.

One frontend (``router.listen``) reads the organization of each request (a header, a path segment
or any sample expression), looks it up in ``orgs.map`` and sends the request to the backend of its
cell (``cell_<name>``: the cell's ``app_servers``). Writes (anything but GET, HEAD, OPTIONS) to an
organization in ``frozen.map`` are answered by HAProxy itself: 503 with ``Retry-After``. An
organization without a route gets 404, or goes to ``router.unknown_org``'s cell. Every 503 HAProxy
makes itself (no server of a cell up) carries ``Retry-After`` too, so a client can always retry one.

``migrator router sync`` keeps both maps current through the admin socket this configuration
declares (and rewrites their files, which HAProxy reads when it starts).
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
from pathlib import Path

from migrator.errors import ConfigError, MigratorError
from migrator.router.admin import socket_address
from migrator.router.maps import BACKEND_PREFIX, MapFiles, ensure_files
from migrator.router.maps import write_atomically as write_file

HEALTH_PATH = "/_migrator/healthz"
NO_CELL_BACKEND = "no_cell_backend"


def org_expression(router) -> str:
    """The HAProxy sample expression giving a request's organization id."""
    if router.org_from == "header":
        return f"req.fhdr({router.org_header})"
    if router.org_from == "path":
        return f"path,field({router.org_path_segment + 1},/)"
    return router.org_sample


def socket_bind(address: str, base: Path | None) -> str:
    """The ``stats socket`` address of an admin socket entry of ``router.admin_sockets``."""

    family, target = socket_address(address, base)
    if family == socket.AF_UNIX:
        return target
    host, port = target
    return f"{'ipv6' if family == socket.AF_INET6 else 'ipv4'}@{host}:{port}"


def haproxy_address(address: str) -> str:
    """An address of our config (HOST:PORT or unix:/path) as HAProxy writes it (a unix socket is its path)."""
    return address.removeprefix("unix:")


def _seconds(value: float) -> str:
    return f"{round(value * 1000)}ms"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(settings, *, admin_socket: str | None = None) -> str:
    """The configuration text (raises ConfigError naming a cell without application servers)."""
    router = settings.router
    base = Path(settings.config_path).parent if settings.config_path else None
    files = MapFiles.from_settings(settings)
    if not any(cell.app_servers for cell in settings.cells.values()):
        raise ConfigError("no cell has application servers: the router would have nowhere to send requests",
                          "list each cell's servers in cells.<name>.app_servers (HOST:PORT)")
    sock = socket_bind(admin_socket or router.admin_sockets[0], base)
    retry = router.retry_after_s
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    out = [
        f"# HAProxy configuration written by `migrator router config` from {settings.config_path} at {now}.",
        "# Do not edit: change the migrator's config and run `migrator router config` again, then reload HAProxy.",
        "# `migrator router sync` keeps the two maps current through the admin socket (docs/adr/0018-edge-router.md).",
        "global",
        # A unix socket only HAProxy's user may open; a TCP one (ipv4@HOST:PORT) is for a network you control.
        f"    stats socket {sock} {'' if '@' in sock else 'mode 600 '}level admin",
        f"    maxconn {router.maxconn}",
    ]
    if router.access_log:
        out.append("    log stdout format raw local0 info")
    out += [
        "",
        "defaults",
        "    mode http",
    ]
    if router.access_log:
        out += ["    log global", "    option httplog"]
    out += [
        "    option forwardfor",
        f"    timeout connect {_seconds(router.connect_timeout_s)}",
        f"    timeout client {_seconds(router.client_timeout_s)}",
        f"    timeout server {_seconds(router.server_timeout_s)}",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    retries 2",
        "    option redispatch",
        # Start even while an application server's name does not resolve yet (containers starting).
        "    default-server inter 2s fall 3 rise 2 init-addr last,libc,none",
        # Every 503 HAProxy makes itself (no server of a cell up) can be retried by a client.
        f"    http-error status 503 content-type text/plain string {_quote('the cell is not reachable; retry')} "
        f"hdr Retry-After {retry}",
        "",
        "frontend cells",
        f"    bind {haproxy_address(router.listen)}",
        f"    http-request return status 200 content-type text/plain string ok if {{ path {HEALTH_PATH} }}",
        f"    http-request set-var(txn.org) {org_expression(router)}",
        f"    http-request set-var(txn.cell) var(txn.org),map({files.orgs})",
        "    http-request set-var(txn.state) str(active)",
        f"    http-request set-var(txn.state) str(frozen) if {{ var(txn.org),map({files.frozen}) -m found }}",
    ]
    if router.route_probe_path:
        out.append(f"    http-request return status 200 content-type text/plain lf-string "
                   f"\"%[var(txn.cell)] %[var(txn.state)]\" if {{ path {router.route_probe_path} }} "
                   "{ var(txn.cell) -m found }")
    if router.unknown_org == "404":
        unknown = _quote("no such organization (or none named in the request)")
        out.append(f"    http-request return status 404 content-type text/plain string {unknown} "
                   "unless { var(txn.cell) -m found }")
    default = BACKEND_PREFIX + router.unknown_org if router.unknown_org != "404" else NO_CELL_BACKEND
    out += [
        "    http-request return status 503 content-type text/plain string "
        f"{_quote('the organization is read-only while it moves between cells; retry after Retry-After seconds')} "
        f"hdr Retry-After {retry} if {{ var(txn.state) -m str frozen }} !METH_GET !METH_HEAD !METH_OPTIONS",
        f"    use_backend {BACKEND_PREFIX}%[var(txn.cell)] if {{ var(txn.cell) -m found }}",
        f"    default_backend {default}",
        "",
        # A route to a cell this configuration has no backend for (a cell added since it was written).
        f"backend {NO_CELL_BACKEND}",
        "    http-request return status 503 content-type text/plain string "
        f"{_quote('the router has no backend for this cell: run migrator router config and reload HAProxy')} "
        f"hdr Retry-After {retry}",
    ]
    for name, cell in settings.cells.items():
        out += ["", f"backend {BACKEND_PREFIX}{name}"]
        if not cell.app_servers:
            message = _quote(f"cell {name} has no application servers in the router's configuration; retry later")
            out.append(f"    http-request return status 503 content-type text/plain string {message} "
                       f"hdr Retry-After {retry}")
            continue
        out.append("    balance roundrobin")
        if router.health_check_path:
            out += [f"    option httpchk GET {router.health_check_path}", "    http-check expect status 200"]
        check = " check" if router.health_check_path else ""
        out += [f"    server app{i} {haproxy_address(server)}{check}" for i, server in enumerate(cell.app_servers, 1)]
    return "\n".join(out) + "\n"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy")


def check(path: Path) -> str | None:
    """``haproxy -c -f path``: None if valid (or haproxy is not installed), else HAProxy's complaint."""
    exe = haproxy_binary()
    if exe is None:
        return None
    result = subprocess.run([exe, "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return (result.stdout + result.stderr).strip()[-2000:]
    return None


def write(settings, out: Path | None = None, *, admin_socket: str | None = None, validate: bool = True) -> dict:
    """Write the configuration (and empty maps where none exist); what was written."""

    target = Path(out) if out is not None else settings.resolve_path(settings.router.haproxy_config)
    text = render(settings, admin_socket=admin_socket)
    files = MapFiles.from_settings(settings)
    made = ensure_files(files)
    write_file(target, text)
    problem = check(target) if validate else None
    if problem:
        raise MigratorError(f"HAProxy refuses the configuration written to {target}: {problem}",
                            "fix the router: section of the config (see docs/adr/0018-edge-router.md)")
    warnings = [f"cell {name} has no app_servers: requests for its organizations get 503 (set "
                f"cells.{name}.app_servers)" for name, cell in settings.cells.items() if not cell.app_servers]
    return {"config": str(target), "warnings": warnings, "maps": {"orgs": str(files.orgs), "frozen": str(files.frozen)},
            "maps_created": [str(p) for p in made],
            "admin_socket": socket_bind(admin_socket or settings.router.admin_sockets[0],
                                        Path(settings.config_path).parent if settings.config_path else None),
            "listen": settings.router.listen, "cells": {n: c.app_servers for n, c in settings.cells.items()},
            "checked_with_haproxy": validate and haproxy_binary() is not None}
