"""Done-when of the rebalancer: an Alertmanager payload for a hot cell, posted to the running API
(`migrator api serve`), makes a real Celery worker move a planned organization; the same payload
again starts nothing; calls without or with a wrong token get 401 and change nothing."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from migrator.fleet.processes import wait_for
from migrator.rebalance.readings import refresh_readings
from migrator.rebalance.store import RebalanceStore
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.support.api import TOKEN, alertmanager_payload, auth, configure, start_api
from tests.support.moves import migrator, wait_move

pytestmark = pytest.mark.integration


def _counts(store: RebalanceStore) -> tuple[int, int, int]:
    return len(store.alerts()), len(store.plans(limit=1000)), len(store.active_moves()) + len(
        [d for d in store.decisions(kind="move_started", limit=1000)])


def test_capacity_alert_moves_an_organization(provisioned, worker_factory, tmp_path):
    fleet = provisioned
    settings = fleet.settings()
    hot = seed_organizations(settings, "cell-1", orgs=3, rows=400, blobs=3, skew=True, seed=11)
    seed_organizations(settings, "cell-2", orgs=1, rows=200, blobs=3, skew=False, seed=12)
    store = RebalanceStore(settings.control_dsn)
    readings = {r["cell"]: r for r in refresh_readings(settings)}
    assert readings["cell-1"]["organizations"] == 3
    sizes = {o.organization_id: o.bytes for o in store.org_readings("cell-1")}
    assert set(sizes) == {o.organization_id for o in hot}
    smallest = min(sizes, key=sizes.get)
    load = readings["cell-1"]["bytes"]
    # cell-1 is hot; it must shed at least the smallest organization's bytes, which that organization alone does.
    configure(fleet, api={"token": TOKEN}, rebalance={
        "defaults": {"high_water_bytes": 10**12, "low_water_bytes": 10**11},
        "cells": {"cell-1": {"high_water_bytes": load - 1, "low_water_bytes": load - sizes[smallest]}},
        "max_moves_per_cell": 1, "max_moves_total": 2, "tick_every_s": 2, "readings_every_s": 3600,
        "readings_max_age_s": 3600})
    settings = fleet.settings()
    worker_factory()
    api, url = start_api(fleet, tmp_path / "api.log")
    try:
        payload = alertmanager_payload("cell-1")
        before = _counts(store)
        for headers in ({}, auth("not-the-token-0123456789"), {"Authorization": "Token " + TOKEN}):
            r = httpx.post(f"{url}/v1/alerts", json=payload, headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
            assert httpx.post(f"{url}/v1/moves", json={"organization_id": smallest, "target_cell": "cell-3"},
                              headers=headers, timeout=10).status_code == 401
        assert _counts(store) == before

        r = httpx.post(f"{url}/v1/alerts", json=payload, headers=auth(), timeout=10)
        assert r.status_code == 202, r.text
        assert r.json()["alerts"][0]["result"] == "enqueued"

        def started_item():
            plans = store.plans(cell="cell-1")
            items = store.plan_items(plans[0].id) if plans else []
            return next((i for i in items if i.state == "started"), None)

        item = wait_for(started_item, timeout=60, what="the rebalancer to start a move")
        assert item.organization_id == smallest
        assert item.target_cell in ("cell-2", "cell-3")
        move = wait_move(settings, item.move_id, timeout=120)
        assert move.state == "completed", move.error
        assert move.requested_by == "rebalancer"
        route = topology_client(settings).classify(smallest)
        assert route.cell == item.target_cell and route.state == "active"

        # The same delivery again: recognised, nothing new is planned or started.
        after = _counts(store)
        r = httpx.post(f"{url}/v1/alerts", json=payload, headers=auth(), timeout=10)
        assert r.status_code == 202 and r.json()["alerts"][0]["result"] == "duplicate"
        time.sleep(3)  # a tick or two of the worker's beat
        assert _counts(store) == after
        assert len(store.plans(cell="cell-1")) == 1

        # Every decision is visible in the API and the CLI.
        decisions = httpx.get(f"{url}/v1/rebalance/decisions", params={"cell": "cell-1"}, headers=auth(),
                              timeout=10).json()
        kinds = {d["kind"] for d in decisions}
        assert {"alert_received", "plan_made", "org_chosen", "move_started"} <= kinds
        cli = migrator(fleet, "rebalance", "decisions", "--cell", "cell-1", "--json")
        assert cli.returncode == 0, cli.stderr
        assert {"alert_received", "plan_made", "move_started"} <= {d["kind"] for d in json.loads(cli.stdout)}
        detail = httpx.get(f"{url}/v1/moves/{item.move_id}", headers=auth(), timeout=10).json()
        assert detail["state"] == "completed" and detail["history"]
        cells = {c["cell"]: c for c in httpx.get(f"{url}/v1/cells", headers=auth(), timeout=10).json()}
        assert cells["cell-1"]["hot"] is True and cells["cell-1"]["organizations"] == 3  # cached, not recomputed
    finally:
        api.stop()
