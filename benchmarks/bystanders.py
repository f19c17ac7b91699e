"""What a move costs the organizations that stay: bystander latency and standby lag, unthrottled and
throttled on the cells' health (issue 19, docs/adr/0019-health-indicators.md).

    .venv/bin/python benchmarks/bystanders.py [--rows 2000000] [--idle-s 30] [--rate 50] [--workers 2]
                                              [--smoke] [--json out.json]

One run, one fleet:

- the **source** cell (cell-1) runs on a PostgreSQL server of its own (``tests/support/postgres.py``:
  initdb into a private directory, run as the postgres user) with a real **streaming standby**
  (``pg_basebackup -R``, started by the benchmark and listed in ``cells.cell-1.standbys``); the
  **target** cell (cell-2) and a scratch cell (cell-3, for the raw COPY baseline) on the main server;
- both cells hold other organizations ("bystanders", ``benchmarks/_bystanders.py``), and two
  organizations of ``--rows`` rows each are seeded into the source: one for each move;
- a **steady bystander workload**: one thread per cell, at ``--rate`` operations/s on a fixed schedule,
  against bystander organizations of that cell: read an issue by id (50%), list a project's latest
  notes (30%), insert a note (20%, autocommit, so one WAL flush each); each operation's latency is kept;
- the standby's replay lag (``now() - pg_last_xact_replay_timestamp()`` while it has WAL it has not
  replayed, as the health indicator reads it) and the primary's ``pg_stat_replication`` replay lag
  and bytes behind, sampled every 0.2 s.

Phases, the workload running throughout (figures per phase from the operations that started in it):

1. **idle** (``--idle-s``): nothing else; its p99 of the canary query sets the canary's limits;
2. **raw COPY**: the first organization's rows, table by table, ``COPY (SELECT …) TO STDOUT (FORMAT
   BINARY)`` from the source piped into ``COPY … FROM STDIN`` of the scratch cell (the house yardstick);
3. **unthrottled move** of the first organization to cell-2 (``health.enabled: false``);
4. **throttled move** of the second one (same size, same cells) with ``health`` on: a canary per cell (the
   bystanders' read-an-issue query, slow at ``--slow-factor`` x its idle p99, stop at ``--stop-factor``
   x), a replication-lag limit (``--lag-slow-s`` / ``--lag-stop-s``), ``--target-batch-s``; every other
   indicator at its default;
5. **idle after** (``--idle-s``): did the bystanders come back to their idle latency (drift, noise)?

The workers read the health config once per process (``get_settings`` is cached), so each move gets
freshly started workers with the config rewritten for it.

Prints a table, writes JSON and Markdown (default ``benchmarks/results/bystanders-<date>.json`` / ``.md``).
Targets (issue 19): bystander p99 during the throttled move <= 1.5x idle (moonshot 1.2x), in both
cells; standby replay lag under its stop limit; the throttled move completes (its extra time reported).
Everything (servers, workers, databases, directories) is removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import psycopg  # noqa: E402

from benchmarks import _bystanders as bystanders  # noqa: E402
from benchmarks._fleet import ADMIN_DSN, ROOT, BenchFleet, checkpoint, machine, stop_on_signals, wait_moves  # noqa: E402

SOURCE, TARGET, SCRATCH = "cell-1", "cell-2", "cell-3"
TARGETS = {"p99_ratio": 1.5, "p99_ratio_moonshot": 1.2}
SMOKE = {"rows": 3000, "idle_s": 3.0, "rate": 20.0, "source_bystanders": 6000, "target_bystanders": 3000,
         "template_rows": 1000, "settle_s": 0.5, "workers": 1}
KINDS = {"read_issue": 0.5, "list_notes": 0.3, "insert_note": 0.2}
CANARY_KIND = "read_issue"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def pct(values, q: float) -> float | None:
    """The q-th percentile (nearest rank), as the health indicator's p99."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _r(v, nd=3):
    return None if v is None else round(v, nd)


