"""The runbooks' command blocks, run verbatim against a real fleet put in the state each runbook describes.

Every fenced ``sh``/``bash``/``console`` block of ``docs/runbooks/*.md`` is either run here or carries a
marker on the line before it (docs/runbooks/README.md, "Tested commands"):

- ``<!-- runbook-test: skip (reason) -->``: not run (Prometheus, Alertmanager, systemd, a cloud console,
  a destructive infrastructure step, …); the reason is required.
- ``<!-- runbook-test: fails (reason) -->``: run, and must exit non-zero (a command the runbook shows
  being refused).

Each runbook with unmarked blocks has a scenario below that puts one fleet into the runbook's state and
runs all of them (in the order the scenario needs), through ``bash -e -o pipefail`` with the documented
variables (``MOVE``, ``ORG``, ``CONTROL_DSN``, …) set; a scenario that leaves one out fails. A new
unmarked block in a runbook without a scenario fails ``test_every_block_runs_or_says_why_not``.

The fleet is shared by the module (one Topology Service, one worker with beat inside, its broker on a
Redis of its own reached through ``redis+socket://``, queues prefixed ``rb-``); each scenario moves an
organization of its own. States are held, never raced: a ``HeldTable`` on the target keeps a move in
``copy_rows`` while the runbook's checks run.
"""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from migrator.fleet.services import RedisServer, child_env, start_topology_server, wait_worker_ready
from migrator.moves.operations import Operations
from migrator.moves.store import MoveStore
from migrator.sample.seed import seed_organizations
from tests.support import ROOT
from tests.support.fleet import make_fleet, start_worker
from tests.support.moves import HeldTable, wait_copying, wait_move

pytestmark = pytest.mark.integration

RUNBOOKS = ROOT / "docs" / "runbooks"
COMMAND_LANGS = ("sh", "bash", "console")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*runbook-test:\s*(?P<kind>\S+)\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
PREFIX = "rb-"


@dataclass(frozen=True)
class Block:
    runbook: str
    line: int
    text: str
    marker: str | None = None   # None (run it), "skip" or "fails"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.runbook}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The command blocks of one markdown file, dedented, each with the marker on the line before it."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m["indent"]), m["lang"]
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        if lang in COMMAND_LANGS:
            body = "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[i + 1:j])
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = MARKER.match(lines[k]) if k >= 0 else None
            out.append(Block(path.name, i + 1, body + "\n", marker["kind"] if marker else None,
                             (marker["reason"] or "").strip() if marker else ""))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in sorted(RUNBOOKS.glob("*.md")) for b in blocks_of(p)]


# -- the fleet ---------------------------------------------------------------------------------------


class RunbookFleet:
    def __init__(self, fleet, redis: RedisServer, tmp: Path):
        self.fleet, self.redis, self.tmp = fleet, redis, tmp
        self.workers: list = []
        self._n = 0
        self._seed = 100

    @property
    def settings(self):
        return self.fleet.settings()

    def worker(self, queues: str | None = None):
        """A worker with beat inside, consuming every queue (or ``queues``, a ``-Q`` value)."""
        self._n += 1
        name = f"rb{self._n}"
        proc = start_worker(self.fleet.config_path, self.tmp / f"worker-{name}.log", name=name, concurrency=2,
                            queues=queues, beat_schedule=self.tmp / f"beat-{name}")
        self.workers.append(wait_worker_ready(proc, timeout=60))
        return proc

    def org(self, rows: int = 2000, blobs: int = 2) -> int:
        self._seed += 1
        [org] = seed_organizations(self.settings, "cell-1", orgs=1, rows=rows, blobs=blobs, skew=False,
                                   seed=self._seed)
        return org.organization_id

    def env(self, **values) -> dict[str, str]:
        cells = self.fleet.cell_dsns
        env = child_env(self.fleet.config_path, {
            "CONTROL_DSN": self.fleet.control_dsn, "BROKER_URL": self.fleet.broker_url,
            "SOURCE_CELL": "cell-1", "TARGET_CELL": "cell-2", "CELL": "cell-1",
            "SOURCE_DSN": cells["cell-1"], "TARGET_DSN": cells["cell-2"],
            # An operator's terminal of 80 columns: every table the runbooks show fits it (issue 20).
            "COLUMNS": "80"})
        env.update({k: str(v) for k, v in values.items()})
        return env


@pytest.fixture(scope="module")
def rb(tmp_path_factory):
    from migrator.config import clear_settings_cache
    from migrator.control.engine import upgrade_control_db

    tmp = tmp_path_factory.mktemp("runbooks")
    redis = RedisServer(tmp / "redis").start()
    fleet = make_fleet(tmp / "fleet", broker_url=redis.socket_url, overrides={"celery": {"queue_prefix": PREFIX}})
    topo = None
    state = RunbookFleet(fleet, redis, tmp)
    with pytest.MonkeyPatch.context() as mp:
        try:
            mp.setenv("MIGRATOR_CONFIG", str(fleet.config_path))
            clear_settings_cache()
            upgrade_control_db(fleet.control_dsn)
            topo = start_topology_server(fleet.config_path, fleet.topology_listen, tmp / "topology.log")
            fleet.init()
            state.worker()
            yield state
        finally:
            for w in state.workers:
                w.stop()
            if topo is not None:
                topo.stop()
            redis.stop()
            fleet.drop()
            clear_settings_cache()


