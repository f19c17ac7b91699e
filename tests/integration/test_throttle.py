"""Moves throttle on their cells' health (docs/adr/0019-health-indicators.md), with real servers.

A lock-wait storm is real: a transaction holds ``ACCESS EXCLUSIVE`` on a table of its own and N
backends queue behind it, so ``pg_stat_activity`` shows N lock waits. Lock waits count server-wide (the
test's cells share one server), so the storm's table lives in the control database, where no schema check
looks. The storm is in place before the move is requested, so every unit meets it; the test lifts it
when it chooses.
"""

from __future__ import annotations

import json
import shutil
import threading

import psycopg
import pytest
import yaml

from migrator.fleet.processes import free_port
from migrator.moves import throttle
from migrator.moves.store import MoveStore
from migrator.rebalance.service import Rebalancer
from migrator.rebalance.store import RebalanceStore
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.integration.conftest import _worker
from tests.support.api import configure
from tests.support.checks import org_checksums
from tests.support.moves import copied_rows, migrator, wait_move
from tests.support.postgres import OwnCluster, private_root, require_runuser

pytestmark = pytest.mark.integration

WAITERS = 3
HEALTH = {"enabled": True, "check_every_s": 0.2, "pause_s": 0.5,
          "defaults": {"lock_waits_slow": None, "lock_waits_stop": WAITERS, "autovacuum_on_table": "normal",
                       "replication_lag_slow_s": None, "replication_lag_stop_s": None, "wal_ready_slow": None,
                       "wal_ready_stop": None, "active_backends_slow": None, "active_backends_stop": None,
                       "commit_p99_slow_ms": None, "commit_p99_stop_ms": None}}


@pytest.fixture
def fleet(fleet_factory):
    return fleet_factory(overrides={"health": HEALTH})


