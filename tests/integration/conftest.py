"""Fixtures for tests that run real moves: a provisioned fleet, the Topology Service, a worker."""

from __future__ import annotations

import pytest

from migrator.fleet.services import wait_worker_ready
from tests.schemas import storefront
from tests.support.fleet import start_worker


@pytest.fixture
def local_fleet(fleet_factory):
    """Three empty cells; the Topology Service runs in-process on the (migrated) control database."""
    return fleet_factory(topology=False, upgrade=True)


@pytest.fixture
def provisioned(fleet, topology_server):
    """The fleet's three cells provisioned (sample schema, guard, ID ranges) and registered."""
    fleet.init()
    return fleet


def _worker(fleet, tmp_path, name="w1", concurrency=2, beat=True):
    proc = start_worker(fleet.config_path, tmp_path / f"worker-{name}.log", name=name, concurrency=concurrency,
                        beat_schedule=tmp_path / f"beat-{name}" if beat else None)
    return wait_worker_ready(proc)


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


@pytest.fixture
def storefront_fleet(fleet, topology_server):
    """Three Storefront cells with disjoint ID plans, their attachment objects, a config with adopt: true."""
    storefront.adopt_config(fleet.config_path)
    block = fleet.settings().topology.sequence_block
    for i, (cell, dsn) in enumerate(fleet.cell_dsns.items()):
        storefront.create_cell(dsn, id_base=i * block, tenants=3 if i == 0 else 1)
        storefront.write_blobs(dsn, fleet.blob_dir(cell))
    fleet.extra["block"] = block
    return fleet


@pytest.fixture
def storefront_worker(storefront_fleet, tmp_path):
    proc = start_worker(storefront_fleet.config_path, tmp_path / "worker.log", concurrency=2)
    wait_worker_ready(proc)
    yield proc
    proc.stop()
