"""The rebalancer's service on a real control database and Topology Service, readings injected into
the cache (no worker: moves it starts stay queued): approval mode, guardrails, pause, pins, cooldown,
and `migrator rebalance plan` explaining every choice."""

from __future__ import annotations

import json

import pytest

from migrator.moves.store import MoveStore
from migrator.rebalance.service import Rebalancer
from migrator.rebalance.store import InvalidPlanState, RebalanceStore
from migrator.topology.client import topology_client
from tests.support.api import configure
from tests.support.moves import migrator

pytestmark = pytest.mark.integration

SIZES = {101: 300, 102: 250, 103: 200, 104: 150, 105: 100, 106: 50}  # organization -> bytes, all in cell-1


def _reading(cell: str, load: int, orgs: dict[int, int]) -> tuple[dict, list[dict]]:
    reading = {"cell": cell, "state": "active", "organizations": len(orgs), "rows": 0, "bytes": load,
               "row_bytes": load, "blob_bytes": 0, "database_bytes": load * 10, "reclaimable_bytes": 0,
               "moves_in": 0, "moves_out": 0, "duration_s": 0.01, "tables": {}}
    rows = [{"organization_id": o, "routed": True, "rows": b, "row_bytes": b, "blob_bytes": 0, "blobs": 0,
             "bytes": b} for o, b in orgs.items()]
    return reading, rows


@pytest.fixture
def rb(fleet, topology_server):
    configure(fleet, rebalance={
        "defaults": {"high_water_bytes": 1000, "low_water_bytes": 800},
        "cells": {"cell-1": {"low_water_bytes": 600}, "cell-3": {"max_concurrent_moves": 0}},
        "approval": "manual", "max_moves_per_cell": 1, "max_moves_total": 5, "cooldown_hours": 1})
    settings = fleet.settings()
    topo = topology_client(settings)
    for cell in ("cell-1", "cell-2", "cell-3"):
        topo.register_cell(cell)
    for org in SIZES:
        topo.register_route(org, "cell-1")
    topo.close()
    store = RebalanceStore(settings.control_dsn)
    store.save_reading(*_reading("cell-1", sum(SIZES.values()), SIZES))
    store.save_reading(*_reading("cell-2", 500, {}))
    store.save_reading(*_reading("cell-3", 950, {}))
    rebalancer = Rebalancer(settings)
    yield rebalancer
    if rebalancer._ops is not None and rebalancer._ops._topology is not None:
        rebalancer._ops._topology.close()


def test_approval_guardrails_pins_and_pause(rb):
    store = rb.store
    rb.pin(101, "alice", "customer freeze")
    # Organization 106 moved recently: cooling down.
    moves = MoveStore(rb.settings.control_dsn)
    old = moves.create(organization_id=106, source="cell-2", target="cell-1", requested_by="t", reason="earlier")
    moves.set_fields(old.id, old.token, state="completed", completed_at=moves.now())

    assert rb.hot_cells() == ["cell-1"]
    row, plan = rb.make_plan("cell-1")
    assert row.status == "awaiting_approval"
    # 1050 -> at most 600: 450 bytes must leave; 101 is pinned, 106 cooling; cell-3 has only 50 bytes of room.
    assert plan.reaches_low_water and plan.bytes_moved == 450
    chosen = {i.organization_id for i in plan.items}
    assert 101 not in chosen and 106 not in chosen
    assert all(i.target == "cell-2" for i in plan.items)
    skipped = {s["organization_id"]: s["reason"] for s in plan.skipped}
    assert "pinned" in skipped[101] and "alice" in skipped[101] and "cooling" in skipped[106]

    # Approval: nothing starts before apply.
    assert store.active_moves() == [] or all(m.organization_id == 106 for m in store.active_moves())
    result = rb.apply(row.id, "bob")
    # One move per cell at a time: one starts, the others wait.
    assert len(result["started"]) == 1 and len(result["deferred"]) == len(plan.items) - 1
    assert "rebalance.max_moves_per_cell 1" in result["deferred"][0]["reason"]
    assert rb.apply(row.id, "bob")["started"] == []  # applying again only advances: no slot is free
    n_deferred = len(store.decisions(kind="move_deferred"))
    rb.tick()
    assert len(store.decisions(kind="move_deferred")) == n_deferred  # logged once, not at every tick
    assert len([m for m in store.active_moves() if m.requested_by == "bob"]) == 1  # the approver

    # A newer plan for the cell supersedes this one when applied; pause stops everything.
    assert rb.pause("carol", "incident 42")
    assert rb.advance()["paused"] is True
    alert_id, _ = store.record_alert(fingerprint="f1", starts_at=moves.now(), ends_at=None, status="firing",
                                     alertname="CellCapacityHigh", cell="cell-1", group_key="", labels={},
                                     annotations={}, state="received")
    assert rb.handle_alert(alert_id)["result"] == "paused"
    assert rb.handle_alert(alert_id)["result"] == "already handled"
    assert "incident 42" in store.decisions(kind="alert_skipped")[0].message
    assert rb.resume("carol")
    kinds = {d.kind for d in store.decisions(limit=500)}
    assert {"pinned", "plan_made", "org_skipped", "org_chosen", "plan_approved", "move_started", "move_deferred",
            "paused", "alert_skipped", "resumed"} <= kinds