# ----------------------------------------------------------------------------- the private servers
class Servers:
    """The source cell's own PostgreSQL server and its streaming standby (stopped and removed by close)."""

    def __init__(self):
        from migrator.fleet.processes import free_port
        from tests.support.postgres import OwnCluster, private_root

        self.root = private_root("cm-bench-pg-")
        self.primary = OwnCluster(self.root / "primary", free_port())
        self.standby = None
        self._free_port = free_port

    def start(self) -> Servers:
        self.primary.init()
        self.primary.start()
        with psycopg.connect(self.primary.dsn(), autocommit=True) as c:
            # A standby that falls far behind must still find its WAL (no slot: pg_basebackup -R as in the tests).
            c.execute("ALTER SYSTEM SET wal_keep_size = '2GB'")
            c.execute("SELECT pg_reload_conf()")
        self.standby = self.primary.standby(self.root / "standby", self._free_port())
        self.standby.start()
        return self

    def close(self) -> None:
        for s in (self.standby, self.primary):
            if s is not None and (s.data / "postmaster.pid").exists():
                s.stop_quietly()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_caught_up(self, timeout: float = 600) -> float:
        """Until the standby has replayed what the primary had written when called; returns the seconds waited."""
        t0 = time.monotonic()
        with psycopg.connect(self.primary.dsn(), autocommit=True) as c:
            (upto,) = c.execute("SELECT pg_current_wal_lsn()").fetchone()
            while time.monotonic() - t0 < timeout:
                row = c.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, replay_lsn) FROM pg_stat_replication",
                                (str(upto),)).fetchone()
                if row and row[0] is not None and row[0] <= 0:
                    return time.monotonic() - t0
                time.sleep(0.2)
        raise TimeoutError(f"the standby did not catch up within {timeout}s")