class LockStorm:
    """``WAITERS`` backends waiting for a lock held on ``storm`` in one database, until ``clear()``."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.holder = psycopg.connect(dsn, application_name="test-storm")
        self.holder.execute("CREATE TABLE IF NOT EXISTS storm (x int)")
        self.holder.commit()
        self.holder.execute("LOCK TABLE storm IN ACCESS EXCLUSIVE MODE")
        self.threads = [threading.Thread(target=self._wait, daemon=True) for _ in range(WAITERS)]
        for t in self.threads:
            t.start()
        with psycopg.connect(dsn, autocommit=True) as c:  # the storm is on before the test goes on
            for _ in range(200):
                (n,) = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND application_name = 'test-storm-waiter'").fetchone()
                if n >= WAITERS:
                    return
                threading.Event().wait(0.05)
        raise AssertionError("the lock waiters did not queue")

    def _wait(self) -> None:
        with psycopg.connect(self.dsn, application_name="test-storm-waiter", autocommit=True) as c:
            c.execute("SELECT count(*) FROM storm")

    def clear(self) -> None:
        self.holder.rollback()
        self.holder.close()
        for t in self.threads:
            t.join(30)


def _events(store: MoveStore, move_id, name: str) -> list:
    return [e for e in store.events(move_id) if e.event == name]


def test_a_lock_wait_storm_pauses_copying_until_it_clears(provisioned, worker):
    settings = provisioned.settings()
    [o] = seed_organizations(settings, "cell-1", orgs=1, rows=3000, blobs=2, skew=False, seed=31)
    org = o.organization_id
    before = org_checksums(settings, "cell-1", org)
    store = MoveStore(settings.control_dsn)
    storm = LockStorm(provisioned.control_dsn)
    try:
        result = migrator(provisioned, "move", "--org", str(org), "--to", "cell-2", "--strategy", "online", "--json")
        assert result.returncode == 0, result.stderr
        move_id = json.loads(result.stdout)["id"]

        def paused(move, store) -> bool:
            if move.state not in ("queued", "running"):
                return True  # fails below, at once
            return bool(move.throttle) and move.step == "copy_rows" and bool(_events(store, move.id, "throttled"))

        move = wait_move(settings, move_id, predicate=paused, timeout=120)
        assert move.state == "running", move.error
        assert move.throttle["indicator"] == "lock_waits" and move.throttle["signal"] == "stop"
        # Every unit met the storm before it started: nothing was copied while it lasted.
        assert copied_rows(store, move_id) == 0
        status = migrator(provisioned, "status", move_id)
        assert status.returncode == 0, status.stderr
        assert "throttled paused: lock waits" in " ".join(status.stdout.split()), status.stdout
        as_json = json.loads(migrator(provisioned, "status", move_id, "--json").stdout)
        assert as_json["throttled"]["indicator"] == "lock_waits"
        health = migrator(provisioned, "cells", "health", "--cell", "cell-1", "--json")
        assert health.returncode == 1 and json.loads(health.stdout)["signal"] == "stop"
    finally:
        storm.clear()
    move = wait_move(settings, move_id, timeout=180)
    assert move.state == "completed", move.error
    assert move.throttle is None
    assert _events(store, move_id, "throttle_lifted")
    assert len(_events(store, move_id, "throttled")) >= 1
    assert org_checksums(settings, "cell-2", org) == before


def test_on_slow_down_the_copy_goes_on_in_smaller_slower_batches(provisioned, worker):
    """The storm past the slow limit only (no stop limit): every unit runs, held back, and the move completes."""
    configure(provisioned, health={**HEALTH, "defaults": {**HEALTH["defaults"], "lock_waits_slow": WAITERS,
                                                            "lock_waits_stop": None}})
    worker.stop()  # workers read the config once: one started after the change
    settings = provisioned.settings()
    [o] = seed_organizations(settings, "cell-1", orgs=1, rows=2000, blobs=1, skew=False, seed=34)
    before = org_checksums(settings, "cell-1", o.organization_id)
    store = MoveStore(settings.control_dsn)
    storm = LockStorm(provisioned.control_dsn)
    again = _worker(provisioned, provisioned.root, name="w2")
    try:
        result = migrator(provisioned, "move", "--org", str(o.organization_id), "--to", "cell-2", "--strategy",
                          "online", "--wait", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "completed"
    finally:
        storm.clear()
        again.stop()
    move_id = json.loads(result.stdout)["id"]
    slowed = [e for e in _events(store, move_id, "throttled") if e.detail["throttle"]["signal"] == "slow down"]
    assert slowed and slowed[0].message.startswith("slowed down: lock waits")
    assert not [e for e in _events(store, move_id, "throttled") if e.detail["throttle"]["signal"] == "stop"]
    assert store.get(move_id).throttle is None
    assert org_checksums(settings, "cell-2", o.organization_id) == before


def test_nothing_inside_the_write_window_is_throttled(provisioned, worker):
    """A frozen move copies inside its window: the storm says stop, and the move goes on regardless."""
    settings = provisioned.settings()
    [o] = seed_organizations(settings, "cell-1", orgs=1, rows=1500, blobs=1, skew=False, seed=32)
    before = org_checksums(settings, "cell-1", o.organization_id)
    storm = LockStorm(provisioned.control_dsn)
    try:
        result = migrator(provisioned, "move", "--org", str(o.organization_id), "--to", "cell-3", "--strategy",
                          "frozen", "--wait", "--json")
        assert result.returncode == 0, result.stderr
        detail = json.loads(result.stdout)
        assert detail["state"] == "completed"
        assert not [h for h in detail["history"] if h["event"] == "throttled"]
        # The storm was still there the whole time.
        health = migrator(provisioned, "cells", "health", "--cell", "cell-1", "--json")
        assert json.loads(health.stdout)["signal"] == "stop"
    finally:
        storm.clear()
    assert org_checksums(settings, "cell-3", o.organization_id) == before


@pytest.fixture
def standby_fleet(fleet_factory, tmp_path):
    """cell-1 on a PostgreSQL server of its own with a real streaming standby (pg_basebackup), listed in
    ``cells.cell-1.standbys``; the standby's replay lag may be at most 1 s."""
    require_runuser()
    root = private_root("cm-pg-standby-")
    primary = OwnCluster(root / "primary", free_port()).init()
    standby = topology = worker = None
    try:
        primary.start()
        standby = primary.standby(root / "standby", free_port())
        standby.start()
        f = fleet_factory(overrides={"health": {**HEALTH, "defaults": {
            **HEALTH["defaults"], "lock_waits_stop": None, "replication_lag_slow_s": None,
            "replication_lag_stop_s": 1.0}}})
        with psycopg.connect(primary.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE cell1")
        cfg = yaml.safe_load(f.config_path.read_text())
        cfg["cells"]["cell-1"]["dsn"] = primary.dsn("cell1")
        cfg["cells"]["cell-1"]["standbys"] = [standby.dsn("cell1")]
        f.config_path.write_text(yaml.safe_dump(cfg))
        f.cell_dsns["cell-1"] = primary.dsn("cell1")
        topology = f.start_topology()
        f.init()
        worker = _worker(f, tmp_path)
        yield f, primary, standby
    finally:
        for proc in (worker, topology):
            if proc is not None:
                proc.stop()
        if standby is not None:
            standby.stop_quietly()
        primary.stop_quietly()
        shutil.rmtree(root, ignore_errors=True)


def test_a_standby_lagging_past_its_limit_pauses_copying(standby_fleet):
    fleet, primary, standby = standby_fleet
    settings = fleet.settings()
    [o] = seed_organizations(settings, "cell-1", orgs=1, rows=2000, blobs=1, skew=False, seed=33)
    org = o.organization_id
    before = org_checksums(settings, "cell-1", org)
    store = MoveStore(settings.control_dsn)
    with psycopg.connect(standby.dsn("cell1"), autocommit=True) as s:
        s.execute("SELECT pg_wal_replay_pause()")
        # WAL the standby receives and does not replay: its lag grows from its last replayed commit.
        with psycopg.connect(primary.dsn(), autocommit=True) as p:  # another database: same WAL
            p.execute("CREATE TABLE IF NOT EXISTS lag_probe (x int)")
        for _ in range(300):
            health = migrator(fleet, "cells", "health", "--cell", "cell-1", "--json")
            lag = [r for r in json.loads(health.stdout)["readings"] if r["indicator"] == "replication_lag"
                   and r["detail"].startswith("standby postgresql")]
            if lag and lag[0]["signal"] == "stop":
                break
            threading.Event().wait(0.2)
        else:
            raise AssertionError(f"the standby never lagged: {health.stdout}")
        result = migrator(fleet, "move", "--org", str(org), "--to", "cell-2", "--strategy", "online", "--json")
        assert result.returncode == 0, result.stderr
        move_id = json.loads(result.stdout)["id"]

        def paused(move, store) -> bool:
            if move.state not in ("queued", "running"):
                return True
            return bool(move.throttle) and move.step == "copy_rows"

        move = wait_move(settings, move_id, predicate=paused, timeout=120)
        assert move.state == "running", move.error
        assert move.throttle["indicator"] == "replication_lag" and move.throttle["signal"] == "stop"
        assert copied_rows(store, move_id) == 0
        s.execute("SELECT pg_wal_replay_resume()")
    move = wait_move(settings, move_id, timeout=180)
    assert move.state == "completed", move.error
    assert _events(store, move_id, "throttle_lifted")
    assert org_checksums(settings, "cell-2", org) == before


def test_the_rebalancer_defers_moves_while_a_cell_says_stop(fleet, topology_server):
    """No worker: the moves it starts stay queued. While the storm lasts, nothing starts; then one does."""
    configure(fleet, rebalance={"defaults": {"high_water_bytes": 1000, "low_water_bytes": 600},
                                "approval": "manual", "max_moves_per_cell": 1, "max_moves_total": 5})
    settings = fleet.settings()
    topo = topology_client(settings)
    for cell in ("cell-1", "cell-2", "cell-3"):
        topo.register_cell(cell)
    sizes = {201: 300, 202: 250, 203: 200, 204: 150, 205: 100}
    for org in sizes:
        topo.register_route(org, "cell-1")
    topo.close()
    store = RebalanceStore(settings.control_dsn)
    for cell, orgs in (("cell-1", sizes), ("cell-2", {}), ("cell-3", {})):
        load = sum(orgs.values())
        store.save_reading({"cell": cell, "state": "active", "organizations": len(orgs), "rows": 0, "bytes": load,
                            "row_bytes": load, "blob_bytes": 0, "database_bytes": load * 10, "reclaimable_bytes": 0,
                            "moves_in": 0, "moves_out": 0, "duration_s": 0.01, "tables": {}},
                           [{"organization_id": o, "routed": True, "rows": b, "row_bytes": b, "blob_bytes": 0,
                             "blobs": 0, "bytes": b} for o, b in orgs.items()])
    rb = Rebalancer(settings)
    row, plan = rb.make_plan("cell-1")
    assert plan.items
    throttle.forget()
    storm = LockStorm(fleet.control_dsn)
    try:
        result = rb.apply(row.id, "bob")
        assert result["started"] == [] and result["deferred"], result
        assert all("lock waits" in d["reason"] for d in result["deferred"]), result
        deferred = store.decisions(kind="move_deferred")
        assert deferred and "says stop" in deferred[0].message
        throttle.forget()
        rb.advance()
        assert len(store.decisions(kind="move_deferred")) == len(deferred)  # logged once, not at every pass
        assert store.active_moves() == []
    finally:
        storm.clear()
    throttle.forget()
    assert len(rb.advance()["started"]) == 1
    if rb._ops is not None and rb._ops._topology is not None:
        rb._ops._topology.close()
