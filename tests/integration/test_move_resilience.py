"""Idempotent, resumable, abortable: steps run twice, a worker SIGKILLed mid-copy, abort mid-copy."""

from __future__ import annotations

import json
import signal

import psycopg
import pytest

from migrator.moves import steps
from migrator.moves import workflow as wf
from migrator.moves.context import MoveContext
from migrator.moves.operations import Operations
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.support.checks import duplicate_keys, leftover_keys, org_checksums
from tests.support.moves import HeldTable, copied_rows, migrator, wait_copying, wait_move

pytestmark = pytest.mark.integration


def _seed(fleet, rows=3000, blobs=6, seed=11):
    settings = fleet.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=rows, blobs=blobs, skew=False, seed=seed)
    return settings, org.organization_id


def test_every_step_run_twice_gives_the_same_end_state(provisioned):
    """Each step's work executed twice in a row (fan-out units twice, from scratch the second time)."""
    settings, org = _seed(provisioned)
    before = org_checksums(settings, "cell-1", org)
    store = MoveStore(settings.control_dsn)
    move = store.create(organization_id=org, source="cell-1", target="cell-2", requested_by="test", reason="twice")
    store.start(move.id, move.token)
    for step in wf.FROZEN:
        current = store.claim_step(move.id, step, move.token, "t", 60)
        assert current is not None, step
        ctx = MoveContext(settings=settings, store=store, move=current, token=move.token, owner="t")
        work = steps.get(step)
        try:
            if work.fans_out:
                store.ensure_units(move.id, move.token, step, work.plan(ctx))
                store.ensure_units(move.id, move.token, step, work.plan(ctx))  # planning twice adds nothing
                for unit in store.units(move.id, step):
                    assert store.claim_unit(move.id, step, unit.unit, move.token, "t", 60)
                    work.unit(ctx, unit)
                    work.unit(ctx, unit)  # the same unit again, from its original position
                    assert store.finish_unit(move.id, step, unit.unit, move.token, "t", work.unit(ctx, unit) or {})
                work.fan_in(ctx)
                work.fan_in(ctx)
            else:
                work.run(ctx)
                ctx.move = store.get(move.id)
                work.run(ctx)
        finally:
            ctx.close()
        assert store.advance(move.id, move.token, step) is not None
        assert store.advance(move.id, move.token, step) is None  # advancing twice: the second loses
    final = store.get(move.id)
    assert final.state == "completed"
    assert final.report["verification"]["ok"]
    assert org_checksums(settings, "cell-2", org) == before
    assert not duplicate_keys(settings, "cell-2")
    history = topology_client(settings).history(org)
    assert [h["action"] for h in history].count("flip") == 1
    assert topology_client(settings).classify(org).cell == "cell-2"


def test_worker_killed_mid_copy_rows_resumes_with_identical_checksums(provisioned, worker_factory):
    settings, org = _seed(provisioned, rows=8_000, blobs=4, seed=12)
    before = org_checksums(settings, "cell-1", org)
    store = MoveStore(settings.control_dsn)
    # The target's notes are held: the copy is provably running when the worker dies.
    with HeldTable(provisioned.cell_dsns["cell-2"], "notes"):
        w1 = worker_factory("w1", concurrency=2)
        move = Operations(settings).request_move(org, "cell-2", actor="test", reason="sigkill")
        wait_copying(settings, move.id)
        w1.kill(signal.SIGKILL)
        at_kill = copied_rows(store, move.id)
    worker_factory("w2", concurrency=2)
    final = wait_move(settings, move.id, timeout=240)
    assert final.state == "completed", final.error
    assert copied_rows(store, move.id) >= at_kill
    assert org_checksums(settings, "cell-2", org) == before
    assert not duplicate_keys(settings, "cell-2")
    events = [e.event for e in store.events(move.id)]
    assert "reconciled" in events or "started" in events
    assert [h["action"] for h in topology_client(settings).history(org)].count("flip") == 1