@contextlib.contextmanager
def fleet_with_private_source(servers: Servers, keep: bool = False):
    """``bench_fleet`` with cell-1 moved to the private server (its standby listed): made before the
    Topology Service starts, so every process reads the final cells."""
    from migrator.config import clear_settings_cache
    from migrator.topology.certs import init_fleet

    root = Path(tempfile.mkdtemp(prefix="cm-bench-"))
    certs = init_fleet(root / "certs")
    fleet = BenchFleet.create(root, cells=3, certs=certs, prefix="cmb", admin_dsn=ADMIN_DSN,
                              overrides={"moves": {"lease_ttl_s": 60, "stale_after_s": 120}})
    fleet.own_root, fleet.keep = True, keep
    try:
        with psycopg.connect(servers.primary.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE cell1")
        fleet.cell_dsns[SOURCE] = servers.primary.dsn("cell1")
        fleet.config["cells"][SOURCE]["dsn"] = fleet.cell_dsns[SOURCE]
        fleet.config["cells"][SOURCE]["standbys"] = [servers.standby.dsn("cell1")]
        fleet.write_config()
        os.environ["MIGRATOR_CONFIG"] = str(fleet.config_path)
        clear_settings_cache()
        fleet.start_topology()
        yield fleet
    finally:
        fleet.close()  # its databases on the main server; the private server goes with Servers.close


# ----------------------------------------------------------------------------- the bystanders
def bystander_sample(dsn: str, n: int = 400, seed: int = 1) -> dict:
    """Issues and projects of the cell's organizations (call before the moved ones are seeded)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT setseed(%s)", (seed / 1000,))
        issues = c.execute("SELECT id, project_id FROM issues ORDER BY random() LIMIT %s", (n,)).fetchall()
        projects = c.execute("SELECT DISTINCT project_id FROM notes ORDER BY 1").fetchall()
    return {"issues": issues, "projects": [p for (p,) in projects]}


class Workload(threading.Thread):
    """One cell's bystanders: ``rate`` operations per second on a fixed schedule (a late operation does not
    lower the rate; after a stall at most one second's worth is caught up), each one's latency kept."""

    def __init__(self, cell: str, dsn: str, sample: dict, rate: float, seed: int):
        super().__init__(name=f"bystanders-{cell}", daemon=True)
        self.cell, self.dsn, self.sample, self.rate = cell, dsn, sample, rate
        self.rng = random.Random(seed)
        self.ops: list[tuple[float, str, float, bool]] = []  # (monotonic start, kind, ms, ok)
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        interval, due = 1.0 / self.rate, time.monotonic()
        conn = None
        while not self.stopping.is_set():
            due = max(due + interval, time.monotonic() - 1.0)
            pause = due - time.monotonic()
            if pause > 0 and self.stopping.wait(pause):
                break
            kind = self.rng.choices(kinds, weights)[0]
            issue, project = self.rng.choice(self.sample["issues"])
            started = time.perf_counter()
            t = time.monotonic()
            ok = True
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, application_name="bench-bystander")
                    started = time.perf_counter()  # a reconnect is not the operation's latency
                if kind == "read_issue":
                    conn.execute(canary_sql(issue)).fetchall()
                elif kind == "list_notes":
                    conn.execute("SELECT id, note, created_at FROM notes WHERE project_id = %s"
                                 " ORDER BY id DESC LIMIT 20", (self.rng.choice(self.sample["projects"]),)).fetchall()
                else:
                    conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note)"
                                 " VALUES (%s, 'Issue', %s, %s)", (project, issue, f"bystander note {t:.3f}"))
            except psycopg.Error as exc:
                ok = False
                if len(self.errors) < 20:
                    self.errors.append(f"{kind}: {str(exc).splitlines()[0]}")
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            self.ops.append((t, kind, (time.perf_counter() - started) * 1000, ok))
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def canary_sql(issue_id: int) -> str:
    """The bystanders' read-an-issue query (also the health canary, with one issue of the cell)."""
    return f"SELECT * FROM issues WHERE id = {int(issue_id)}"  # noqa: S608 - an int


class LagSampler(threading.Thread):
    """The standby's replay lag as the health indicator reads it, and the primary's view of it."""

    def __init__(self, servers: Servers, interval: float = 0.2):
        super().__init__(name="lag-sampler", daemon=True)
        self.servers, self.interval = servers, interval
        self.samples: list[tuple[float, float | None, float | None, float | None]] = []  # t, standby s, replay s, bytes
        self.stopping = threading.Event()

    def run(self) -> None:
        from migrator.health.indicators import STANDBY_LAG_SQL

        with psycopg.connect(self.servers.standby.dsn(), autocommit=True) as s, \
                psycopg.connect(self.servers.primary.dsn(), autocommit=True) as p:
            while not self.stopping.wait(self.interval):
                t = time.monotonic()
                try:
                    (standby,) = s.execute(STANDBY_LAG_SQL).fetchone()
                    row = p.execute("SELECT COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8,"
                                    " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8"
                                    " FROM pg_stat_replication").fetchone()
                except psycopg.Error:
                    continue
                self.samples.append((t, standby, *(row or (None, None))))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


# ----------------------------------------------------------------------------- phases
def phase_stats(name: str, t0: float, t1: float, loads: dict[str, Workload], lag: LagSampler) -> dict:
    out: dict = {"phase": name, "s": round(t1 - t0, 2), "cells": {}}
    for cell, w in loads.items():
        mine = [o for o in list(w.ops) if t0 <= o[0] < t1]
        ok = [o[2] for o in mine if o[3]]
        per_kind = {k: {"ops": sum(1 for o in mine if o[1] == k),
                        "p50_ms": _r(pct([o[2] for o in mine if o[1] == k and o[3]], 50)),
                        "p99_ms": _r(pct([o[2] for o in mine if o[1] == k and o[3]], 99))} for k in KINDS}
        out["cells"][cell] = {"ops": len(mine), "errors": len(mine) - len(ok),
                              "ops_per_s": round(len(mine) / (t1 - t0), 1) if t1 > t0 else None,
                              "p50_ms": _r(pct(ok, 50)), "p99_ms": _r(pct(ok, 99)), "max_ms": _r(max(ok, default=None)),
                              "by_kind": per_kind}
    samples = [x for x in list(lag.samples) if t0 <= x[0] < t1]
    standby = [x[1] for x in samples if x[1] is not None]
    replay = [x[2] for x in samples if x[2] is not None]
    behind = [x[3] for x in samples if x[3] is not None]
    out["standby_lag"] = {"samples": len(samples), "max_s": _r(max(standby, default=None)),
                          "p99_s": _r(pct(standby, 99)), "primary_replay_lag_max_s": _r(max(replay, default=None)),
                          "primary_replay_lag_p99_s": _r(pct(replay, 99)),
                          "bytes_behind_max_mb": _r(max(behind, default=0) / 1e6, 1) if behind else None}
    out["loadavg_after"] = os.getloadavg()[0]
    return out


def settle(servers: Servers, fleet: BenchFleet, seconds: float) -> None:
    """Between phases (not measured): both servers checkpointed, the standby caught up, a short rest."""
    checkpoint(servers.primary.dsn())
    checkpoint(ADMIN_DSN)
    servers.wait_caught_up()
    time.sleep(seconds)


def health_config(args, idle: dict, issues: dict[str, int]) -> dict:
    """The throttled phase's ``health:``: a canary per cell and a commit-latency limit from the idle p99s of
    the bystanders' read and write, a replication-lag limit."""
    cells = {}
    for cell in (SOURCE, TARGET):
        base = idle["cells"][cell]["by_kind"][CANARY_KIND]["p99_ms"]
        write = idle["cells"][cell]["by_kind"]["insert_note"]["p99_ms"]
        cells[cell] = {"canary_sql": canary_sql(issues[cell]), "canary_p99_slow_ms": round(base * args.slow_factor, 3),
                       "canary_p99_stop_ms": round(base * args.stop_factor, 3),
                       "commit_p99_slow_ms": round(write * args.slow_factor, 3),
                       "commit_p99_stop_ms": round(write * args.stop_factor, 3)}
    return {"enabled": True, "target_batch_s": args.target_batch_s,
            "defaults": {"replication_lag_slow_s": args.lag_slow_s, "replication_lag_stop_s": args.lag_stop_s},
            "cells": cells}


def run_move(fleet: BenchFleet, org: int, health: dict, args, tag: str) -> dict:
    """Workers started with ``health`` in their config, one move of ``org`` to the target, workers stopped."""
    from benchmarks.move import step_times
    from migrator.moves.operations import Operations
    from migrator.moves.store import MoveStore

    fleet.config["health"] = health
    fleet.write_config()
    settings = fleet.settings()
    for i in range(args.workers):
        fleet.start_worker(f"{tag}{i + 1}-{fleet.prefix}", concurrency=1)
    try:
        t0 = time.monotonic()
        move = Operations(settings).request_move(org, TARGET, actor="benchmark", reason="benchmarks/bystanders.py")
        try:
            (move,) = wait_moves(settings, [move.id], timeout=args.timeout)
        except TimeoutError as exc:
            log(f"{tag}: {exc}")
            move = MoveStore(settings.control_dsn).get(move.id)
        t1 = time.monotonic()
    finally:
        fleet.stop_workers()
    events = MoveStore(settings.control_dsn).events(move.id)
    throttles: dict[str, int] = {}
    timeline = []  # each throttle episode and its lifting, seconds after the request
    for e in events:
        if e.event in ("throttled", "throttle_lifted"):
            th = (e.detail or {}).get("throttle", {})
            timeline.append({"at_s": round((e.at - move.created_at).total_seconds(), 2), "event": e.event,
                             "step": e.step, "cell": th.get("cell"), "indicator": th.get("indicator"),
                             "signal": th.get("signal"), "value": th.get("value"), "limit": th.get("limit")})
        if e.event == "throttled":
            key = f"{th.get('indicator')} {th.get('signal')} on {th.get('cell')}"
            throttles[key] = throttles.get(key, 0) + 1
    report = move.report or {}
    times = step_times(events, move) if move.completed_at else {"steps": {}, "total_s": None}
    return {"move_id": str(move.id), "organization_id": org, "state": move.state, "error": move.error,
            "completed": move.state == "completed", "wall_s": round(t1 - t0, 2), "total_s": times["total_s"],
            "steps_s": times["steps"], "rows": (report.get("copy_rows") or {}).get("rows"),
            "verified": bool((report.get("verification") or {}).get("ok")),
            "write_window_s": report.get("write_window_s"), "throttle_events": throttles,
            "throttled_events_total": sum(throttles.values()),
            "throttle_timeline": timeline, "_t": (t0, t1)}


# ----------------------------------------------------------------------------- report
def summarize(result: dict) -> dict:
    phases = {p["phase"]: p for p in result["phases"]}
    idle = phases["idle"]
    ratios: dict = {}
    for name in ("raw COPY", "unthrottled move", "throttled move", "idle after"):
        if name in phases:
            ratios[name] = {cell: _r(phases[name]["cells"][cell]["p99_ms"] / idle["cells"][cell]["p99_ms"], 2)
                            if phases[name]["cells"][cell]["p99_ms"] and idle["cells"][cell]["p99_ms"] else None
                            for cell in (SOURCE, TARGET)}
    un, th = result["moves"].get("unthrottled"), result["moves"].get("throttled")
    extra = None
    if un and th and un["completed"] and th["completed"]:
        extra = {"s": round(th["wall_s"] - un["wall_s"], 2), "ratio": round(th["wall_s"] / un["wall_s"], 2)}
    thr = ratios.get("throttled move", {})
    lag_max = phases.get("throttled move", {}).get("standby_lag", {}).get("max_s")
    lag_limit = result["health"]["defaults"]["replication_lag_stop_s"] if result.get("health") else None
    targets = {
        f"bystander p99 throttled / idle <= {TARGETS['p99_ratio']} (both cells)":
            None if not thr or None in thr.values() else all(v <= TARGETS["p99_ratio"] for v in thr.values()),
        f"moonshot <= {TARGETS['p99_ratio_moonshot']}":
            None if not thr or None in thr.values() else all(v <= TARGETS["p99_ratio_moonshot"] for v in thr.values()),
        f"standby replay lag under its stop limit ({lag_limit} s) during the throttled move":
            None if lag_max is None or lag_limit is None else lag_max < lag_limit,
        "throttled move completes": bool(th and th["completed"]),
    }
    return {"p99_vs_idle": ratios, "throttled_extra_time": extra, "targets": targets}


def table(result: dict) -> str:
    s = result["summary"]
    lines = [f"command: {result['command']}",
             f"machine: {result['machine'].get('cpus')} cpus, load average at start "
             f"{result['machine']['loadavg_at_start']:.2f}, at end {result['loadavg_at_end']:.2f} (a shared machine: "
             "other engineers' test runs land in these figures)", "",
             "| phase | s | source p50 / p99 ms | target p50 / p99 ms | p99 / idle (src, tgt) "
             "| standby lag max / p99 s | bytes behind max MB | load after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result["phases"]:
        src, tgt = p["cells"][SOURCE], p["cells"][TARGET]
        ratio = s["p99_vs_idle"].get(p["phase"])
        lag = p["standby_lag"]
        lines.append(f"| {p['phase']} | {p['s']} | {src['p50_ms']} / {src['p99_ms']} | {tgt['p50_ms']} / "
                     f"{tgt['p99_ms']} | {'-' if not ratio else f'{ratio[SOURCE]}x, {ratio[TARGET]}x'} | "
                     f"{lag['max_s']} / {lag['p99_s']} | {lag['bytes_behind_max_mb']} | {p['loadavg_after']:.2f} |")
    lines.append("")
    raw = result.get("raw_copy") or {}
    lines.append(f"raw COPY pipe of the same organization ({raw.get('rows'):,} rows): {raw.get('s')} s "
                 f"({raw.get('rows_per_s'):,} rows/s)" if raw else "raw COPY: not measured")
    for name, m in result["moves"].items():
        lines.append(f"{name} move: {m['state']}, {m['rows']} rows, {m['wall_s']} s "
                     f"(copy_rows {m['steps_s'].get('copy_rows')} s, verify {m['steps_s'].get('verify')} s, "
                     f"x{round(m['wall_s'] / raw['s'], 2) if raw.get('s') else '-'} the raw COPY), throttle events "
                     f"{m['throttle_events'] or 'none'}")
    if s["throttled_extra_time"]:
        lines.append(f"throttled move's extra time: {s['throttled_extra_time']['s']} s "
                     f"({s['throttled_extra_time']['ratio']}x the unthrottled move)")
    if result.get("health"):
        h = result["health"]
        lines.append("throttled phase health: " + "; ".join(
            f"{c} canary slow {v['canary_p99_slow_ms']} ms / stop {v['canary_p99_stop_ms']} ms, commit slow "
            f"{v['commit_p99_slow_ms']} ms / stop {v['commit_p99_stop_ms']} ms"
            for c, v in h["cells"].items()) + f"; replication lag slow {h['defaults']['replication_lag_slow_s']}"
            f" s / stop {h['defaults']['replication_lag_stop_s']} s; target_batch_s {h['target_batch_s']}")
    lines.append("")
    for label, ok in s["targets"].items():
        lines.append(f"target {label}: {'-' if ok is None else 'met' if ok else 'NOT met'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def phases(fleet: BenchFleet, servers: Servers, args, result: dict, samples: dict, orgs: list[int]) -> None:
    """The workload and the lag sampler throughout; idle, raw COPY, the two moves, idle after."""
    from benchmarks.move import raw_copy, truncate_org_tables

    loads = {cell: Workload(cell, fleet.cell_dsns[cell], samples[cell], args.rate, seed=i)
             for i, cell in enumerate((SOURCE, TARGET))}
    lag = LagSampler(servers)
    threads = [*loads.values(), lag]
    for t in threads:
        t.start()
    try:
        time.sleep(min(5.0, args.idle_s))  # connections made, caches warm: not measured

        t0 = time.monotonic()
        time.sleep(args.idle_s)
        idle = phase_stats("idle", t0, time.monotonic(), loads, lag)
        result["phases"].append(idle)
        log(f"idle: {json.dumps(idle['cells'])}")

        settle(servers, fleet, args.settle_s)
        t0 = time.monotonic()
        raw = raw_copy(fleet.cell_dsns[SOURCE], fleet.cell_dsns[SCRATCH], orgs[0])
        result["phases"].append(phase_stats("raw COPY", t0, time.monotonic(), loads, lag))
        result["raw_copy"] = {k: v for k, v in raw.items() if k != "tables"}
        log(f"raw COPY: {result['raw_copy']}")
        truncate_org_tables(fleet.cell_dsns[SCRATCH])

        settle(servers, fleet, args.settle_s)
        move = run_move(fleet, orgs[0], {"enabled": False}, args, "unthrottled")
        result["phases"].append(phase_stats("unthrottled move", *move.pop("_t"), loads, lag))
        result["moves"]["unthrottled"] = move
        log(f"unthrottled move: {move}")

        settle(servers, fleet, args.settle_s)
        issues = {cell: samples[cell]["issues"][0][0] for cell in (SOURCE, TARGET)}
        result["health"] = health_config(args, idle, issues)
        move = run_move(fleet, orgs[1], result["health"], args, "throttled")
        result["phases"].append(phase_stats("throttled move", *move.pop("_t"), loads, lag))
        result["moves"]["throttled"] = move
        log(f"throttled move: {move}")

        settle(servers, fleet, args.settle_s)
        t0 = time.monotonic()
        time.sleep(args.idle_s)
        result["phases"].append(phase_stats("idle after", t0, time.monotonic(), loads, lag))
    finally:
        for t in threads:
            t.stop()
    result["bystander_errors"] = {cell: w.errors for cell, w in loads.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of each moved organization (2000000)")
    p.add_argument("--idle-s", type=float, default=30.0, help="seconds of the idle phases (30)")
    p.add_argument("--rate", type=float, default=50.0, help="bystander operations per second, per cell (50)")
    p.add_argument("--source-bystanders", type=int, default=1_000_000, help="bystander rows in the source (1000000)")
    p.add_argument("--target-bystanders", type=int, default=1_000_000, help="bystander rows in the target (1000000)")
    p.add_argument("--template-rows", type=int, default=bystanders.TEMPLATE_ROWS,
                   help=f"rows of each bystander organization ({bystanders.TEMPLATE_ROWS})")
    p.add_argument("--workers", type=int, default=2, help="Celery worker processes, concurrency 1 each (2)")
    p.add_argument("--slow-factor", type=float, default=1.2, help="canary slow limit: x idle p99 (1.2)")
    p.add_argument("--stop-factor", type=float, default=1.5, help="canary stop limit: x idle p99 (1.5)")
    p.add_argument("--lag-slow-s", type=float, default=1.0, help="replication lag slow-down limit (1 s)")
    p.add_argument("--lag-stop-s", type=float, default=3.0, help="replication lag stop limit (3 s)")
    p.add_argument("--target-batch-s", type=float, default=0.5, help="health.target_batch_s when throttled (0.5)")
    p.add_argument("--settle-s", type=float, default=5.0, help="rest between phases, not measured (5)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one move (1800)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: does it run end to end (figures meaningless)")
    p.add_argument("--json", dest="json_path", type=Path, default=None,
                   help="results file (default benchmarks/results/bystanders-<date>.json); Markdown next to it")
    p.add_argument("--keep", action="store_true", help="keep the fleet's work directory (worker logs)")
    args = p.parse_args(argv)
    if args.smoke:
        given = {a.dest for a in p._actions if any(o in (argv or sys.argv[1:]) for o in a.option_strings)}
        for key, value in SMOKE.items():
            if key not in given:
                setattr(args, key, value)
    stop_on_signals()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    out = args.json_path or ROOT / "benchmarks" / "results" / f"bystanders-{date}{'-smoke' if args.smoke else ''}.json"
    result: dict = {"benchmark": "bystanders",
                    "command": " ".join([".venv/bin/python benchmarks/bystanders.py", *(argv or sys.argv[1:])]),
                    "date": date, "machine": machine(),
                    "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "targets": TARGETS, "phases": [], "moves": {}}
    servers = None
    try:
        servers = Servers()
        servers.start()
        log(f"private source server on port {servers.primary.port}, standby on {servers.standby.port}")
        with fleet_with_private_source(servers, keep=args.keep) as fleet:
            log(f"fleet {fleet.prefix} in {fleet.workdir}")
            fleet.init()
            settings = fleet.settings()
            from benchmarks.move import quiet_autovacuum
            from migrator.sample.seed import seed_organizations

            quiet_autovacuum(fleet.cell_dsns[SCRATCH])
            result["cells"] = {}
            for cell, rows in ((SOURCE, args.source_bystanders), (TARGET, args.target_bystanders)):
                info = bystanders.fill_cell(settings, cell, fleet.cell_dsns[cell], rows, log=log,
                                            template_rows=args.template_rows)
                result["cells"][cell] = info
                log(f"{cell} bystanders: {info}")
            samples = {cell: bystander_sample(fleet.cell_dsns[cell], seed=i) for i, cell in enumerate((SOURCE, TARGET))}
            orgs = []
            for seed in (1, 2):
                t0 = time.monotonic()
                (o,) = seed_organizations(settings, SOURCE, orgs=1, rows=args.rows, blobs=0, skew=False, seed=seed)
                orgs.append(o.organization_id)
                log(f"seeded organization {o.organization_id}: {o.rows:,} rows in {time.monotonic() - t0:.0f}s")
            bystanders.vacuum_analyze(fleet.cell_dsns[SOURCE])
            settle(servers, fleet, args.settle_s)

            phases(fleet, servers, args, result, samples, orgs)
    finally:
        if servers is not None:
            servers.close()
    result["loadavg_at_end"] = os.getloadavg()[0]
    result["summary"] = summarize(result)
    text = table(result)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(f"# Bystanders, {date}\n\n{text}\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