class Runbook:
    """One runbook's blocks to run (every block without a skip marker), each run at most once."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name = name
        self.env = env
        self.todo = [b for b in blocks_of(RUNBOOKS / name) if b.marker != "skip"]
        self.ran: list[str] = []

    def block(self, snippet: str) -> Block:
        found = [b for b in self.todo if snippet in b.text]
        assert len(found) == 1, f"{self.name}: {len(found)} blocks contain {snippet!r}"
        return found[0]

    def start(self, snippet: str) -> subprocess.Popen:
        b = self.block(snippet)
        return subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", b.text], env=self.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, snippet: str, *expect: str, **more_env) -> subprocess.CompletedProcess:
        """Run the block containing ``snippet``; it must exit 0 (non-zero for ``fails``) and print
        every string of ``expect`` (stdout and stderr)."""
        b = self.block(snippet)
        if more_env:
            self.env.update({k: str(v) for k, v in more_env.items()})
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", b.text], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        return self.check(b, proc.returncode, proc.stdout, proc.stderr, expect)

    def finish(self, proc: subprocess.Popen, snippet: str, *expect: str) -> subprocess.CompletedProcess:
        out, err = proc.communicate(timeout=600)
        return self.check(self.block(snippet), proc.returncode, out, err, expect)

    def check(self, b: Block, code: int, out: str, err: str, expect) -> subprocess.CompletedProcess:
        shown = f"{b.where}\n{b.text}\n--- exit {code}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
        if b.marker == "fails":
            assert code != 0, shown
        else:
            assert code == 0, shown
        # What a runbook says is printed, wherever an 80-column table wrapped it (spaces and line ends collapsed).
        printed = " ".join((out + err).split())
        for e in expect:
            assert " ".join(e.split()) in printed, f"{e!r} not printed by {shown}"
        self.ran.append(b.where)
        return subprocess.CompletedProcess(b.text, code, out, err)

    def assert_all_ran(self) -> None:
        left = [b.where for b in self.todo if b.where not in self.ran]
        assert not left, f"blocks of {self.name} not run by its scenario: {left}"


def _held_move(rb: RunbookFleet, *, strategy: str = "frozen"):
    """A move of a fresh organization, held in ``copy_rows`` by a lock on the target's notes."""
    org = rb.org()
    hold = HeldTable(rb.fleet.cell_dsns["cell-2"], "notes")
    move = Operations(rb.settings).request_move(org, "cell-2", actor="runbook-test", reason="runbook",
                                                strategy=strategy)
    wait_copying(rb.settings, move.id)
    return org, move, hold


def _wait_lock_waiter(dsn: str) -> None:
    """Until a session of the target waits on a lock (the copy blocked by the HeldTable)."""
    import time

    for _ in range(600):
        with psycopg.connect(dsn, autocommit=True) as c:
            if c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND wait_event_type = 'Lock'").fetchone()[0]:
                return
        time.sleep(0.1)
    raise AssertionError("no session of the target waits on the held table")


def _completed(rb: RunbookFleet, move_id):
    move = wait_move(rb.settings, move_id, timeout=300)
    assert move.state == "completed", (move.state, move.step, move.error)
    assert move.report["verification"]["ok"]
    return move


# -- the scenarios, one per runbook with blocks to run ----------------------------------------------------


def scenario_move_stuck(rb: RunbookFleet, book_env):
    org, move, hold = _held_move(rb)
    book = Runbook("move-stuck.md", book_env(MOVE=move.id, ORG=org))
    try:
        book.run("migrator status $MOVE --json", '"step": "copy_rows"', '"state": "running"', "silent_for")
        book.run("source_frozen_clock", "frozen at 20", "open_for")
        book.run("migrator broker queues", "copy_rows", f"{PREFIX}control", f"{PREFIX}rows", f"{PREFIX}blobs",
                 "unacked")
        _wait_lock_waiter(rb.fleet.cell_dsns["cell-2"])
        book.run("wait_event_type = 'Lock'", "Lock", "(1 row)")
        book.run("migrator topology classify $ORG", "frozen", move.token)
    finally:
        hold.release()
    _completed(rb, move.id)
    return book


def scenario_move_stuck_in_step(rb: RunbookFleet, book_env):
    """MoveStuckInStep: the move-stuck state (held in copy_rows); the fix lets it go on."""
    org, move, hold = _held_move(rb)
    book = Runbook("alert-move-stuck-in-step.md", book_env(MOVE=move.id, ORG=org))
    try:
        book.run("m.get(\"error_code\")", "running copy_rows None None", "copy_rows", f"{PREFIX}rows",
                 str(move.id))
    finally:
        hold.release()
    _completed(rb, move.id)
    book.run("# completed, or the next step", "completed")
    return book


