"""``migrator demo``: start the fleet, provision three cells, seed, move one organization, report.

The flow is the one an operator runs by hand (``cells init``, ``seed``, ``move --wait``) against a
fleet the demo starts itself (:mod:`migrator.demo.fleet`). The exit code is 0 only when the move
completed, every table's rows and checksums matched on both sides, and the route flipped exactly
once to the target cell.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from migrator.config import clear_settings_cache, load_settings
from migrator.demo.fleet import (
    DEFAULT_DIR,
    EMBEDDED,
    FLOWER_USER,
    USE_CONFIG,
    DemoError,
    DemoPaths,
    Fleet,
    demo_lock,
    disk_usage,
    fleet_running,
    is_demo_folder,
    load_state,
    moves_in_flight,
    prepare,
    require_embedded_packages,
    socket_folder,
    stop_kept,
)
from migrator.demo.report import build_report, print_report
from migrator.fleet.processes import MARKER_ENV, find_fleet_processes

SOURCE, TARGET = "cell-1", "cell-2"


@dataclass
class DemoOptions:
    directory: Path = Path(DEFAULT_DIR)
    exit_after: bool = False
    keep: bool = False
    use_config: bool = False
    config: str | None = None
    orgs: int = 4
    rows: int = 5000
    blobs: int = 12
    blob_bytes: int = 8192
    concurrency: int = 2
    timeout: float = 300.0
    as_json: bool = False


class _Say:
    """Plain progress lines (paths are never read as markup and never wrapped)."""

    def __init__(self, console: Console):
        self.console = console

    def __call__(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _signals_interrupt() -> None:
    """SIGINT, SIGTERM and SIGHUP end the demo like Ctrl-C: the fleet is stopped on the way out.

    SIGINT too, because a shell starts background jobs with SIGINT ignored (``kill -INT`` must work).
    """

    def handler(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def _shielded() -> None:
    """No second Ctrl-C half way through stopping the fleet."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _use_demo_environment(paths: DemoPaths, *, embedded: bool) -> None:
    """This process and its children read the demo's config and nothing from the caller's MIGRATOR_*.

    Embedded, the libpq variables (PGHOST, PGPORT, ...) go too: they would steer the embedded server
    and its clients (the demo's DSNs name host and port; nothing falls back to a default server).
    """

    for key in list(os.environ):
        if key.upper().startswith("MIGRATOR_") or (embedded and key.startswith("PG")):
            del os.environ[key]
    os.environ["MIGRATOR_CONFIG"] = str(paths.config)
    os.environ[MARKER_ENV] = str(paths.root)  # inherited by the embedded PostgreSQL too
    clear_settings_cache()


class _Watchdog(threading.Thread):
    """Interrupts the progress display if the worker or the Topology Service dies, or time runs out."""

    def __init__(self, fleet: Fleet, timeout: float):
        super().__init__(name="demo-watchdog", daemon=True)
        self.fleet = fleet
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.reason: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            dead = [n for n in ("worker", "topology") if n in self.fleet.processes
                    and not self.fleet.processes[n].alive()]
            if dead:
                self.reason = f"the {' and the '.join(dead)} process stopped during the move"
            elif time.monotonic() > self.deadline:
                self.reason = f"the move did not finish within {self.timeout:.0f} s"
            if self.reason:
                _thread.interrupt_main()
                return

    def stop(self) -> None:
        self._halt.set()


def _print_cells(results: list[dict], say: _Say) -> None:
    for r in results:
        lo, hi = r["range"]
        say(f"  {r['cell']}: schema {'applied' if r['schema_applied'] else 'present'}, freeze guard on "
            f"{r['guard_tables']} tables, ids {lo:,}..{hi:,}")


def _print_seeded(seeded: list, out: Console) -> None:
    t = Table(title=f"{len(seeded)} organizations seeded in {SOURCE}")
    for col in ("organization", "rows", "blobs", "blob bytes"):
        t.add_column(col, justify="right")
    for s in seeded:
        t.add_row(str(s.organization_id), f"{s.rows:,}", f"{s.blobs:,}", f"{s.blob_bytes:,}")
    t.add_row("[bold]total", f"[bold]{sum(s.rows for s in seeded):,}", f"[bold]{sum(s.blobs for s in seeded):,}",
              f"[bold]{sum(s.blob_bytes for s in seeded):,}")
    out.print(t)


