"""Fixtures for tests that run real moves: a provisioned fleet, the Topology Service, a worker."""

from __future__ import annotations

import time

import pytest

from tests.support.processes import start_worker


@pytest.fixture
def provisioned(fleet, topology_server):
    """The fleet's three cells provisioned (sample schema, guard, ID ranges) and registered."""
    fleet.init()
    return fleet


def _worker(fleet, tmp_path, name="w1", concurrency=2, beat=True):
    extra = ["-B", "-s", str(tmp_path / f"beat-{name}")] if beat else []
    proc = start_worker(fleet.config_path, tmp_path / f"worker-{name}.log", name=name, concurrency=concurrency,
                        extra=extra)
    wait_until_ready(proc)
    return proc


def wait_until_ready(proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready." in proc.log():
            return
        if not proc.alive():
            raise RuntimeError(f"celery worker exited:\n{proc.log()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"celery worker not ready after {timeout}s:\n{proc.log()[-3000:]}")


@pytest.fixture
def worker(provisioned, tmp_path):
    """A real `celery -A tasks worker -B` process (embedded beat runs the reconciler)."""
    proc = _worker(provisioned, tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def worker_factory(provisioned, tmp_path):
    procs = []

    def make(name="w1", concurrency=2, beat=True):
        p = _worker(provisioned, tmp_path, name=name, concurrency=concurrency, beat=beat)
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.stop()