def scenario_write_window_too_long(rb: RunbookFleet, book_env):
    """WriteWindowTooLong: a frozen-strategy move held in copy_rows is inside its window; give up (abort)."""
    org, move, hold = _held_move(rb)
    book = Runbook("alert-write-window-too-long.md", book_env(MOVE=move.id, ORG=org))
    try:
        book.run('m["freeze_lifted"]', "running copy_rows 20", "frozen", move.token, "(1 row)")
        aborting = book.start("write window over 10 minutes")
        wait_move(rb.settings, move.id, predicate=lambda m, _s: m.state in ("aborting", "aborted"))
    finally:
        hold.release()  # the abort deletes the partial copy on the target: it needs the lock gone
    book.finish(aborting, "write window over 10 minutes", "aborted")
    book.run("# completed or aborted", "state aborted", "active", "cell-1")
    from migrator.topology.client import topology_client

    with topology_client(rb.settings) as client:
        route = client.classify(org)
    assert (route.cell, route.state) == ("cell-1", "active")
    return book


def scenario_no_live_workers(rb: RunbookFleet, book_env):
    """NoLiveWorkers for the rows queue (and the reconciler re-sending into it): the only worker consumes
    the control queue alone, so a move's copy units wait on the rows queue; the fix starts a worker that
    consumes every queue."""
    from migrator.broker import queue_depths

    for w in rb.workers:
        w.stop()
    rb.workers.clear()
    rb.worker(queues=f"{PREFIX}control")
    org = rb.org(rows=1000, blobs=1)
    move = Operations(rb.settings).request_move(org, "cell-2", actor="runbook-test", reason="runbook",
                                                strategy="frozen")

    def rows_waiting(m, store) -> bool:
        if m.step != "copy_rows":
            return False
        return {q.kind: q.messages for q in queue_depths(rb.settings).queues}["rows"] > 0

    wait_move(rb.settings, move.id, predicate=rows_waiting)
    env = book_env(MOVE=move.id, ORG=org)
    alert = Runbook("alert-no-live-workers.md", env)
    reenqueues = Runbook("alert-reconciler-reenqueues-climbing.md", dict(env))
    out = alert.run("celery -A tasks inspect ping", "pong", f"{PREFIX}control", f"{PREFIX}rows").stdout
    assert f"'name': '{PREFIX}rows'" not in out  # no worker consumes it
    reenqueues.run("WHERE e.event = 'reconciled'", str(move.id)[:8], "reenqueued", f"{PREFIX}rows")
    rb.worker()  # the fix: a worker for every queue
    alert.run("# control, rows and blobs all listed", f"'name': '{PREFIX}rows'", f"'name': '{PREFIX}blobs'")
    _completed(rb, move.id)
    reenqueues.run("# the moves progress", "")
    return [alert, reenqueues]


def scenario_api_token_leaked(rb: RunbookFleet, book_env):
    """The API runs with a token that leaked; rotate it (new token, no previous tokens, API restarted)."""
    from tests.support.api import configure, start_api

    old = "leaked-token-0123456789abcdef"
    configure(rb.fleet, api={"token": old, "previous_tokens": []})
    api, url = start_api(rb.fleet, rb.tmp / "api-1.log")
    try:
        book = Runbook("api-token-leaked.md", book_env(OLD_TOKEN=old, API=url.removeprefix("http://")))
        book.run("grep -n -A3 '^api:'", "api:", "token")
        book.run("WHERE actor = 'api'", "(0 rows)")
        new = book.run("migrator api new-token").stdout.strip().splitlines()[-1]
        assert len(new) >= 43 and new != old
        configure(rb.fleet, api={"token": new, "previous_tokens": []})
        api.stop()
        api, url = start_api(rb.fleet, rb.tmp / "api-2.log")
        out = book.run("Bearer $OLD_TOKEN", "ok", NEW_TOKEN=new, API=url.removeprefix("http://")).stdout
        assert out.splitlines()[:2] == ["401", "200"], out
    finally:
        api.stop()
    return book