def _move_one(fleet: Fleet, opts: DemoOptions, out: Console, say: _Say) -> dict:
    # deferred: the demo's steps import the whole system; `migrator demo --help` should not
    from migrator.cells.provision import init_cells
    from migrator.moves.operations import Operations
    from migrator.moves.watch import watch_move
    from migrator.sample.seed import seed_organizations
    from migrator.topology.client import topology_client

    settings = fleet.settings()
    started = time.monotonic()
    results = init_cells(settings)
    say(f"migrator cells init: {len(results)} cells provisioned in {time.monotonic() - started:.1f} s")
    _print_cells(results, say)

    started = time.monotonic()
    seeded = seed_organizations(settings, SOURCE, orgs=opts.orgs, rows=opts.rows, blobs=opts.blobs,
                                blob_bytes=opts.blob_bytes, skew=True)
    say(f"migrator seed: {sum(s.rows for s in seeded):,} rows and {sum(s.blobs for s in seeded)} blobs in "
        f"{time.monotonic() - started:.1f} s")
    _print_seeded(seeded, out)
    org = seeded[0].organization_id  # the biggest

    fleet.wait_worker_ready()
    # deferred: the edge router only when haproxy is installed
    from migrator.demo.edge import DemoEdge

    edge = DemoEdge.start(fleet, say)  # the edge router, when HAProxy is installed
    topology = topology_client(settings)
    try:
        route_before = topology.classify(org)
        ops = Operations(settings, topology=topology)
        if edge is not None:
            edge.follow(org, SOURCE)
        move = ops.request_move(org, TARGET, actor="demo", reason=f"migrator demo: {SOURCE} -> {TARGET}")
        say(f"migrator move --org {org} --to {TARGET}: move {move.id} enqueued; live progress:")
        watchdog = _Watchdog(fleet, opts.timeout)
        watchdog.start()
        try:
            move = watch_move(ops, str(move.id), quiet=opts.as_json)
        except KeyboardInterrupt:
            if watchdog.reason:
                raise DemoError(f"move {move.id}: {watchdog.reason}",
                                f"see the logs in {fleet.paths.logs} and `migrator status {move.id}`") from None
            raise
        finally:
            watchdog.stop()
        move = ops.store.get(move.id)
        report = build_report(ops.store, move, route_before=route_before, route_after=topology.classify(org),
                              route_history=topology.history(org), seeded=seeded)
        if edge is not None and move.state == "completed":
            report["edge"] = edge.summary(TARGET, out)
        return report
    finally:
        close = getattr(topology, "close", None)
        if close is not None:
            close()


def _print_next_steps(fleet: Fleet, report: dict, opts: DemoOptions, say: _Say) -> None:
    paths = fleet.paths
    auth = shlex.quote(str(paths.flower_auth))
    say("")
    say("Use this fleet from another shell (the lines work as pasted):")
    say(f"  source {shlex.quote(str(paths.env_script))}   # PATH and MIGRATOR_CONFIG for this fleet")
    say("  migrator status                                   # every move")
    say(f"  migrator status {report['move_id']}   # this one: plan, verification, history")
    say(f"  migrator move --org {report['organization_id']} --to cell-3 --wait     # move it on")
    say("  migrator abort MOVE_ID                            # stop a move before its flip")
    say(f'  FLOWER_BASIC_AUTH="$(cat {auth})" celery -A tasks flower   # Flower: http://127.0.0.1:5555 '
        f"(loopback only); log in as {FLOWER_USER}, the password is in {auth}")
    say(f"Logs: {paths.logs}")
    if opts.keep:
        return
    if opts.exit_after:
        say("(--exit: the fleet stops now; `migrator demo` without --exit, or with --keep, leaves it running)")


def _serve(fleet: Fleet, say: _Say) -> None:
    say("The fleet is running. Ctrl-C stops it.")
    while True:
        time.sleep(1.0)
        dead = [name for name, ref in fleet.processes.items() if not ref.alive()]
        if dead:
            raise DemoError(f"the demo fleet lost its {', '.join(dead)} process",
                            f"see the logs in {fleet.paths.logs}; run `migrator demo` again for a new fleet")


def run_demo(opts: DemoOptions) -> int:
    """Run the demo; returns the exit code (0: the move completed and verified)."""
    out = Console(stderr=True) if opts.as_json else Console()
    say = _Say(out)
    paths = DemoPaths(opts.directory)
    configured = None
    if opts.use_config:

        configured = load_settings(opts.config)
        if Path(configured.config_path) == paths.config:
            raise DemoError(f"--use-config read the demo's own config ({paths.config})",
                            "point MIGRATOR_CONFIG (or --config) at your own config, or drop --use-config")
    else:
        require_embedded_packages()
    _use_demo_environment(paths, embedded=not opts.use_config)

    with demo_lock(paths), _signals_interrupt():
        fleet: Fleet | None = None
        keep_fleet = False
        code = 1
        report = None
        try:
            what = "the configured PostgreSQL and Redis" if opts.use_config else "embedded PostgreSQL and Redis"
            say(f"cells-migrator demo in {paths.root}: {what}, the Topology Service, a Celery worker")
            fleet = prepare(paths, mode=USE_CONFIG if opts.use_config else EMBEDDED, keep=opts.keep,
                            concurrency=opts.concurrency, say=say, configured=configured)
            keep_fleet = opts.keep
            fleet.make_flower_auth()
            fleet.write_env_script()
            report = _move_one(fleet, opts, out, say)
            report["config"] = str(paths.config)
            code = 0 if report["ok"] else 1
            if opts.as_json:
                sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
                sys.stdout.flush()
            else:
                print_report(report, out)
            _print_next_steps(fleet, report, opts, say)
            if not opts.exit_after and not opts.keep:
                _serve(fleet, say)
        except KeyboardInterrupt:
            say("interrupted")
            if report is None:
                code = 130
        finally:
            if fleet is not None:
                with _shielded():
                    if keep_fleet:
                        fleet.leave_running()
                        pids = ", ".join(f"{n} {r.pid}" for n, r in fleet.processes.items())
                        say(f"fleet left running ({pids}); `migrator demo --keep` reuses it, "
                            f"`migrator demo --stop --dir {paths.root}` stops it, "
                            f"`migrator demo --clean --dir {paths.root}` stops it and removes the folder")
                    else:
                        started = time.monotonic()
                        count = fleet.stop()
                        left = find_fleet_processes(paths.root)
                        say(f"fleet stopped: {count} process(es) in {time.monotonic() - started:.1f} s, "
                            + (f"but still running: {', '.join(str(r.pid) for r in left)}" if left
                               else "none left running"))
        if report is not None and not report["ok"]:
            say(f"the move did not verify: state {report['state']}" + (f", {report['error']}" if report["error"]
                                                                        else ""))
        return code