def test_alert_in_auto_mode_supersedes_and_starts(rb, fleet):
    configure(fleet, rebalance={"approval": "auto"})
    rb = Rebalancer(fleet.settings())
    waiting, _ = rb.make_plan("cell-1")  # an operator's plan, awaiting approval
    alert_id, _ = rb.store.record_alert(fingerprint="f2", starts_at=rb.store.now(), ends_at=None, status="firing",
                                        alertname="CellCapacityHigh", cell="cell-1", group_key="", labels={},
                                        annotations={}, state="received")
    result = rb.handle_alert(alert_id)
    assert result["status"] == "applying" and len(result["applied"]["started"]) == 1
    assert rb.store.get_plan(waiting.id).status == "superseded"
    with pytest.raises(InvalidPlanState):
        rb.apply(waiting.id, "bob")
    assert rb.store.get_alert(alert_id).state == "handled"


def test_cli_plan_explains_every_choice(rb, fleet):
    result = migrator(fleet, "rebalance", "plan", "--cell", "cell-1", "--json")
    assert result.returncode == 0, result.stderr
    (plan,) = json.loads(result.stdout)
    assert plan["status"] == "awaiting_approval" and plan["items"]
    assert all(i["reason"] and i["target"] for i in plan["items"])
    assert all(t.get("excluded") or "after_bytes" in t for t in plan["targets"])
    assert plan["summary"].startswith("cell-1 is at")
    text = migrator(fleet, "rebalance", "plan", "--cell", "cell-1")
    assert text.returncode == 0 and "apply it with: migrator rebalance apply" in text.stdout
    pinned = migrator(fleet, "orgs", "pin", "102", "--reason", "vip")
    assert pinned.returncode == 0, pinned.stderr
    capacity = migrator(fleet, "cells", "capacity", "--json")
    assert capacity.returncode == 0 and {c["cell"] for c in json.loads(capacity.stdout)} == {"cell-1", "cell-2",
                                                                                             "cell-3"}
    assert migrator(fleet, "rebalance", "apply", "not-a-plan").returncode == 1
    for args in (("rebalance", "plans"), ("rebalance", "plans", plan["id"]), ("rebalance", "decisions"),
                 ("rebalance", "status"), ("cells", "capacity"), ("orgs", "pins")):
        out = migrator(fleet, *args)
        assert out.returncode == 0, (args, out.stderr)


def _firing(rb, fingerprint: str) -> int:
    alert_id, _ = rb.store.record_alert(fingerprint=fingerprint, starts_at=rb.store.now(), ends_at=None,
                                        status="firing", alertname="CellCapacityHigh", cell="cell-1", group_key="",
                                        labels={}, annotations={}, state="received")
    return alert_id


def test_an_applying_plan_is_never_superseded_by_an_alert_and_the_tick_replans(rb, fleet):
    configure(fleet, rebalance={"approval": "auto", "plan_cooldown_s": 0, "max_moves_per_cell": 5,
                                "readings_max_age_s": 3600})
    rb = Rebalancer(fleet.settings())
    store = rb.store
    first = rb.handle_alert(_firing(rb, "s1"))
    assert first["status"] == "applying" and first["applied"]["started"]
    # Its moves are queued (no worker), so it stays applying until they start: here they all did at once.
    plan = store.get_plan(first["plan_id"])
    assert plan.status in ("applying", "done")
    # The tick finds the cell still hot (readings unchanged, alert still firing) and plans again.
    result = rb.tick()
    assert [r["cell"] for r in result["replanned"]] == ["cell-1"]
    replan = store.get_plan(result["replanned"][0]["plan_id"])
    assert replan.trigger == "tick"
    assert store.decisions(kind="cell_still_hot")[0].plan_id == replan.id
    if replan.status == "applying":  # a newer alert never supersedes it
        absorbed = rb.handle_alert(_firing(rb, "s2"))
        assert absorbed["result"] == "absorbed" and absorbed["plan_id"] == str(replan.id)
        assert store.get_plan(replan.id).status == "applying"
    # A resolved alert: the tick no longer plans for the cell.
    store.record_alert(fingerprint="s9", starts_at=store.now(), ends_at=store.now(), status="resolved",
                       alertname="CellCapacityHigh", cell="cell-1", group_key="", labels={}, annotations={},
                       state="handled")
    assert rb.tick()["replanned"] == []


def test_alerts_within_the_plan_cooldown_make_no_plan(rb, fleet):
    configure(fleet, rebalance={"approval": "manual", "plan_cooldown_s": 3600})
    rb = Rebalancer(fleet.settings())
    older, _ = rb.make_plan("cell-1")  # an operator's plan does not count against the cooldown
    results = [rb.handle_alert(_firing(rb, f"c{i}")) for i in range(5)]
    assert results[0]["status"] == "awaiting_approval"
    assert all(r["result"] == "absorbed" and r["plan_id"] == results[0]["plan_id"] for r in results[1:])
    assert "rebalance.plan_cooldown_s" in results[1]["reason"]
    live = rb.store.plans(cell="cell-1", statuses=("awaiting_approval", "applying"))
    assert [str(p.id) for p in live] == [results[0]["plan_id"]]  # the operator's older plan was superseded
    assert rb.store.get_plan(older.id).status == "superseded"
    assert len(rb.store.decisions(kind="alert_absorbed")) == 4
