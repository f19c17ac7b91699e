"""A test fleet: a control database and N cell databases with blob stores, plus a config file.

The Topology Service of every test fleet runs with mutual TLS: one CA and certificate set per test
process (:func:`fleet_certs`, EC keys, a few milliseconds), reused by every fleet. The config's client
certificate is the admin's (tests provision and seed); workers and the API get the mover's
(:func:`role_env`), as in deploy/.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.databases import create_database, drop_database, unique_name
from tests.support.processes import free_port

_CERTS: dict = {}


def fleet_certs() -> dict:
    """The test session's certificates (``migrator.topology.certs.init_fleet``), made on first use."""
    if not _CERTS:
        from migrator.topology.certs import init_fleet

        root = Path(tempfile.mkdtemp(prefix="cmt-certs-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CERTS.update(init_fleet(root))
    return _CERTS


def tls_config(role: str = "admin") -> dict:
    """A ``topology.tls`` section: the session's CA and server pair, and the client pair of ``role``."""
    certs = fleet_certs()
    client = certs["clients"][role]
    return {"ca": str(certs["ca"]), "server_cert": str(certs["server"]["cert"]),
            "server_key": str(certs["server"]["key"]), "client_cert": str(client["cert"]),
            "client_key": str(client["key"])}


def role_env(role: str) -> dict[str, str]:
    """Environment that makes a process of a test fleet call the Topology Service as ``role``."""
    client = fleet_certs()["clients"][role]
    return {"MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": str(client["cert"]),
            "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": str(client["key"])}


@dataclass
class Fleet:
    root: Path
    config_path: Path
    control_db: str
    control_dsn: str
    cell_dbs: dict[str, str]
    cell_dsns: dict[str, str]
    broker_url: str
    topology_listen: str
    extra: dict = field(default_factory=dict)

    def settings(self):
        from migrator.config import load_settings

        return load_settings(self.config_path)

    def blob_dir(self, cell: str) -> Path:
        return self.root / "blobs" / cell

    def init(self, names=None):
        """Provision the cells (sample schema, guard, sequence ranges): ``migrator cells init``."""
        from migrator.cells.provision import init_cells

        return init_cells(self.settings(), names=names)

    def drop(self) -> None:
        for db in [self.control_db, *self.cell_dbs.values()]:
            drop_database(db)


def make_fleet(root: Path, *, cells: int = 3, broker_url: str = "redis://127.0.0.1:6379/0",
               topology: bool = True, overrides: dict | None = None, blobs: dict[str, dict] | None = None) -> Fleet:
    """``blobs``: the ``blobs:`` config of some cells (e.g. an S3 bucket, tests/support/s3.py); the others
    get a local directory under ``root``."""
    root = Path(root)
    prefix = unique_name("cmt")
    control_db = f"{prefix}_control"
    control_dsn = create_database(control_db)
    cell_dbs, cell_dsns = {}, {}
    for i in range(1, cells + 1):
        name = f"cell-{i}"
        cell_dbs[name] = f"{prefix}_cell{i}"
        cell_dsns[name] = create_database(cell_dbs[name])
    listen = f"127.0.0.1:{free_port()}"
    config = {
        "control_dsn": control_dsn,
        "broker_url": broker_url,
        "cells": {
            name: {"dsn": dsn, "blobs": (blobs or {}).get(name) or {"kind": "local",
                                                                     "path": str(root / "blobs" / name)}}
            for name, dsn in cell_dsns.items()
        },
        "topology": {"address": listen if topology else None, "listen": listen, "tls": tls_config()},
        "moves": {"batch_rows": 500, "chunk_rows": 2000, "blob_batch": 10, "drain_timeout_s": 10,
                  "lease_ttl_s": 10, "stale_after_s": 15, "reconcile_every_s": 2},
        "celery": {"queue_prefix": prefix + "-"},
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "migrator.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return Fleet(root, config_path, control_db, control_dsn, cell_dbs, cell_dsns, broker_url, listen)


def client_tls(role: str = "admin"):
    """TLS material of a Topology Service client in ``role`` (for ``TopologyClient(..., tls=...)``)."""
    from migrator.topology.tls import ClientTls

    certs = fleet_certs()
    client = certs["clients"][role]
    return ClientTls(ca=certs["ca"].read_bytes(), cert=client["cert"].read_bytes(), key=client["key"].read_bytes(),
                     server_name=None)
