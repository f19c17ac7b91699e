"""The test suite's fleets: ``migrator.fleet.LocalFleet`` with the suite's settings and certificates.

The Topology Service of every test fleet runs with mutual TLS: one CA and certificate set per test
process (:func:`fleet_certs`, EC keys, a few milliseconds), reused by every fleet. The config's client
certificate is the admin's (tests provision and seed); workers and the API get the mover's, as in
deploy/. Moves use small batches and short timings so tests see ranges, checkpoints and recoveries.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from migrator.fleet.config import merge
from migrator.fleet.local import LocalFleet

TEST_SETTINGS = {
    "moves": {"batch_rows": 500, "chunk_rows": 2000, "blob_batch": 10, "drain_timeout_s": 10,
              "lease_ttl_s": 10, "stale_after_s": 15, "reconcile_every_s": 2},
    # Every test's cells share one PostgreSQL server with the rest of the suite: its autovacuum and other
    # tests' lock waits would slow moves down at random. tests/integration/test_throttle.py turns it on.
    "health": {"enabled": False},
}

_CERTS: dict = {}


def fleet_certs() -> dict:
    """The test session's certificates (``migrator.topology.certs.init_fleet``), made on first use."""
    if not _CERTS:
        from migrator.topology.certs import init_fleet

        root = Path(tempfile.mkdtemp(prefix="cmt-certs-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CERTS.update(init_fleet(root))
    return _CERTS


def make_fleet(root: Path, *, cells: int = 3, broker_url: str = "redis://127.0.0.1:6379/0",
               topology: bool = True, overrides: dict | None = None, blobs: dict[str, dict] | None = None
               ) -> LocalFleet:
    """Databases and a config file (nothing started, cells not provisioned: ``fleet.init()``)."""
    settings = merge({k: dict(v) for k, v in TEST_SETTINGS.items()}, overrides)
    return LocalFleet.create(root, cells=cells, broker_url=broker_url, topology=topology, certs=fleet_certs(),
                             overrides=settings, blobs=blobs)


def client_tls(role: str = "admin"):
    """TLS material of a Topology Service client in ``role`` (for ``TopologyClient(..., tls=...)``)."""
    from migrator.topology.tls import ClientTls

    certs = fleet_certs()
    client = certs["clients"][role]
    return ClientTls(ca=certs["ca"].read_bytes(), cert=client["cert"].read_bytes(), key=client["key"].read_bytes(),
                     server_name=None)


def start_worker(config_path: Path, log_path: Path, **kwargs):
    """``celery -A tasks worker`` of a test fleet, calling the Topology Service as the mover (as in deploy/);
    arguments of ``migrator.fleet.services.start_worker``."""
    from migrator.fleet.config import role_env
    from migrator.fleet.services import child_env
    from migrator.fleet.services import start_worker as start

    return start(config_path, log_path, env=child_env(config_path, role_env(fleet_certs(), "mover")), **kwargs)
