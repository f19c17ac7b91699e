"""A test fleet: a control database and N cell databases with blob stores, plus a config file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.databases import create_database, drop_database, unique_name
from tests.support.processes import free_port


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
        "topology": {"address": listen if topology else None, "listen": listen},
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
