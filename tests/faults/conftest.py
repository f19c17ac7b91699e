"""The fault suite's fleet: real PostgreSQL, a Redis of its own (restartable), real worker processes.

Timings are short (lease 3 s, stale after 5 s, reconciler every second) so recoveries happen within
seconds; every fault is real: processes SIGKILLed, servers restarted, connections terminated.
Run alone with ``pytest -m faults``; ``FAULTS_LONG=1`` runs the long version (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os

import pytest

from migrator.fleet.config import merge
from migrator.fleet.services import RedisServer, start_topology_server, wait_worker_ready
from tests.support.fleet import make_fleet, start_worker

LONG = os.environ.get("FAULTS_LONG") == "1"

FAULT_SETTINGS = {
    "moves": {"batch_rows": 250, "chunk_rows": 1500, "blob_batch": 5, "drain_timeout_s": 10, "lease_ttl_s": 3,
              "stale_after_s": 5, "reconcile_every_s": 1},
}


def trials(short: int, long: int) -> int:
    return long if LONG else short


class FaultFleet:
    def __init__(self, fleet, redis: RedisServer, tmp_path):
        self.fleet = fleet
        self.redis = redis
        self.tmp = tmp_path
        self.workers = []
        self._n = 0

    @property
    def settings(self):
        return self.fleet.settings()

    def worker(self, concurrency: int = 2, beat: bool = True, queues: str | None = None):
        """A worker calling as the mover, with beat inside (the reconciler) unless ``beat=False``."""
        self._n += 1
        name = f"w{self._n}"
        proc = start_worker(self.fleet.config_path, self.tmp / f"worker-{name}.log", name=name,
                            concurrency=concurrency, queues=queues,
                            beat_schedule=self.tmp / f"beat-{name}" if beat else None)
        self.workers.append(proc)
        wait_worker_ready(proc, timeout=60)
        return proc

    def supervise(self) -> None:
        """Restart workers that exit on their own, as systemd or compose (restart: always) would. Celery's
        consumer can die with "Unrecoverable error" while reconnecting to a Redis that restarted; the
        restarts are counted and reported, not hidden."""
        import threading

        self._stop = threading.Event()
        self.restarts = 0

        def loop():
            while not self._stop.wait(0.5):
                for w in list(self.workers):
                    if not w.alive() and not w.expected_exit:
                        w.expected_exit = True
                        self.restarts += 1
                        try:
                            self.worker()
                        except Exception:  # noqa: BLE001 - try again on the next tick
                            w.expected_exit = False

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_supervising(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
            self._thread.join(5)

    def stop_workers(self):
        for w in self.workers:
            w.stop()
        self.workers = [w for w in self.workers if w.alive()]


@contextlib.contextmanager
def fault_fleet(tmp_path, monkeypatch, *, cells: int = 3, overrides: dict | None = None,
                blobs: dict | None = None, customize=None):
    """A fault scenario's fleet, set up and torn down in one place: a Redis of its own (restartable), the
    databases and config (``FAULT_SETTINGS`` under ``overrides``), ``customize(fleet)`` (e.g. a cell on a
    server of its own), the Topology Service, provisioned cells. Yields a :class:`FaultFleet`; on exit every
    worker is killed and everything stopped and dropped."""
    from migrator.config import clear_settings_cache
    from migrator.control.engine import upgrade_control_db

    redis = RedisServer(tmp_path / "redis").start()
    fleet = make_fleet(tmp_path / "fleet", broker_url=redis.url, cells=cells,
                       overrides=merge({k: dict(v) for k, v in FAULT_SETTINGS.items()}, overrides), blobs=blobs)
    topo = None
    ff = FaultFleet(fleet, redis, tmp_path)
    try:
        if customize is not None:
            customize(fleet)
        monkeypatch.setenv("MIGRATOR_CONFIG", str(fleet.config_path))
        clear_settings_cache()
        upgrade_control_db(fleet.control_dsn)
        topo = start_topology_server(fleet.config_path, fleet.topology_listen, tmp_path / "topology.log")
        fleet.init()
        yield ff
    finally:
        ff.stop_supervising()
        for w in ff.workers:
            w.kill()
        if topo is not None:
            topo.stop()
        redis.stop()
        clear_settings_cache()
        fleet.drop()


@pytest.fixture
def faults(tmp_path, monkeypatch):
    with fault_fleet(tmp_path, monkeypatch) as ff:
        ff.supervise()
        yield ff
