"""Moves throttle on their cells' health (docs/adr/0019-health-indicators.md), with real servers.

A lock-wait storm is real: a transaction holds ``ACCESS EXCLUSIVE`` on a table of its own and N
backends queue behind it, so ``pg_stat_activity`` shows N lock waits. Lock waits count server-wide (the
test's cells share one server), so the storm's table lives in the control database, where no schema check
looks. The storm is in place before the move is requested, so every unit meets it; the test lifts it
when it chooses.
"""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.support.checks import org_checksums
from tests.support.moves import copied_rows, migrator, wait_move

pytestmark = pytest.mark.integration

WAITERS = 3
HEALTH = {"enabled": True, "check_every_s": 0.2, "pause_s": 0.5,
          "defaults": {"lock_waits_slow": None, "lock_waits_stop": WAITERS, "autovacuum_on_table": "normal",
                       "replication_lag_slow_s": None, "replication_lag_stop_s": None, "wal_ready_slow": None,
                       "wal_ready_stop": None, "active_backends_slow": None, "active_backends_stop": None}}


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
