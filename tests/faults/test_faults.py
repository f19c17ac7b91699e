"""Fault scenarios: each moves a seeded organization (rows in every sample table, blobs) under a real
fault and checks the same invariants. ``FAULTS_LONG=1`` raises the trial counts (docs/reliability.md).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from migrator.fleet.processes import wait_for
from migrator.fleet.services import child_env
from migrator.moves.dispatch import Dispatcher
from migrator.moves.operations import Operations
from migrator.moves.runner import run_step
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from migrator.topology.client import topology_client
from tests.faults.conftest import trials
from tests.faults.invariants import check_completed, snapshot
from tests.faults.report import ScenarioResult
from tests.faults.writer import lost_writes
from tests.support import ROOT
from tests.support.moves import HeldTable, migrator, wait_copying, wait_move
from tests.support.postgres import OwnCluster

pytestmark = pytest.mark.faults

ROWS = 2500


def _seed(ff, n: int, rows: int = ROWS, cell: str = "cell-1", seed: int = 1):
    return [o.organization_id for o in seed_organizations(ff.settings, cell, orgs=n, rows=rows, blobs=5, skew=False,
                                                           seed=seed)]


def _mover_and_bystander(ff, rows: int = ROWS):
    """Two organizations seeded in cell-1: the one to move (its id and snapshot) and a bystander's snapshot."""
    org, bystander = _seed(ff, 2, rows=rows)
    settings = ff.settings
    return org, snapshot(settings, [(org, "cell-1")])[(org, "cell-1")], snapshot(settings, [(bystander, "cell-1")])


def _finish(ff, result: ScenarioResult, move_id, org, source, target, before, bystanders, *, writers=False):
    """Wait for the move; a failed one is resumed once. Then check the invariants."""
    settings = ff.settings
    move = wait_move(settings, move_id, timeout=240)
    if move.state == "failed":
        Operations(settings).resume(move_id, actor="fault-suite")
        move = wait_move(settings, move_id, timeout=240)
        if move.state == "completed":
            result.failed_then_resumed += 1
    result.trials += 1
    violations = check_completed(settings, move_id, org, source, target, before=before, bystanders=bystanders,
                                 writers=writers)
    if move.state == "completed":
        result.completed += 1
    result.violations += [f"trial {result.trials}: {x}" for x in violations]
    return move


