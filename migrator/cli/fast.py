"""Commands answered without loading the whole CLI: ``migrator topology classify ORG [--json] [-c FILE]``.

A route lookup is what scripts (and people at a prompt) call most, so it starts fast: no typer, no
pydantic model of the config, no SQLAlchemy, none of the other commands; it reads the ``topology:``
section of the config file (``${VAR}`` expanded, ``MIGRATOR_TOPOLOGY__*`` overrides applied), makes
one ``Classify`` call with the config's client certificate and prints what the full command prints.

Whenever it meets something it does not handle here (an in-process Topology Service, an override it
does not know, any other option such as ``--help``, a config the full model would refuse to use
without TLS) it returns None and the full CLI runs the command: same answer, slower start. It does not
validate the rest of the config.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from migrator.errors import MigratorError

_TLS_KEYS = {"ca", "server_cert", "server_key", "client_cert", "client_key", "server_name"}
# topology.* keys a client does not use: overriding them changes nothing here.
_SERVER_KEYS = {"listen", "sequence_block", "notify_channel", "watch_heartbeat_s", "max_watchers"}
_TRUE, _FALSE = {"1", "true", "yes", "on", "t", "y"}, {"0", "false", "no", "off", "f", "n"}


def run_fast(argv: list[str]) -> int | None:
    """The exit code of a command answered here, or None: let the full CLI run it."""
    if argv[:2] != ["topology", "classify"]:
        return None
    args = _classify_args(argv[2:])
    if args is None:
        return None
    org, as_json, config = args
    try:
        client = _client(config)
        if client is None:
            return None
        try:
            route = client.classify(org)
        finally:
            client.close()
    except MigratorError as exc:
        _error(exc)
        return exc.exit_code
    if as_json:
        sys.stdout.write(json.dumps(dataclasses.asdict(route), indent=2, default=str) + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("organization", "cell", "version", "state", "token (sha256)")
        table.add_row(str(route.organization_id), route.cell, str(route.version), route.state, route.token_digest or "")
        Console().print(table)
    return 0


def _classify_args(rest: list[str]) -> tuple[int, bool, str | None] | None:
    org, as_json, config = None, False, os.environ.get("MIGRATOR_CONFIG")
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--json":
            as_json = True
        elif arg in ("--config", "-c") and i + 1 < len(rest):
            config = rest[i + 1]
            i += 1
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif org is None and (arg.isdigit() or (arg.startswith("-") and arg[1:].isdigit())):
            org = int(arg)
        else:
            return None  # --help, a typo, a second argument: the full CLI says what is wrong
        i += 1
    return (org, as_json, config) if org is not None else None


def _client(config: str | None):
    """A Topology Service client from the config's topology section, or None when the full CLI must decide."""
    from migrator.configfile import DEFAULT_CONFIG_PATH, read_config_file

    path = Path(config or DEFAULT_CONFIG_PATH)
    if not path.exists():
        return None  # the full CLI explains (or runs from MIGRATOR_CONTROL_DSN alone)
    topology = read_config_file(path).get("topology") or {}
    if not isinstance(topology, dict):
        return None
    topology = dict(topology)
    if not _apply_env(topology):
        return None
    address = topology.get("address", "127.0.0.1:50051")
    tls = topology.get("tls")
    insecure = _bool(topology.get("insecure", False))
    if not isinstance(address, str) or not address or insecure is None:
        return None
    if tls is not None and not isinstance(tls, dict):
        return None

    from migrator.topology.client import TopologyClient
    from migrator.topology.tls import ClientTls, is_local, read_file

    if tls is None:
        if not is_local(address) and not insecure:
            return None  # the full CLI refuses with its message
        return TopologyClient(address)
    if not tls.get("ca") or not tls.get("client_cert") or not tls.get("client_key"):
        return None
    base = path.resolve().parent

    def file(key: str, what: str) -> bytes:
        value = Path(tls[key])
        return read_file(value if value.is_absolute() else base / value, what)

    return TopologyClient(address, tls=ClientTls(ca=file("ca", "the CA certificate"),
                                                 cert=file("client_cert", "the client certificate"),
                                                 key=file("client_key", "the client key"),
                                                 server_name=tls.get("server_name")))


def _apply_env(topology: dict) -> bool:
    """Apply MIGRATOR_TOPOLOGY__* overrides as the config model would; False on one it does not know."""
    for name, value in os.environ.items():
        upper = name.upper()
        if not upper.startswith("MIGRATOR_TOPOLOGY"):
            continue
        parts = [p.lower() for p in upper[len("MIGRATOR_"):].split("__")]
        if parts[0] != "topology" or len(parts) < 2:
            return False
        key = parts[1:]
        if key == ["address"]:
            topology["address"] = value
        elif key == ["insecure"]:
            topology["insecure"] = value
        elif key[0] == "tls" and len(key) == 2 and key[1] in _TLS_KEYS:
            topology["tls"] = {**(topology.get("tls") or {}), key[1]: value}
        elif len(key) == 1 and key[0] in _SERVER_KEYS:
            continue
        else:
            return False
    return True


def _bool(value) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _error(exc: MigratorError) -> None:
    from rich.console import Console

    from migrator.dsn import redact

    err = Console(stderr=True, soft_wrap=True)
    err.print(f"[bold red]error:[/] {redact(exc.message)}")
    if exc.hint:
        err.print(f"[yellow]hint:[/] {redact(exc.hint)}")
