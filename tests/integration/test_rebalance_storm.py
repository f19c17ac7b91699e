"""An alert storm (issue 14): 200 firing alerts for one hot cell, posted to the running API and handled
by a real Celery worker, leave exactly one live plan, which applies (its move completes); the other
199 alerts are noted against it without a plan."""

from __future__ import annotations

import copy

import httpx
import pytest

from migrator.fleet.processes import wait_for
from migrator.rebalance.readings import refresh_readings
from migrator.rebalance.store import RebalanceStore
from migrator.sample.seed import seed_organizations
from tests.support.api import TOKEN, alertmanager_payload, auth, configure, start_api
from tests.support.moves import wait_move

pytestmark = pytest.mark.integration

ALERTS, PER_DELIVERY = 200, 20


def test_an_alert_storm_leaves_one_live_plan_which_applies(provisioned, worker_factory, tmp_path):
    fleet = provisioned
    settings = fleet.settings()
    seed_organizations(settings, "cell-1", orgs=3, rows=300, blobs=2, skew=False, seed=21)
    store = RebalanceStore(settings.control_dsn)
    load = {r["cell"]: r for r in refresh_readings(settings)}["cell-1"]["bytes"]
    smallest = min(o.bytes for o in store.org_readings("cell-1"))
    configure(fleet, api={"token": TOKEN}, rebalance={
        "defaults": {"high_water_bytes": 10**12, "low_water_bytes": 10**11},
        "cells": {"cell-1": {"high_water_bytes": load - 1, "low_water_bytes": load - smallest}},
        "approval": "auto", "max_moves_per_cell": 1, "max_moves_total": 2, "tick_every_s": 2,
        "readings_every_s": 3600, "readings_max_age_s": 3600})
    worker_factory(concurrency=3)
    api, url = start_api(fleet, tmp_path / "api.log")
    try:
        template = alertmanager_payload("cell-1")
        with httpx.Client(timeout=30, headers=auth()) as http:
            for delivery in range(ALERTS // PER_DELIVERY):
                payload = copy.deepcopy(template)
                alert = payload["alerts"][0]
                payload["alerts"] = [{**alert, "fingerprint": f"{delivery:02d}{i:02d}storm{delivery * 100 + i:06d}"}
                                     for i in range(PER_DELIVERY)]
                r = http.post(f"{url}/v1/alerts", json=payload)
                assert r.status_code == 202 and r.json()["accepted"] == PER_DELIVERY, r.text

        def handled():
            alerts = store.alerts(cell="cell-1", limit=1000)
            return len(alerts) == ALERTS and all(a.state == "handled" for a in alerts)

        wait_for(handled, timeout=120, interval=0.5, what="the worker to handle the 200 alerts")
        plans = store.plans(cell="cell-1", limit=1000)
        assert len(plans) == 1, [(str(p.id), p.status, p.trigger) for p in plans]
        [plan] = plans
        assert plan.trigger == "alert" and plan.status in ("applying", "done")
        assert len(store.decisions(kind="alert_absorbed", limit=1000)) == ALERTS - 1
        assert store.decisions(kind="plan_superseded") == []
        # It applies: its move runs to completion and the plan is done.
        [item] = store.plan_items(plan.id)
        move_id = wait_for(lambda: store.plan_items(plan.id)[0].move_id, timeout=30, what="the plan's move")
        assert wait_move(settings, move_id, timeout=120).state == "completed"
        assert item.organization_id == wait_move(settings, move_id).organization_id
        wait_for(lambda: store.get_plan(plan.id).status == "done", timeout=30, what="the plan to be done")
        assert len(store.plans(cell="cell-1", limit=1000)) == 1  # the tick respects the plan cooldown
    finally:
        api.stop()