def _forget_callers_config() -> None:
    for key in [k for k in os.environ if k.upper().startswith("MIGRATOR_")]:
        del os.environ[key]  # the folder's own config describes its fleet


def _stop_fleet(paths: DemoPaths, say: _Say, *, force: bool, option: str) -> int:
    """Stop the fleet in ``paths`` (under its lock), unless a move is in flight and not ``force``."""
    if not fleet_running(paths):
        return stop_kept(paths, say)  # nothing runs: only stale files and sockets to drop
    state = load_state(paths) or {}
    try:
        in_flight = moves_in_flight(paths)
    except DemoError:
        if not force:
            raise
        in_flight = []
        say("could not read the demo's moves; stopping the fleet anyway (--force)")
    again = f"migrator demo {option} --force" + ("" if paths.root == DemoPaths(DEFAULT_DIR).root
                                                  else f" --dir {shlex.quote(str(paths.root))}")
    described = "; ".join(f"move {m['id']} (organization {m['organization_id']} -> {m['target']}) is "
                          f"{m['state']} at step {m['step']}" for m in in_flight)
    if in_flight and not force:
        first = in_flight[0]
        finish = (f"resume it to the end (`migrator resume {first['id']} --wait`)"
                  if first["state"] in ("paused", "failed") else f"wait for its end (`migrator watch {first['id']}`)")
        forced = "leaves the move in flight" if option == "--stop" else "removes the move with the folder"
        raise DemoError(
            f"the demo fleet in {paths.root} has {len(in_flight)} move(s) in flight: {described}; "
            "stopping the fleet would leave it half done",
            f"{finish} or abort it (`migrator abort {first['id']}`), after `source "
            f"{shlex.quote(str(paths.env_script))}` in your shell; or `{again}` stops the fleet anyway and {forced}")
    count = stop_kept(paths, say)
    if in_flight:
        where = ("its databases were dropped with the fleet" if state.get("mode") == USE_CONFIG else
                 f"its data stays in {paths.root} until `migrator demo --clean` or the next `migrator demo`, "
                 "which starts from empty databases")
        say(f"--force: left in flight with nothing to advance it: {described}; {where}")
    return count


def stop_demo(directory: Path, *, force: bool = False) -> int:
    """``migrator demo --stop``: stop a fleet left running with ``--keep`` (not while a move is in flight,
    unless ``force``)."""
    say = _Say(Console())
    paths = DemoPaths(directory)
    _forget_callers_config()
    if not paths.root.exists():
        say(f"no demo in {paths.root}")
        return 0
    with demo_lock(paths):
        count = _stop_fleet(paths, say, force=force, option="--stop")
    if not count:
        say(f"no demo fleet was running in {paths.root}")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def clean_demo(directory: Path, *, force: bool = False) -> int:
    """``migrator demo --clean``: stop the fleet (as ``--stop``), then remove the demo folder."""
    say = _Say(Console())
    paths = DemoPaths(directory)
    _forget_callers_config()
    if not paths.root.exists():
        say(f"no demo in {paths.root}: nothing to remove")
        return 0
    if not is_demo_folder(paths):
        raise DemoError(f"{paths.root} is not a folder of `migrator demo` (no demo.lock, state.json or demo "
                        "config in it); nothing removed", "pass the folder the demo used: --dir DIR")
    with demo_lock(paths):
        _stop_fleet(paths, say, force=force, option="--clean")
        sockets = socket_folder(paths)
        folders = [paths.root, *([sockets] if sockets else [])]
        freed = disk_usage(*folders)
        try:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=folder is not paths.root)
        except OSError as exc:
            raise DemoError(f"could not remove all of {paths.root}: {exc}",
                            "remove what is left by hand") from None
    say(f"removed {paths.root}: {_size(freed)} freed ({freed:,} bytes)")
    return 0
