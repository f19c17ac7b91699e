"""A local fleet: a control database and N cell databases on one PostgreSQL server, a config file,
and (on demand) a private Redis, the Topology Service with mutual TLS, and Celery workers.

The test suite makes one per test (:meth:`LocalFleet.create`, its Redis shared by the session), the
benchmarks one per run (``with LocalFleet.create(...)``: everything started, and removed again on
exit, also on Ctrl-C). Every name is unique (databases ``<prefix>_control``, ``<prefix>_cell1`` …, queue
prefix ``<prefix>-``), so fleets can run next to each other on the same server.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from migrator.cells.provision import init_cells
from migrator.config import load_settings
from migrator.control.engine import control_engine, upgrade_control_db
from migrator.fleet.config import fleet_config, role_env, tls_section, write_config
from migrator.fleet.databases import ADMIN_DSN, create_database, drop_database, unique_name
from migrator.fleet.processes import Process, free_port
from migrator.fleet.services import (
    RedisServer,
    child_env,
    start_beat,
    start_topology_server,
    start_worker,
    wait_worker_ready,
)


@dataclass
class LocalFleet:
    root: Path
    config_path: Path
    prefix: str
    control_db: str
    control_dsn: str
    cell_dbs: dict[str, str]
    cell_dsns: dict[str, str]
    broker_url: str
    topology_listen: str
    certs: dict | None
    config: dict = field(default_factory=dict)  # what config_path holds; change it, then write_config()
    admin_dsn: str = ADMIN_DSN
    redis: RedisServer | None = None
    topology: Process | None = None
    beat: Process | None = None
    workers: list[Process] = field(default_factory=list)
    own_root: bool = False  # root is a temporary directory of ours (removed by close unless keep)
    keep: bool = False
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------- making one
    @classmethod
    def create(cls, root: Path | None = None, *, cells: int = 3, broker_url: str | None = None,
               topology: bool = True, certs: dict | None = None, overrides: dict | None = None,
               blobs: dict[str, dict] | None = None, prefix: str = "cmt", admin_dsn: str = ADMIN_DSN,
               keep: bool = False) -> LocalFleet:
        """Databases and the config file. Without ``broker_url`` a private Redis is started; with
        ``certs`` (``migrator.topology.certs.init_fleet``) the Topology Service runs with mutual TLS and the
        config calls it as the admin. ``topology=False``: the service runs in-process (address null)."""
        own_root = root is None
        root = Path(root or tempfile.mkdtemp(prefix=f"{prefix}-fleet-"))
        root.mkdir(parents=True, exist_ok=True)
        name = unique_name(prefix)
        redis = None
        created: list[str] = []
        try:
            if broker_url is None:
                redis = RedisServer(root / "redis").start()
                broker_url = redis.url
            control_db = f"{name}_control"
            control_dsn = create_database(control_db, admin_dsn)
            created.append(control_db)
            cell_dbs, cell_dsns = {}, {}
            for i in range(1, cells + 1):
                cell = f"cell-{i}"
                cell_dbs[cell] = f"{name}_cell{i}"
                cell_dsns[cell] = create_database(cell_dbs[cell], admin_dsn)
                created.append(cell_dbs[cell])
        except BaseException:
            for db in created:
                drop_database(db, admin_dsn)
            if redis is not None:
                redis.stop()
            raise
        listen = f"127.0.0.1:{free_port()}"
        config = fleet_config(control_dsn=control_dsn, broker_url=broker_url, cell_dsns=cell_dsns,
                              blob_root=root / "blobs", topology_address=listen if topology else None,
                              topology_listen=listen, tls=tls_section(certs) if certs else None,
                              queue_prefix=name + "-", blobs=blobs, overrides=overrides)
        config_path = root / "migrator.yaml"
        write_config(config_path, config)
        return cls(root=root, config_path=config_path, prefix=name, control_db=control_db, control_dsn=control_dsn,
                   cell_dbs=cell_dbs, cell_dsns=cell_dsns, broker_url=broker_url, topology_listen=listen,
                   certs=certs, config=config, admin_dsn=admin_dsn, redis=redis, own_root=own_root, keep=keep)

    # ------------------------------------------------------------------------------- using it
    @property
    def workdir(self) -> Path:
        return self.root

    def settings(self):

        return load_settings(self.config_path)

    def blob_dir(self, cell: str) -> Path:
        return self.root / "blobs" / cell

    def write_config(self) -> None:
        """Write ``self.config`` back to ``config_path`` (after changing it)."""
        write_config(self.config_path, self.config)

    def env(self, role: str | None = None) -> dict[str, str]:
        """A child's environment; ``role``: it calls the Topology Service with that role's certificate."""
        return child_env(self.config_path, role_env(self.certs, role) if role and self.certs else None)

    def init(self, names=None):
        """Provision the cells (sample schema, guard, sequence ranges, registration): ``migrator cells init``."""

        return init_cells(self.settings(), names=names)

    def start_topology(self) -> Process:
        """The control database upgraded, then ``migrator topology serve`` on the fleet's listen address."""

        upgrade_control_db(self.control_dsn)
        self.topology = start_topology_server(self.config_path, self.topology_listen, self.root / "topology.log",
                                              env=self.env())
        return self.topology

    def start_worker(self, name: str | None = None, *, concurrency: int = 2, beat: bool = False,
                     queues: str | None = None, app: str = "tasks", extra: list[str] | None = None,
                     ready: bool = True) -> Process:
        """``celery -A tasks worker`` calling the Topology Service as the mover (as in deploy/)."""
        name = name or f"w{len(self.workers) + 1}-{self.prefix}"
        proc = start_worker(self.config_path, self.root / f"worker-{name}.log", name=name, concurrency=concurrency,
                            queues=queues, app=app, extra=extra, env=self.env("mover"),
                            beat_schedule=self.root / f"beat-{name}" if beat else None)
        self.workers.append(proc)
        return wait_worker_ready(proc) if ready else proc

    def start_beat(self) -> Process:
        """``celery -A tasks beat`` as a process of its own (the reconciler outlives any worker)."""
        self.beat = start_beat(self.config_path, self.root / "beat.log", self.root / "beat-schedule",
                               env=self.env("mover"))
        return self.beat

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()

    # ------------------------------------------------------------------------------- removing it
    def drop(self) -> None:
        """Drop the fleet's databases."""
        for db in [self.control_db, *self.cell_dbs.values()]:
            drop_database(db, self.admin_dsn)

    def close(self) -> None:
        """Stop every process the fleet started, drop its databases, and remove its directory if it made one."""
        for p in [*self.workers, self.beat, self.topology]:
            if p is not None:
                with contextlib.suppress(Exception):
                    p.stop()
        self.workers.clear()
        if self.redis is not None:
            self.redis.stop()
        with contextlib.suppress(Exception):

            control_engine.cache_clear()
        self.drop()
        if self.own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