def test_abort_mid_copy_leaves_source_writable_and_target_clean(provisioned, worker_factory):
    settings, org = _seed(provisioned, rows=8_000, blobs=6, seed=13)
    before = org_checksums(settings, "cell-1", org)
    # The target's notes are held until the abort is requested: the move cannot flip first.
    with HeldTable(provisioned.cell_dsns["cell-2"], "notes"):
        worker_factory("w1", concurrency=2)
        move = Operations(settings).request_move(org, "cell-2", actor="test", reason="abort")
        wait_copying(settings, move.id)
        requested = migrator(provisioned, "abort", str(move.id), "--no-wait", "--reason", "operator changed their mind")
        assert requested.returncode == 0, requested.stderr
    final = wait_move(settings, move.id, timeout=120)
    assert final.state == "aborted"
    assert all(rows == 0 for rows, _ in org_checksums(settings, "cell-2", org).values())
    assert leftover_keys(settings, "cell-1", "cell-2", org) == {}  # no orphan child rows either
    assert org_checksums(settings, "cell-1", org) == before
    route = topology_client(settings).classify(org)
    assert route.cell == "cell-1" and route.state == "active"
    with psycopg.connect(provisioned.cell_dsns["cell-1"], autocommit=True) as conn:
        conn.execute("UPDATE organizations SET name = name || '!' WHERE id = %s", (org,))
        assert conn.execute("SELECT count(*) FROM migrator.frozen_orgs").fetchone()[0] == 0
    # The organization can be moved again after the abort.
    again = migrator(provisioned, "move", "--org", str(org), "--to", "cell-2", "--wait", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["state"] == "completed"


def test_abort_after_flip_is_refused_and_cleanup_respects_retention(provisioned, worker):
    settings, org = _seed(provisioned, rows=1000, blobs=3, seed=14)
    result = migrator(provisioned, "move", "--org", str(org), "--to", "cell-3", "--wait", "--json")
    assert result.returncode == 0, result.stderr
    move_id = json.loads(result.stdout)["id"]
    refused = migrator(provisioned, "abort", move_id)
    assert refused.returncode == 1
    assert f"--org {org} --to cell-1" in refused.stderr
    early = migrator(provisioned, "cleanup", move_id)
    assert early.returncode == 1 and "--force" in early.stderr
    done = migrator(provisioned, "cleanup", move_id, "--force")
    assert done.returncode == 0, done.stderr
    assert all(rows == 0 for rows, _ in org_checksums(settings, "cell-1", org).values())
    assert MoveStore(settings.control_dsn).get(move_id).state == "cleaned"
    # After cleanup the organization can move back to its old cell.
    back = migrator(provisioned, "move", "--org", str(org), "--to", "cell-1", "--wait", "--json")
    assert back.returncode == 0, back.stderr


def test_resume_after_pause_continues_at_once(provisioned, worker_factory):
    """A move paused mid-copy and resumed carries on at once: the new attempt's units are claimable
    (the old attempt's unit leases went with its token), so no reconciler pass is needed."""
    settings, org = _seed(provisioned, rows=6_000, blobs=2, seed=15)
    before = org_checksums(settings, "cell-1", org)
    ops = Operations(settings)
    store = MoveStore(settings.control_dsn)
    with HeldTable(provisioned.cell_dsns["cell-2"], "notes"):  # a notes unit is mid-batch when paused
        worker_factory("w1", concurrency=2)
        move = ops.request_move(org, "cell-2", actor="test", reason="pause, then resume", strategy="frozen")
        wait_copying(settings, move.id)
        ops.pause(move.id, actor="test")
    resumed = ops.resume(move.id, actor="test")
    final = wait_move(settings, move.id, timeout=120)
    assert final.state == "completed", final.error
    assert org_checksums(settings, "cell-2", org) == before
    events = [e.event for e in store.events(move.id)]
    after_resume = events[events.index("resumed"):]
    assert "reconciled" not in after_resume, f"the resumed attempt waited for the reconciler: {after_resume}"
    assert resumed.attempt == 2
