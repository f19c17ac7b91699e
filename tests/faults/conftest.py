"""The fault suite's fleet: real PostgreSQL, a Redis of its own (restartable), real worker processes.

Timings are short (lease 3 s, stale after 5 s, reconciler every second) so recoveries happen within
seconds; every fault is real: processes SIGKILLed, servers restarted, connections terminated.
Run alone with ``pytest -m faults``; ``FAULTS_LONG=1`` runs the long version (docs/reliability.md).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.fleet import make_fleet
from tests.support.processes import RedisServer, start_topology_server, start_worker

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

    def worker(self, concurrency: int = 2, beat: bool = True):
        self._n += 1
        name = f"w{self._n}"
        extra = ["-B", "-s", str(self.tmp / f"beat-{name}")] if beat else []
        proc = start_worker(self.fleet.config_path, self.tmp / f"worker-{name}.log", name=name,
                            concurrency=concurrency, extra=extra)
        deadline = time.monotonic() + 60
        while "ready." not in proc.log():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{proc.log()[-3000:]}")
            time.sleep(0.1)
        self.workers.append(proc)
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


@pytest.fixture
def faults(tmp_path, monkeypatch):
    from migrator.config import clear_settings_cache

    redis = RedisServer(tmp_path / "redis").start()
    fleet = make_fleet(tmp_path / "fleet", broker_url=redis.url, overrides=FAULT_SETTINGS)
    monkeypatch.setenv("MIGRATOR_CONFIG", str(fleet.config_path))
    clear_settings_cache()
    from migrator.control.engine import upgrade_control_db

    upgrade_control_db(fleet.control_dsn)
    topo = start_topology_server(fleet.config_path, fleet.topology_listen, tmp_path / "topology.log")
    fleet.init()
    ff = FaultFleet(fleet, redis, tmp_path)
    ff.supervise()
    yield ff
    ff.stop_supervising()
    for w in ff.workers:
        w.kill()
    topo.stop()
    redis.stop()
    clear_settings_cache()
    fleet.drop()