def scenario_capacity_alert(rb: RunbookFleet, book_env):
    """CellCapacityHigh for cell-1, posted to the running API as Alertmanager sends it: the rebalancer plans
    one organization off the cell and moves it (the workers restarted with the marks); then the alert
    resolves, and the operator pauses the rebalancer (the runbook's "stop everything")."""
    import httpx

    from migrator.fleet.processes import wait_for
    from migrator.rebalance.readings import refresh_readings
    from migrator.rebalance.store import RebalanceStore
    from tests.support.api import TOKEN, alertmanager_payload, auth, configure, start_api

    rb.org(rows=300, blobs=1)
    store = RebalanceStore(rb.settings.control_dsn)
    load = {r["cell"]: r for r in refresh_readings(rb.settings)}["cell-1"]["bytes"]
    smallest = min(o.bytes for o in store.org_readings("cell-1"))
    configure(rb.fleet, api={"token": TOKEN, "previous_tokens": []}, rebalance={
        "defaults": {"high_water_bytes": 10**12, "low_water_bytes": 10**11},
        "cells": {"cell-1": {"high_water_bytes": load - 1, "low_water_bytes": load - smallest}},
        "max_moves_per_cell": 1, "max_moves_total": 1, "tick_every_s": 2, "readings_every_s": 3600,
        "readings_max_age_s": 3600})
    for w in rb.workers:  # they read the marks at start
        w.stop()
    rb.workers.clear()
    rb.worker()
    api, url = start_api(rb.fleet, rb.tmp / "api-rebalance.log")
    try:
        r = httpx.post(f"{url}/v1/alerts", json=alertmanager_payload("cell-1", fingerprint="rb0000000000cafe"),
                       headers=auth(TOKEN), timeout=10)
        assert r.status_code == 202, r.text

        def started_item():
            plans = store.plans(cell="cell-1")
            items = store.plan_items(plans[0].id) if plans else []
            return next((i for i in items if i.state == "started"), None)

        item = wait_for(started_item, timeout=120, what="the rebalancer to start a move")
        plan = store.plans(cell="cell-1")[0]
        env = book_env(CELL="cell-1", PLAN=plan.id, MOVE=item.move_id, ORG=item.organization_id)
        book = Runbook("capacity-alert-fired.md", env)
        alert = Runbook("alert-cell-capacity-high.md", dict(env))
        book.run("migrator rebalance decisions --cell $CELL            #", "alert_received", "plan_made",
                 "move_started")
        book.run("migrator rebalance plans $PLAN", str(plan.id)[:8], "started")
        book.run("migrator cells capacity                              #", "cell-1", "approval")
        alert.run("migrator cells capacity", "cell-1")
        alert.run("migrator rebalance plans --cell $CELL", "move_started", "rebalancer", str(item.move_id)[:8])
        _completed(rb, item.move_id)
        r = httpx.post(f"{url}/v1/alerts", headers=auth(TOKEN), timeout=10,
                       json=alertmanager_payload("cell-1", status="resolved", fingerprint="rb0000000000cafe"))
        assert r.status_code == 202, r.text
        wait_for(lambda: store.decisions(cell="cell-1", kind="alert_resolved"), timeout=60,
                 what="the resolved alert recorded")
        alert.run("# ends with alert_resolved", "alert_resolved")
        book.run('migrator rebalance pause --reason "incident 1234"', "")
        status = subprocess.run(["migrator", "rebalance", "status"], env=env, capture_output=True, text=True)
        assert "incident 1234" in status.stdout, status.stdout + status.stderr
    finally:
        api.stop()
    return [book, alert]


def scenario_catch_up_not_converging(rb: RunbookFleet, book_env):
    """An online move in catch_up whose delta cannot shrink: the organization's notes changed on the source
    after the copy, and a lock on the target's notes keeps every round from applying them. The steps up
    to the catch-up run in this process (the lock is taken before the move reaches catch_up, so no worker
    ever races it); the worker is then woken for catch_up and blocks on the lock."""
    from migrator.moves.dispatch import Dispatcher
    from tests.support.moves import run_in_process

    org = rb.org(rows=1500, blobs=1)
    store = MoveStore(rb.settings.control_dsn)
    move = store.create(organization_id=org, source="cell-1", target="cell-2", requested_by="runbook-test",
                        reason="runbook", strategy="online")
    store.start(move.id, move.token)
    run_in_process(rb.settings, move, ["preflight", "capture", "copy_rows"])
    hold = HeldTable(rb.fleet.cell_dsns["cell-2"], "notes")
    try:
        run_in_process(rb.settings, move, ["copy_blobs"])
        with psycopg.connect(rb.fleet.cell_dsns["cell-1"], autocommit=True) as src:
            src.execute(EDIT_NOTES, (org,))
        Dispatcher(rb.settings).step(store.get(move.id), "catch_up")
        _wait_lock_waiter(rb.fleet.cell_dsns["cell-2"])
        assert store.get(move.id).step == "catch_up"
        book = Runbook("online-catch-up-not-converging.md", book_env(MOVE=move.id, ORG=org))
        book.run("migrator.change_log GROUP BY capture_id", "catch_up", str(move.id), "notes", "40",
                 "(1 row)")
    finally:
        hold.release()
    _completed(rb, move.id)
    return book


def scenario_topology_call_refused(rb: RunbookFleet, book_env):
    """The only worker calls the Topology Service with a reader's certificate: the move's freeze is refused
    (permission_denied) and the move fails. The fix: a worker with the mover's certificate, and resume."""
    from migrator.fleet.config import role_env
    from migrator.fleet.services import start_worker as start
    from tests.support.fleet import fleet_certs

    certs = fleet_certs()
    for w in rb.workers:
        w.stop()
    rb.workers.clear()
    reader = wait_worker_ready(start(
        rb.fleet.config_path, rb.tmp / "worker-reader.log", name="reader", concurrency=2,
        beat_schedule=rb.tmp / "beat-reader", env=child_env(rb.fleet.config_path, role_env(certs, "reader"))),
        timeout=60)
    try:
        org = rb.org(rows=300, blobs=1)
        move = Operations(rb.settings).request_move(org, "cell-2", actor="runbook-test", reason="runbook",
                                                    strategy="frozen")
        failed = wait_move(rb.settings, move.id, states=("failed", "completed", "rejected"))
        assert (failed.state, failed.error_code) == ("failed", "permission_denied"), (failed.state, failed.error)
        book = Runbook("topology-call-refused.md", book_env(
            MOVE=move.id, ORG=org, PID=reader.pid, CLIENT_CERT=certs["clients"]["reader"]["cert"], CA=certs["ca"],
            SERVER_CERT=certs["server"]["cert"]))
        book.run("/proc/$PID/environ", "tls:", "MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT", "reader")
        book.run('migrator topology certs show "$SERVER_CERT"', '"127.0.0.1"')
    finally:
        reader.stop()
    rb.worker()  # the fix: the mover's certificate (as deploy/ gives workers)
    book.run("migrator status --state failed", str(move.id)[:8], "failed", "freeze", "active")
    resumed = subprocess.run(["migrator", "resume", str(move.id), "--wait"], env=book.env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _completed(rb, move.id)
    return book


def scenario_cell_database_unavailable(rb: RunbookFleet, book_env):
    """The target cell's database stops taking connections mid-copy (ALLOW_CONNECTIONS false, its sessions
    terminated): the move records retries and waits. The fix: the database back; the move goes on."""
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    org, move, hold = _held_move(rb)
    db = rb.fleet.cell_dbs["cell-2"]
    admin = make_conninfo(rb.fleet.cell_dsns["cell-2"], dbname="postgres")
    book = Runbook("cell-database-unavailable.md", book_env(MOVE=move.id, ORG=org))
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(db)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        hold.release()  # its session is gone with the others
        store = MoveStore(rb.settings.control_dsn)
        wait_move(rb.settings, move.id, predicate=lambda m, s: any(e.event == "retry" for e in s.events(m.id)))
        book.run("pg_isready", "retry", "does not answer", "accepting connections", "frozen")
        book.run("migrator cells list\n", "cell-2", "does not", "not currently accepting connections")
    finally:
        hold.release()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(db)))
    move = wait_move(rb.settings, move.id, timeout=300)
    if move.state == "failed":  # past its last retry: the runbook's fix for a failed move
        subprocess.run(["migrator", "resume", str(move.id)], env=book.env, check=True, capture_output=True)
    _completed(rb, move.id)
    assert "retry" in [e.event for e in store.events(move.id)]
    return book