def test_worker_sigkill_at_random_moments(faults):
    n = trials(5, 50)
    result = ScenarioResult("1. worker SIGKILL at a random moment")
    orgs = _seed(faults, n + 1)
    bystander = orgs[-1]
    settings = faults.settings
    rng = random.Random(4242)
    worker = faults.worker()
    for i, org in enumerate(orgs[:n]):
        target = ("cell-2", "cell-3")[i % 2]
        before = snapshot(settings, [(org, "cell-1")])[(org, "cell-1")]
        by = snapshot(settings, [(bystander, "cell-1")])
        strategy = ("frozen", "online")[(i // 2) % 2]  # both strategies, each with both targets
        move = Operations(settings).request_move(org, target, actor="faults", reason=f"sigkill trial {i}",
                                                 strategy=strategy)
        time.sleep(rng.uniform(0.0, 2.5))
        worker.kill(signal.SIGKILL)
        worker = faults.worker()
        _finish(faults, result, move.id, org, "cell-1", target, before, by)
    result.save()
    assert result.violations == []
    assert result.completed == n


def _redis_fault(faults, action: str, strategy: str):
    """Redis restarted (it keeps nothing on disk) or flushed while the copy runs.

    The target's ``issues`` and ``notes`` are held (HeldTable), so both worker slots are busy with units
    of those tables while the other tables' unit messages wait in the queue: the fault happens under a
    running copy, and a flush provably loses messages the move needs, which only the reconciler can
    send again (flushing only the running tasks' messages would lose nothing)."""
    result = ScenarioResult(f"2. Redis {action} mid-move ({strategy})")
    org, before, by = _mover_and_bystander(faults)
    settings = faults.settings
    faults.worker()
    target = faults.fleet.cell_dsns["cell-2"]
    with HeldTable(target, "issues"), HeldTable(target, "notes"):
        move = Operations(settings).request_move(org, "cell-2", actor="faults", reason=f"redis {action}",
                                                 strategy=strategy)
        wait_copying(settings, move.id)
        lost = 0
        if action == "restarted":
            faults.redis.restart()
        else:
            lost = _flush_queued(faults, settings)
            print(f"flushed {lost} queued message(s)")
    _finish(faults, result, move.id, org, "cell-1", "cell-2", before, by)
    events = [e.event for e in MoveStore(settings.control_dsn).events(move.id)]
    result.worker_restarts = faults.restarts
    result.save()
    assert result.violations == []
    if action == "flushed":
        assert lost > 0, "no unit message was waiting in the queue when Redis was flushed"
        assert "reconciled" in events, f"{lost} queued message(s) flushed: the reconciler should have sent them again"


def _flush_queued(faults, settings, timeout: float = 60.0) -> int:
    """FLUSHALL once unit messages wait in the queues (the two held units occupy both worker slots; the
    rest of the copy's units are queued behind them). Returns how many queued messages were flushed."""
    import redis as redis_lib

    from migrator.moves.dispatch import all_queues

    client = redis_lib.Redis.from_url(faults.redis.url)
    queues = all_queues(settings)
    queued = wait_for(lambda: sum(client.llen(q) for q in queues), timeout=timeout,
                      what="unit messages waiting in the queues")
    client.flushall()
    return queued


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_redis_restarted_mid_move(faults, strategy):
    _redis_fault(faults, "restarted", strategy)


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_redis_flushed_mid_move(faults, strategy):
    _redis_fault(faults, "flushed", strategy)


@pytest.mark.parametrize("strategy", ["frozen", "online"])
@pytest.mark.parametrize("which", ["source", "target", "control"])
def test_connections_terminated_mid_batch(faults, which, strategy):
    result = ScenarioResult(f"3. connections terminated ({which}, {strategy})")
    org, before, by = _mover_and_bystander(faults, rows=4000)
    settings = faults.settings
    faults.worker()
    dsn = {"source": faults.fleet.cell_dsns["cell-1"], "target": faults.fleet.cell_dsns["cell-2"],
           "control": faults.fleet.control_dsn}[which]
    killed = 0
    # The target's notes are held, so the connections die under a running copy (never after the move ended).
    with HeldTable(faults.fleet.cell_dsns["cell-2"], "notes"):
        move = Operations(settings).request_move(org, "cell-2", actor="faults", reason=f"terminate {which}",
                                                 strategy=strategy)
        wait_copying(settings, move.id)
        with psycopg.connect(dsn, autocommit=True) as admin:
            for _ in range(5):
                killed += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'cells-migrator%%' AND pid <> pg_backend_pid()").fetchone()[0]
                time.sleep(0.3)
    _finish(faults, result, move.id, org, "cell-1", "cell-2", before, by)
    result.save()
    assert result.violations == []
    assert killed > 0, "no migrator connection was terminated: the fault did not happen"


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_duplicate_delivery_and_two_workers(faults, strategy):
    result = ScenarioResult(f"4. duplicate delivery + two workers ({strategy})")
    org, before, by = _mover_and_bystander(faults, rows=4000)
    settings = faults.settings
    faults.worker()
    faults.worker()
    store = MoveStore(settings.control_dsn)
    dispatcher = Dispatcher(settings)
    move = Operations(settings).request_move(org, "cell-2", actor="faults", reason="duplicates", strategy=strategy)
    sent = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = store.get(move.id)
        if m.state not in ("queued", "running"):
            break
        dispatcher.step(m, m.step)  # the same step again, same token
        for u in store.pending_units(m.id, m.step):
            dispatcher.unit(m, m.step, u.unit)
            dispatcher.unit(m, m.step, u.unit)
            sent += 2
        sent += 1
        time.sleep(0.15)
    _finish(faults, result, move.id, org, "cell-1", "cell-2", before, by)
    result.save()
    assert result.violations == [] and sent > 5


def test_two_operators_at_the_same_moment(faults):
    result = ScenarioResult("5. two operators, same organization, same moment")
    org, before, by = _mover_and_bystander(faults, rows=1000)
    settings = faults.settings
    env = child_env(faults.fleet.config_path)
    cmd = [str(Path(sys.executable).parent / "migrator"), "move", "--org", str(org), "--json"]
    procs = [subprocess.Popen([*cmd, "--to", cell], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cell in ("cell-2", "cell-3")]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    moves = MoveStore(settings.control_dsn).list(organization_id=org)
    assert codes == [0, 1], outs
    assert len(moves) == 1
    loser = outs[[p.returncode for p in procs].index(1)][1]
    assert "already has an active move" in loser
    faults.worker()
    _finish(faults, result, moves[0].id, org, "cell-1", moves[0].target_cell, before, by)
    result.save()
    assert result.violations == []


def _writer(faults, org: int, seconds: float, out: Path, seed: int) -> subprocess.Popen:
    env = child_env(faults.fleet.config_path)
    return subprocess.Popen([sys.executable, "-m", "tests.faults.writer", "--org", str(org), "--seconds",
                             str(seconds), "--out", str(out), "--seed", str(seed), "--rate", "80"], env=env, cwd=ROOT)


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_writers_before_during_and_after(faults, tmp_path, strategy):
    n = trials(1, 5)
    result = ScenarioResult(f"6. writers before, during and after the move ({strategy})")
    orgs = _seed(faults, n + 1, rows=3000)
    [other] = _seed(faults, 1, rows=1000, cell="cell-2", seed=9)
    settings = faults.settings
    faults.worker()
    for i, org in enumerate(orgs[:n]):
        bystander = orgs[-1]
        logs = {org: tmp_path / f"w-{org}.jsonl", bystander: tmp_path / f"w-{bystander}-{i}.jsonl",
                other: tmp_path / f"w-{other}-{i}.jsonl"}
        writers = [_writer(faults, o, 12, path, seed=100 * i + j) for j, (o, path) in enumerate(logs.items())]
        time.sleep(2)  # writes before the move
        move = Operations(settings).request_move(org, "cell-2", actor="faults", reason=f"writers trial {i}",
                                                 strategy=strategy)
        move = _finish(faults, result, move.id, org, "cell-1", "cell-2", None, None, writers=True)
        for w in writers:
            w.wait(60)
        for o, path in logs.items():
            cell = topology_client(settings).classify(o).cell
            lost, counts = lost_writes(settings, cell, str(path))
            result.writes_acked += counts["acked"]
            result.writes_rejected += counts["rejected"]
            result.writes_lost += len(lost)
            result.violations += [f"org {o}: {x}" for x in lost]
            if o != org and counts["rejected"]:
                result.violations.append(f"bystander org {o} had {counts['rejected']} writes rejected")
            if counts["errors"]:
                result.violations.append(f"org {o}: {counts['errors']} writes failed with other errors")
        assert move.state == "completed"
    result.save()
    assert result.violations == [] and result.writes_lost == 0
    if strategy == "frozen":
        assert result.writes_rejected > 0, "no write hit the freeze: the scenario did not exercise it"


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_stale_worker_cannot_advance_or_flip(faults, strategy):
    result = ScenarioResult(f"8. stale worker (superseded token, {strategy})")
    org, before, by = _mover_and_bystander(faults, rows=4000)
    settings = faults.settings
    ops = Operations(settings)
    with HeldTable(faults.fleet.cell_dsns["cell-2"], "notes"):  # the move cannot flip before the pause
        worker = faults.worker()
        move = ops.request_move(org, "cell-2", actor="faults", reason="stale worker", strategy=strategy)
        wait_copying(settings, move.id)
        old = MoveStore(settings.control_dsn).get(move.id)
        ops.pause(move.id)
        worker.kill(signal.SIGKILL)
    resumed = ops.resume(move.id)  # a new attempt: the old token is superseded
    assert resumed.token != old.token
    store = MoveStore(settings.control_dsn)
    # The old attempt can neither advance a step, nor flip the route, nor run a step.
    assert store.advance(move.id, old.token, resumed.step) is None
    from migrator.errors import StaleToken, StaleVersion

    with pytest.raises((StaleToken, StaleVersion)):
        topology_client(settings).flip(org, "cell-1", "cell-2", expected_version=old.route_version or 1,
                                       token=old.token, actor="stale", reason="stale")
    outcome = run_step(settings, str(move.id), resumed.step, old.token, owner="stale-worker")
    assert outcome.skipped
    # A stale message on the real worker does nothing either.
    faults.worker()
    Dispatcher(settings).step(old, "flip", token=old.token)
    _finish(faults, result, move.id, org, "cell-1", "cell-2", before, by)
    result.save()
    assert result.violations == []


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_target_database_stopped_mid_copy_then_started(tmp_path, monkeypatch, strategy):
    """Cell-2 runs on a PostgreSQL server of its own, stopped mid-copy and started again."""
    import shutil
    import tempfile

    import yaml

    from migrator.fleet.processes import free_port
    from tests.faults.conftest import fault_fleet

    if shutil.which("runuser") is None:
        pytest.skip("runuser not available")
    # Outside pytest's root-only tmp tree: the postgres user must reach its data directory.
    cluster_root = Path(tempfile.mkdtemp(prefix="cm-pg-target-"))
    cluster = OwnCluster(cluster_root, free_port()).init()
    cluster.start()

    def cell2_on_its_own_server(fleet):
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE cell2")
        cfg = yaml.safe_load(fleet.config_path.read_text())
        cfg["cells"]["cell-2"]["dsn"] = cluster.dsn("cell2")
        fleet.config_path.write_text(yaml.safe_dump(cfg))

    result = ScenarioResult(f"7. target database stopped mid-copy, then started ({strategy})")
    try:
        with fault_fleet(tmp_path, monkeypatch, customize=cell2_on_its_own_server) as ff:
            org, before, by = _mover_and_bystander(ff, rows=5000)
            settings = ff.settings
            ff.worker()
            # The copy is held on the target (HeldTable), so the server stops under a running copy, never
            # after the move finished; stopping the server ends the hold.
            hold = HeldTable(cluster.dsn("cell2"), "notes")
            move = Operations(settings).request_move(org, "cell-2", actor="faults", reason="target down",
                                                     strategy=strategy)
            wait_copying(settings, move.id)
            cluster.stop()
            hold.release()
            time.sleep(4)
            cluster.start()
            _finish(ff, result, move.id, org, "cell-1", "cell-2", before, by)
            events = [e.event for e in MoveStore(settings.control_dsn).events(move.id)]
            result.save()
            assert result.violations == []
            assert "retry" in events or result.failed_then_resumed, "the outage was never seen by the move"
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(cluster_root, ignore_errors=True)


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_abort_under_fault_leaves_source_authoritative(faults, strategy):
    """A move whose worker is SIGKILLed mid-copy, aborted while no worker runs, then a new worker takes over:
    source unchanged and writable, target clean, state ``aborted``.

    The target's ``notes`` table is held (``HeldTable``) so the copy cannot finish: the move is provably
    before its flip when the worker dies and when the abort is requested (a fast copy used to flip first).
    """
    from tests.faults.invariants import check_not_moved

    result = ScenarioResult(f"1b. abort while a worker is killed ({strategy})")
    org, before, by = _mover_and_bystander(faults, rows=4000)
    settings = faults.settings
    with HeldTable(faults.fleet.cell_dsns["cell-2"], "notes") as hold:
        worker = faults.worker()
        move = Operations(settings).request_move(org, "cell-2", actor="faults", reason="abort under fault",
                                                 strategy=strategy)
        wait_copying(settings, move.id)
        worker.kill(signal.SIGKILL)
        aborted = migrator(faults.fleet, "abort", str(move.id), "--no-wait", "--reason", "abort under fault")
        assert aborted.returncode == 0, aborted.stderr
        assert MoveStore(settings.control_dsn).get(move.id).state == "aborting"
        hold.release()
        faults.worker()
        final = wait_move(settings, move.id, timeout=120)
    result.trials += 1
    violations = check_not_moved(settings, org, "cell-1", "cell-2", before, by)
    if final.state == "aborted" and not violations:
        result.aborted_clean += 1
    result.violations += violations
    result.save()
    assert final.state == "aborted", final.error
    assert violations == []


def _worker_running(faults, task_id: str):
    """The live worker whose log shows it received Celery task ``task_id``."""
    for w in faults.workers:
        if w.alive() and task_id in w.log():
            return w
    return None


@pytest.mark.parametrize("strategy", ["frozen", "online"])
def test_worker_killed_inside_the_write_window(faults, strategy):
    """SIGKILL the worker running ``drain`` (inside the write window): another worker takes the step over
    within seconds (short lease renewed by a heartbeat thread, the reconciler's window pass), not after
    the minutes of the long lease.

    Held deterministically: a transaction the test opened on the source before the freeze keeps drain
    waiting (drain waits out every transaction older than the freeze), so the kill lands while drain
    runs; the test commits it right after the kill. Online moves wait for transactions older than the
    capture too, so there the transaction is opened while the copy is held (HeldTable), after capture.
    """
    result = ScenarioResult(f"9. worker SIGKILLed inside the write window ({strategy})")
    org, before, by = _mover_and_bystander(faults, rows=2000)
    settings = faults.settings
    faults.worker()
    faults.worker()
    store = MoveStore(settings.control_dsn)
    old_tx = psycopg.connect(faults.fleet.cell_dsns["cell-1"], application_name="test-old-transaction")
    try:
        if strategy == "online":
            with HeldTable(faults.fleet.cell_dsns["cell-2"], "notes"):
                move = Operations(settings).request_move(org, "cell-2", actor="faults", reason="kill in window",
                                                         strategy=strategy)
                wait_copying(settings, move.id)
                old_tx.execute("SELECT txid_current()")  # begun after the capture, before the freeze
        else:
            old_tx.execute("SELECT txid_current()")
            move = Operations(settings).request_move(org, "cell-2", actor="faults", reason="kill in window",
                                                     strategy=strategy)
        draining = wait_move(settings, move.id, timeout=120,
                             predicate=lambda m, s: m.step == "drain" and m.lease_owner is not None)
        task_id = draining.lease_owner.split(":")[0]
        victim = wait_for(lambda: _worker_running(faults, task_id), timeout=30, what=f"the worker of {task_id}")
        victim.kill(signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        old_tx.rollback()
        old_tx.close()
    wait_move(settings, move.id, timeout=120, predicate=lambda m, s: m.step != "drain" or m.state != "running")
    result.takeover_s.append(round(time.monotonic() - killed_at, 2))
    final = _finish(faults, result, move.id, org, "cell-1", "cell-2", before, by)
    events = [(e.step, e.event) for e in store.events(move.id)]
    result.save()
    print(f"{strategy}: drain taken over {result.takeover_s[0]} s after the kill; write window "
          f"{(final.report or {}).get('write_window_s')} s")
    assert result.violations == [] and final.state == "completed", final.error
    assert ("drain", "reconciled") in events, "the window pass of the reconciler should have re-enqueued drain"


def test_capture_trigger_disabled_mid_move_never_flips(faults):
    """A careless operator switches the capture trigger off during a data fix, writes, and switches it on
    again: the write was never logged. The online move must not flip (the DDL watch recorded the switch);
    resumed, it captures and copies again, and the organization arrives whole, the fix included."""
    result = ScenarioResult("10. capture trigger disabled mid-move (online)")
    org, bystander = _seed(faults, 2, rows=2000)
    settings = faults.settings
    by = snapshot(settings, [(bystander, "cell-1")])
    faults.worker()
    source = faults.fleet.cell_dsns["cell-1"]
    with HeldTable(faults.fleet.cell_dsns["cell-2"], "notes"):
        move = Operations(settings).request_move(org, "cell-2", actor="faults", reason="careless fix",
                                                 strategy="online")
        wait_copying(settings, move.id)
        with psycopg.connect(source, autocommit=True) as conn:
            note = conn.execute("SELECT t.id FROM notes t JOIN projects p ON p.id = t.project_id JOIN namespaces n"
                                " ON n.id = p.namespace_id WHERE n.organization_id = %s ORDER BY t.id DESC LIMIT 1",
                                (org,)).fetchone()[0]
            conn.execute("ALTER TABLE notes DISABLE TRIGGER migrator_change_capture")
            conn.execute("UPDATE notes SET note = 'fixed while the capture was off' WHERE id = %s", (note,))
            conn.execute("ALTER TABLE notes ENABLE TRIGGER migrator_change_capture")
    failed = wait_move(settings, move.id, timeout=120)
    assert failed.state == "failed" and failed.error_code == "capture_incomplete", (failed.state, failed.error)
    assert failed.flipped_at is None and "notes" in failed.error
    route = topology_client(settings).classify(org)
    assert route.cell == "cell-1" and route.state == "active"
    before = snapshot(settings, [(org, "cell-1")])[(org, "cell-1")]  # the fix is part of what must arrive
    Operations(settings).resume(move.id, actor="faults")
    final = wait_move(settings, move.id, timeout=240)
    result.trials += 1
    result.failed_then_resumed += 1
    result.completed += final.state == "completed"
    result.violations += check_completed(settings, move.id, org, "cell-1", "cell-2", before=before, bystanders=by)
    result.save()
    assert final.state == "completed", final.error
    assert result.violations == []
    with psycopg.connect(faults.fleet.cell_dsns["cell-2"], autocommit=True) as conn:
        assert conn.execute("SELECT note FROM notes WHERE id = %s", (note,)).fetchone()[0] == \
            "fixed while the capture was off"