def scenario_control_database_down(rb: RunbookFleet, book_env):
    """The control database stops taking connections (ALLOW_CONNECTIONS false, its sessions terminated) while
    a move is held in copy_rows; the database back, the move goes on by itself."""
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    org, move, hold = _held_move(rb)
    db = psycopg.conninfo.conninfo_to_dict(rb.fleet.control_dsn)["dbname"]
    admin = make_conninfo(rb.fleet.control_dsn, dbname="postgres")
    book = Runbook("alert-control-database-down.md", book_env(MOVE=move.id, ORG=org))
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(db)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        book.run("does the database answer at all", "accepting connections", "not currently accepting connections")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(db)))
        hold.release()
    book.run("migrator status --state running --state failed", "")
    move = wait_move(rb.settings, move.id, timeout=300)
    if move.state == "failed":  # a step that ran out of retries during the outage: the runbook's resume
        subprocess.run(["migrator", "resume", str(move.id)], env=book.env, check=True, capture_output=True)
    _completed(rb, move.id)
    book.run("# moves progress (migrator watch $MOVE)", "")
    return book


def _restart_workers(rb: RunbookFleet) -> None:
    """Every worker stopped and one started (workers read the config at start)."""
    for w in rb.workers:
        w.stop()
    rb.workers.clear()
    rb.worker()


def scenario_move_throttled_long(rb: RunbookFleet, book_env):
    """MoveThrottledLong: the target cell's canary query (a configured ``pg_sleep``) is slower than its stop
    limit, so an online move's copy units are paused on every try; the fix of "the limit is wrong for
    this cell": that cell's canary changed, the workers restarted, the move goes on."""
    from tests.support.api import configure

    slow = {"canary_sql": "SELECT pg_sleep(0.3)", "canary_samples": 1, "canary_p99_slow_ms": 100.0,
            "canary_p99_stop_ms": 250.0}
    configure(rb.fleet, health={"enabled": True, "cells": {"cell-2": slow}, "pause_s": 1.0})  # off in test fleets
    _restart_workers(rb)
    try:
        org = rb.org(rows=600, blobs=1)
        move = Operations(rb.settings).request_move(org, "cell-2", actor="runbook-test", reason="runbook",
                                                    strategy="online")
        def paused(m, _store) -> bool:
            assert m.state in ("queued", "running"), f"move {m.state} at {m.step} without being throttled"
            return (m.throttle or {}).get("signal") == "stop"

        wait_move(rb.settings, move.id, predicate=paused)
        book = Runbook("alert-move-throttled-long.md", book_env(MOVE=move.id, ORG=org, CELL="cell-2"))
        book.run("# the \"throttled\" line", "throttled paused: canary", "on cell-2", "limit 250 ms")
        book.run("migrator cells health --cell $CELL --wide", "canary", "stop", "cell-2")
        # The fix: the limit raised for that cell only, the workers restarted.
        configure(rb.fleet, health={"enabled": True, "cells": {"cell-2": {**slow, "canary_p99_slow_ms": 2000.0,
                                                                          "canary_p99_stop_ms": 5000.0}}})
        _restart_workers(rb)
        moved = _completed(rb, move.id)
        assert "throttle_lifted" in [e.event for e in MoveStore(rb.settings.control_dsn).events(moved.id)]
    finally:
        configure(rb.fleet, health={"enabled": False, "cells": {}})  # as the other scenarios expect
        _restart_workers(rb)
    return book


def scenario_worker_died(rb: RunbookFleet, book_env):
    org, move, hold = _held_move(rb)
    book = Runbook("worker-died.md", book_env(MOVE=move.id, ORG=org))
    try:
        dead = rb.workers.pop()
        dead.kill(signal.SIGKILL)
        rb.worker()  # the replacement; the move stays held on the target
        book.run("celery -A tasks inspect ping", '"step": "copy_rows"', "silent_for", "lease_owner", "pong",
                 f"{PREFIX}rows")
    finally:
        hold.release()
    _completed(rb, move.id)
    return book


def scenario_redis_lost_queue(rb: RunbookFleet, book_env):
    import redis as redis_py

    org, move, hold = _held_move(rb)
    book = Runbook("redis-lost-queue.md", book_env(MOVE=move.id, ORG=org))
    try:
        client = redis_py.Redis(unix_socket_path=str(rb.redis.workdir / "redis.sock"))
        client.flushall()
        client.close()
        book.run("migrator broker queues", f"{PREFIX}control", "pong", str(move.id)[:8])
        book.run("ORDER BY heartbeat_at", str(move.id), "silent_for")
    finally:
        hold.release()
    _completed(rb, move.id)
    return book


def scenario_route_frozen_without_a_move(rb: RunbookFleet, book_env):
    from migrator.cells.guard import freeze_org
    from migrator.topology.client import topology_client

    org = rb.org(rows=200, blobs=0)
    with topology_client(rb.settings) as client:
        client.freeze(org, "left-by-a-deleted-move", expected_cell="cell-1", actor="runbook-test")
    with psycopg.connect(rb.fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        freeze_org(conn, org, "left-by-a-deleted-move")
    book = Runbook("route-frozen-without-a-move.md", book_env(ORG=org))
    book.run("migrator status --org $ORG", "frozen", "left-by-a-deleted-move", "(1 row)")
    book.run("migrator topology repair", "")
    out = book.run("migrator topology classify $ORG          # active", "active", '"action": "repair"',
                   "freeze left by deleted move").stdout
    assert "frozen" not in out.split("\n")[0]
    with psycopg.connect(rb.fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM migrator.frozen_orgs WHERE organization_id = %s",
                            (org,)).fetchone()[0] == 0
    return book


def scenario_abort_and_rollback(rb: RunbookFleet, book_env):
    org, move, hold = _held_move(rb)
    book = Runbook("abort-and-rollback.md", book_env(MOVE=move.id, ORG=org))
    try:
        book.run("migrator status $MOVE --json        #", '"flipped_at": null', "cell-1")
        book.run("completed_at, error_code FROM moves", "copy_rows", "freeze")
        aborting = book.start("maintenance window over")
        wait_move(rb.settings, move.id, predicate=lambda m, _s: m.state in ("aborting", "aborted"))
    finally:
        hold.release()  # the abort deletes the partial copy on the target: it needs the lock gone
    book.finish(aborting, "maintenance window over", "aborted")
    assert MoveStore(rb.settings.control_dsn).get(move.id).state == "aborted"

    # After the flip: the abort is refused, the way back is a cleanup and a move in the other direction.
    org2 = rb.org(rows=500, blobs=1)
    done = Operations(rb.settings).request_move(org2, "cell-2", actor="runbook-test", reason="to roll back")
    _completed(rb, done.id)
    book.env.update(MOVE=str(done.id), ORG=str(org2))
    book.run("# error: move … has already flipped", "has already flipped", "migrator move --org")
    book.run("migrator cleanup $MOVE --force                 #", "cleaned", "roll back", "completed")
    store = MoveStore(rb.settings.control_dsn)
    assert store.get(done.id).state == "cleaned"
    [back] = [m for m in store.list() if m.organization_id == org2 and m.source_cell == "cell-2"]
    assert (back.target_cell, back.state) == ("cell-1", "completed")
    return book


GARBLE = """
CREATE FUNCTION rb_garble() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.id = {id} THEN NEW.note := NEW.note || ' (changed on the target)'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER rb_garble BEFORE INSERT OR UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION rb_garble();
ALTER TABLE notes ENABLE ALWAYS TRIGGER rb_garble;  -- fires under session_replication_role = replica too
"""
EDIT_NOTES = ("UPDATE notes SET note = note || ' (edited during the move)' WHERE id IN (SELECT t.id FROM notes t "
              "JOIN projects p ON p.id = t.project_id JOIN namespaces n ON n.id = p.namespace_id "
              "WHERE n.organization_id = %s ORDER BY t.id LIMIT 40)")
NOTE_OF_ORG = ("SELECT t.id FROM notes t JOIN projects p ON p.id = t.project_id JOIN namespaces n ON n.id = "
               "p.namespace_id WHERE n.organization_id = %s ORDER BY t.id LIMIT 1")


def scenario_verification_failed(rb: RunbookFleet, book_env):
    """A trigger on the target changes one of the organization's notes as it is copied (someone else's
    write on the target): verify finds the range differing, re-copies it, still differs, the move fails
    with checksum_mismatch before the flip. The fix: drop the cause, resume."""
    org = rb.org(rows=1500, blobs=1)
    target = rb.fleet.cell_dsns["cell-2"]
    with psycopg.connect(rb.fleet.cell_dsns["cell-1"], autocommit=True) as src:
        [note] = src.execute(NOTE_OF_ORG, (org,)).fetchone()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(GARBLE.format(id=int(note)))
    try:
        move = Operations(rb.settings).request_move(org, "cell-2", actor="runbook-test", reason="runbook",
                                                    strategy="frozen")
        failed = wait_move(rb.settings, move.id, states=("failed", "completed"), timeout=300)
        assert (failed.state, failed.error_code) == ("failed", "checksum_mismatch"), (failed.state, failed.error)
        env = book_env(MOVE=move.id, ORG=org)
        alert = Runbook("alert-move-verification-failed.md", env)
        book = Runbook("verification-failed.md", dict(env))
        alert.run("migrator status --state failed --json", str(move.id), "checksums differ after a re-copy")
        alert.run("migrator status $MOVE                       # the mismatch", "notes", "mismatch", "failed")
        book.run("migrator status $MOVE --json", '"checksum_mismatch"', "copying the range again", "notes")
        book.run("range_sql.py", "notes (")
        book.run("diff /tmp/source.txt", "< ", "> ", str(note))
    finally:
        with psycopg.connect(target, autocommit=True) as conn:  # the cause, fixed
            conn.execute("DROP TRIGGER IF EXISTS rb_garble ON notes")
            conn.execute("DROP FUNCTION IF EXISTS rb_garble()")
        for name in ("range_sql.py", "range.sql", "source.txt", "target.txt"):  # what the blocks wrote
            Path("/tmp", name).unlink(missing_ok=True)
    alert.run("migrator resume $MOVE --wait", "completed")
    alert.run("migrator status $MOVE                       # completed", "completed")
    _completed(rb, move.id)
    return [alert, book]


SCENARIOS = {
    # scenario: (what it does, the runbooks whose blocks it runs)
    "move-stuck": (scenario_move_stuck, ("move-stuck.md",)),
    "alert-move-stuck-in-step": (scenario_move_stuck_in_step, ("alert-move-stuck-in-step.md",)),
    "alert-write-window-too-long": (scenario_write_window_too_long, ("alert-write-window-too-long.md",)),
    "no-live-workers": (scenario_no_live_workers,
                        ("alert-no-live-workers.md", "alert-reconciler-reenqueues-climbing.md")),
    "api-token-leaked": (scenario_api_token_leaked, ("api-token-leaked.md",)),
    "catch-up-not-converging": (scenario_catch_up_not_converging, ("online-catch-up-not-converging.md",)),
    "topology-call-refused": (scenario_topology_call_refused, ("topology-call-refused.md",)),
    "cell-database-unavailable": (scenario_cell_database_unavailable, ("cell-database-unavailable.md",)),
    "worker-died": (scenario_worker_died, ("worker-died.md",)),
    "redis-lost-queue": (scenario_redis_lost_queue, ("redis-lost-queue.md",)),
    "route-frozen-without-a-move": (scenario_route_frozen_without_a_move, ("route-frozen-without-a-move.md",)),
    "abort-and-rollback": (scenario_abort_and_rollback, ("abort-and-rollback.md",)),
    "capacity-alert": (scenario_capacity_alert, ("capacity-alert-fired.md", "alert-cell-capacity-high.md")),
    "control-database-down": (scenario_control_database_down, ("alert-control-database-down.md",)),
    "move-throttled-long": (scenario_move_throttled_long, ("alert-move-throttled-long.md",)),
    "verification-failed": (scenario_verification_failed,
                            ("verification-failed.md", "alert-move-verification-failed.md")),
}
# Runbooks whose state needs a fleet of its own (test_object_store_down_runbook: cells on an S3 server).
OWN_FLEET = ("object-store-down.md",)
COVERED = {name for _fn, books in SCENARIOS.values() for name in books} | set(OWN_FLEET)


def test_every_block_runs_or_says_why_not():
    """Each command block is run by its runbook's scenario, or marked skip with a reason."""
    blocks = all_blocks()
    assert blocks, "no command blocks found"
    problems = []
    for b in blocks:
        if b.marker not in (None, "skip", "fails"):
            problems.append(f"{b.where}: unknown marker {b.marker!r} (skip or fails)")
        elif b.marker in ("skip", "fails") and not b.reason:
            problems.append(f"{b.where}: a {b.marker} marker needs a reason in parentheses")
        elif b.marker != "skip" and b.runbook not in COVERED:
            problems.append(f"{b.where}: no scenario runs {b.runbook}; add one to SCENARIOS or mark the block "
                            f"<!-- runbook-test: skip (reason) -->")
    assert not problems, "\n".join(problems)


def test_markers_sit_right_before_a_block():
    """A marker that is not followed by a command block marks nothing (a typo, or a block moved away)."""
    stray = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        lines = path.read_text().splitlines()
        fenced = False
        for i, line in enumerate(lines):
            if FENCE.match(line):
                fenced = not fenced
            elif "<!-- runbook-test" in line and not fenced:
                nxt = next((x for x in lines[i + 1:] if x.strip()), "")
                m = FENCE.match(nxt)
                if not MARKER.match(line) or not m or m["lang"] not in COMMAND_LANGS:
                    stray.append(f"{path.name}:{i + 1}")
    assert not stray, stray


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_runbook_blocks_run_in_the_state_they_describe(rb, scenario):
    run, runbooks = SCENARIOS[scenario]
    books = run(rb, rb.env)
    books = books if isinstance(books, list) else [books]
    assert sorted(b.name for b in books) == sorted(runbooks)
    for book in books:
        book.assert_all_ran()



# -- commands in the prose ------------------------------------------------------------------------------

INLINE = re.compile(r"`(migrator [^`]+)`")


def _inline_commands() -> list[tuple[str, str]]:
    """Every ``migrator …`` named in the runbooks: inline code spans and command lines of fenced blocks."""
    out = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text()
        out += [(path.name, m.group(1)) for m in INLINE.finditer(text.replace("\n  ", " "))]
        for b in blocks_of(path):
            for line in b.text.splitlines():
                for part in re.split(r"[|;]|&&|\$\(", line.split(" #")[0]):
                    part = part.strip()
                    if part.startswith("migrator "):
                        out.append((path.name, part))
    return out


def test_every_migrator_command_named_exists_with_its_options():
    """Each ``migrator`` command a runbook names (in a block or in the prose) is a command of the current
    CLI, and each ``--option`` it shows is one of that command's options."""
    import typer

    from migrator.cli.main import build_app

    root = typer.main.get_command(build_app())
    problems = []
    for runbook, command in _inline_commands():
        words = command.split()[1:]
        cmd, path = root, ["migrator"]
        for w in words:
            if not hasattr(cmd, "commands") or w.startswith("-"):  # a command, not a group (typer's own click)
                break
            sub = cmd.commands.get(w)
            if sub is None:
                if re.fullmatch(r"[a-z][a-z-]+", w):
                    problems.append(f"{runbook}: `{command}`: no command {' '.join(path + [w])!r}")
                break
            cmd, path = sub, path + [w]
        if hasattr(cmd, "commands"):
            continue  # a group named in passing (`migrator rebalance`)
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for w in words:
            opt = w.split("=", 1)[0]
            if opt.startswith("--") and opt not in known:
                problems.append(f"{runbook}: `{command}`: {' '.join(path)} has no option {opt}")
    assert not problems, "\n".join(problems)


# -- a fleet whose cells keep their blobs on an S3 server ----------------------------------------------------


@pytest.fixture(scope="module")
def s3rb(tmp_path_factory):
    """Two cells whose blob stores are buckets of a moto S3 server of its own (stopped and started again on
    the same port with its objects); one task retry, so an outage fails a move in seconds."""
    import uuid

    from migrator.config import clear_settings_cache
    from migrator.control.engine import upgrade_control_db
    from migrator.fleet.s3_server import MotoServer, s3_blobs, use_test_credentials

    tmp = tmp_path_factory.mktemp("runbooks-s3")
    with pytest.MonkeyPatch.context() as mp:
        use_test_credentials(mp)
        server = MotoServer(tmp / "moto", record=True).start()
        redis = RedisServer(tmp / "redis").start()
        tag = uuid.uuid4().hex[:10]
        buckets = {"cell-1": f"src-{tag}", "cell-2": f"dst-{tag}"}
        server.create_buckets(*buckets.values())
        fleet = make_fleet(tmp / "fleet", cells=2, broker_url=redis.socket_url,
                           blobs={c: s3_blobs(server, b) for c, b in buckets.items()},
                           overrides={"celery": {"queue_prefix": PREFIX},
                                      "moves": {"blob_batch": 2, "blob_workers": 1, "task_retries": 1}})
        topo = None
        state = RunbookFleet(fleet, redis, tmp)
        try:
            mp.setenv("MIGRATOR_CONFIG", str(fleet.config_path))
            clear_settings_cache()
            upgrade_control_db(fleet.control_dsn)
            topo = start_topology_server(fleet.config_path, fleet.topology_listen, tmp / "topology.log")
            fleet.init()
            yield state, server
        finally:
            for w in state.workers:
                w.stop()
            if topo is not None:
                topo.stop()
            redis.stop()
            server.stop()
            fleet.drop()
            clear_settings_cache()


def test_object_store_down_runbook(s3rb):
    """The S3 endpoint stops while a move's copy_blobs units wait on the blobs queue (the only worker takes
    the control and rows queues): a blob worker then fails them, the move fails with
    blob_store_unavailable. The fix: the endpoint back, resume."""
    rb, server = s3rb
    rb.worker(queues=f"{PREFIX}control,{PREFIX}rows")
    org = rb.org(rows=300, blobs=6)
    move = Operations(rb.settings).request_move(org, "cell-2", actor="runbook-test", reason="runbook",
                                                strategy="frozen")
    wait_move(rb.settings, move.id, predicate=lambda m, s: m.step == "copy_blobs" and s.units(m.id, "copy_blobs"))
    server.stop()
    try:
        rb.worker(queues=f"{PREFIX}blobs")
        failed = wait_move(rb.settings, move.id, states=("failed", "completed"), timeout=300)
        assert (failed.state, failed.error_code) == ("failed", "blob_store_unavailable"), (failed.state, failed.error)
        book = Runbook("object-store-down.md", rb.env(MOVE=move.id, ORG=org))
        book.run("report: .report.freeze_lifted", '"blob_store_unavailable"', '"copy_blobs"', "failed")
    finally:
        server.restart()  # the same port, and (replayed) the buckets and objects it had
    book.run("migrator resume $MOVE --wait", '"verification": true', "copy_blobs")
    moved = _completed(rb, move.id)
    assert moved.report["verification"]["blobs_verified"] >= 6
    book.assert_all_ran()
