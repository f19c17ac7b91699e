"""The write window as a writer sees it, for both strategies, under a steady write load; and what a worker
killed inside the window costs.

    .venv/bin/python benchmarks/write_window.py [--rows 500000] [--online-moves 5] [--frozen-moves 1]
                                               [--rate 150] [--workers 2] [--kill-trials 10] [--json out.json]

One organization of ``--rows`` rows is seeded into cell-1 of a throwaway fleet and cloned in bulk
(benchmarks/_bystanders.py) so every move has a fresh one. For each move it starts a writer process
(``tests/faults/writer.py``: inserts, updates and deletes of the organization's notes, routed
through the Topology Service before every write, at up to ``--rate`` writes/s), moves the
organization to cell-2 with the given strategy on real Celery workers, and reports:

- the write window the writer saw: from its first write refused by the freeze (SQLSTATE MG001) to
  its first write accepted by the target (when no write was refused: from its last write accepted
  by the source to its first accepted by the target);
- writes acknowledged, rejected and lost (acknowledged but absent from the target afterwards);
- the move's own write window (freeze until writable on the target), total time, catch-up rounds and keys
  applied, the time of each step.

``--kill-trials N``: N more online moves, each with the worker running a step inside the write window
(freeze … flip) SIGKILLed at a random moment and a new worker started; each trial's extra window is
its writer window minus the median of the online moves without a kill. The reconciler runs as its
own ``celery beat`` process, as deployed.

Targets (issue 16): online median window <= 1.0 s at 500k and 2M rows, the 2M median <= 1.2x the 500k
median; killed inside the window: median extra window <= 10 s; 0 writes lost everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path (benchmarks/concurrent.py would hide the
# standard library's ``concurrent``): put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from benchmarks._fleet import BenchFleet, bench_fleet, machine, probe_lines, wait_moves  # noqa: E402


def writer_window(log_path: Path, source: str, target: str) -> dict:
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    events = [e for e in events if "t" in e]
    rejected = [e["t"] for e in events if e["kind"] == "rejected"]
    target_acks = [e["t"] for e in events if e["kind"] == "ack" and e["cell"] == target]
    source_acks = [e["t"] for e in events if e["kind"] == "ack" and e["cell"] == source]
    if not target_acks:
        return {"window_s": None, "note": "the writer never wrote to the target"}
    first_target = min(target_acks)
    start = min(rejected) if rejected else max((t for t in source_acks if t < first_target), default=first_target)
    span = (max(e["t"] for e in events) - min(e["t"] for e in events)) or 1.0
    acks = sum(1 for e in events if e["kind"] == "ack")
    return {"window_s": round(first_target - start, 3), "first_rejected": bool(rejected),
            "achieved_writes_per_s": round(len(events) / span, 1), "acked": acks, "rejected": len(rejected)}


def step_timeline(settings, move_id) -> dict:
    """Seconds each step took (its first start to its first finish, from the move's events), and for the
    steps inside the write window (freeze to unfreeze: with the frozen strategy that includes the copy)
    the time between them (one step's finish to the next one's start: Celery dispatch and pickup)."""
    from migrator.moves.store import MoveStore

    first: dict = {}
    order: list[str] = []
    for e in MoveStore(settings.control_dsn).events(move_id):
        if e.step and e.event in ("started", "finished"):
            first.setdefault((e.step, e.event), e.at)
            if e.step not in order:
                order.append(e.step)
    steps = {step: round((first[(step, "finished")] - first[(step, "started")]).total_seconds(), 3)
             for step in order if (step, "started") in first and (step, "finished") in first}
    window = order[order.index("freeze"):order.index("unfreeze") + 1] \
        if "freeze" in order and "unfreeze" in order else []
    between, previous = 0.0, None
    for step in window:
        if step not in steps:
            continue
        if previous is not None:
            between += (first[(step, "started")] - previous).total_seconds()
        previous = first[(step, "finished")]
    return {"steps_s": steps, "window_steps_s": {s: steps[s] for s in window if s in steps},
            "between_window_steps_s": round(between, 3)}


def verify_tasks(probe_file: Path | None, move_id) -> dict | None:
    """From the workers' probe (``--probe``): the verify step's tasks, their checksum work and the rest."""
    if probe_file is None:
        return None
    mine = [x for x in probe_lines(probe_file, str(move_id)) if x["task"].startswith("migrator.verify")]
    if not mine:
        return None
    busy = sum(x["end"] - x["start"] for x in mine)
    checksum = sum(x["checksum_s"] for x in mine)
    return {"tasks": len(mine), "span_s": round(max(x["end"] for x in mine) - min(x["start"] for x in mine), 3),
            "task_seconds": round(busy, 3), "checksum_seconds": round(checksum, 3),
            "other_seconds_per_task": round((busy - checksum) / len(mine), 4),
            "slowest": sorted(((round(x["end"] - x["start"], 3), x.get("unit") or x["task"]) for x in mine),
                              reverse=True)[:3]}


def kill_in_window(fleet: BenchFleet, move_id, seed: int) -> dict:
    """SIGKILL the worker running a step of the move inside its write window, at a random moment of it,
    and start a new worker in its place. What was killed, when (monotonic), or why nothing was."""
    import random
    import signal

    from migrator.moves import window
    from migrator.moves.store import MoveStore

    store = MoveStore(fleet.settings().control_dsn)
    rng = random.Random(seed)
    while True:
        move = store.get(move_id)
        if move.state not in ("queued", "running") or move.flipped_at is not None:
            return {"missed": f"the move was {move.state} at {move.step} before a kill"}
        if window.inside(move.strategy, move.step) and move.frozen_at is not None:
            break
        time.sleep(0.005)
    # A random moment of the window (they last 0.5-1 s), then the first execution holding a step then.
    time.sleep(rng.uniform(0.0, 0.4))
    while True:
        move = store.get(move_id)
        if move.flipped_at is not None or not window.inside(move.strategy, move.step):
            return {"missed": f"the window closed before an execution held a step (at {move.step})"}
        owners = [move.lease_owner] if move.lease_owner else []
        owners += [u.lease_owner for u in store.units(move_id, move.step) if u.lease_owner and u.state != "done"]
        if owners:
            break
        time.sleep(0.002)
    task_id = owners[0].split(":")[0]
    victim = next((w for w in fleet.workers if w.alive() and task_id in w.log()), None)
    if victim is None:
        return {"missed": f"no worker's log shows task {task_id}"}
    victim.kill(signal.SIGKILL)
    at = time.monotonic()
    fleet.workers.remove(victim)
    fleet.start_workers(1, concurrency=1)
    return {"step": move.step, "worker": victim.name, "killed_at": at}


def organizations(fleet: BenchFleet, rows: int, count: int, seed: int,
                  interleaved: bool = False) -> list[tuple[int, int]]:
    """``count`` fresh organizations of ``rows`` rows in cell-1: one seeded, the others its clones made in
    bulk, each clone's rows contiguous, or ``interleaved`` (every clone's rows on every page of a table,
    the worst layout for reading one organization). (organization id, rows) each."""
    from benchmarks._bystanders import STRIDE, add_clones, vacuum_analyze
    from migrator.cells.discover import discover_orgs
    from migrator.sample.seed import seed_organizations

    [template] = seed_organizations(fleet.settings(), "cell-1", orgs=1, rows=rows, blobs=20, skew=False, seed=seed)
    dsn = fleet.cell_dsns["cell-1"]
    if count > 1:  # the cell holds only the template: clone k's ids are the template's + k * STRIDE
        add_clones(dsn, template.rows, 1, count - 1, per_statement=count if interleaved else 1)
        discover_orgs(fleet.settings(), "cell-1", register=True)  # the clones' routes in the Topology Service
    vacuum_analyze(dsn)
    return [(template.organization_id + k * STRIDE, template.rows) for k in range(count)]


def one_move(fleet: BenchFleet, strategy: str, org: tuple[int, int], rate: float, seed: int, workdir: Path,
             probe_file: Path | None = None, kill: bool = False) -> dict:
    from migrator.moves.operations import Operations
    from migrator.topology.client import topology_client
    from tests.faults.writer import lost_writes

    settings = fleet.settings()
    org_id, rows = org
    log_path = workdir / f"writer-{strategy}-{org_id}.jsonl"
    writer = subprocess.Popen([sys.executable, "-m", "tests.faults.writer", "--org", str(org_id), "--seconds", "3600",
                               "--out", str(log_path), "--rate", str(rate), "--seed", str(seed)],
                              env=fleet.env(), cwd=Path(__file__).resolve().parents[1])
    try:
        time.sleep(3)  # steady writes before the move
        started = time.monotonic()
        move = Operations(settings).request_move(org_id, "cell-2", actor="benchmark", reason="write window",
                                                 strategy=strategy)
        killed = kill_in_window(fleet, move.id, seed) if kill else None
        [final] = wait_moves(settings, [move.id], timeout=3600)
        total = time.monotonic() - started
        time.sleep(3)  # steady writes after the move, on the target
    finally:
        writer.terminate()
        writer.wait(30)
    if final.state != "completed":
        raise SystemExit(f"move {final.id} ended {final.state}: {final.error}")
    cell = topology_client(settings).classify(org_id).cell
    lost, counts = lost_writes(settings, cell, str(log_path))
    report = final.report or {}
    seen = writer_window(log_path, "cell-1", "cell-2")
    return {
        "strategy": strategy, "organization_id": org_id, "rows": rows, "killed": killed,
        "writer_window_s": seen["window_s"], "writer": seen,
        "move_write_window_s": report.get("write_window_s"), "move_total_s": round(total, 2),
        "writes_acked": counts["acked"], "writes_rejected": counts["rejected"], "writes_lost": len(lost),
        "write_errors": counts["errors"], "lost_examples": lost[:5],
        "catch_up_rounds": (report.get("catch_up") or {}).get("rounds"),
        "catch_up_keys": (report.get("catch_up") or {}).get("keys_applied"),
        "final_delta_keys": report.get("final_delta_keys"),
        "verified": bool((report.get("verification") or {}).get("ok")),
        "timeline": step_timeline(settings, final.id),
        "verify_tasks": verify_tasks(probe_file, final.id),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--online-moves", type=int, default=5)
    p.add_argument("--frozen-moves", type=int, default=1)
    p.add_argument("--rate", type=float, default=150.0, help="writer's target writes/s")
    p.add_argument("--workers", type=int, default=2, help="Celery worker processes (concurrency 1 each)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--probe", action="store_true",
                   help="run the workers with benchmarks/_probe.py and report the verify step's tasks")
    p.add_argument("--kill-trials", type=int, default=0,
                   help="online moves with the worker running a window step SIGKILLed (after the others)")
    p.add_argument("--interleaved", action="store_true",
                   help="clone the organizations row by row across each other (every page holds all of them)")
    a = p.parse_args()
    runs = []
    with bench_fleet(cells=3) as fleet:
        fleet.init()
        probe_file = fleet.workdir / "probe.jsonl" if a.probe else None
        if probe_file:
            os.environ["BENCH_PROBE_FILE"] = str(probe_file)
        fleet.start_workers(a.workers, concurrency=1, app="benchmarks._probe" if a.probe else "tasks")
        fleet.start_beat()  # the reconciler, in a process of its own (a killed worker takes no schedule along)
        plan = ["frozen"] * a.frozen_moves + ["online"] * a.online_moves + ["kill"] * a.kill_trials
        orgs = organizations(fleet, a.rows, len(plan), seed=100, interleaved=a.interleaved)
        print(f"seeded {len(orgs)} organization(s) of {orgs[0][1]:,} rows", file=sys.stderr)
        for i, (what, org) in enumerate(zip(plan, orgs, strict=True)):
            strategy = "online" if what == "kill" else what
            run = one_move(fleet, strategy, org, a.rate, seed=100 + i, workdir=fleet.workdir, probe_file=probe_file,
                           kill=what == "kill")
            runs.append(run)
            timeline = run["timeline"]
            print(f"{what:7s} org {run['organization_id']:>5}: writer window {run['writer_window_s']}s, "
                  f"move window {run['move_write_window_s']}s, total {run['move_total_s']}s, acked "
                  f"{run['writes_acked']}, rejected {run['writes_rejected']}, lost {run['writes_lost']}; "
                  f"in the window: {timeline['window_steps_s']}, between them {timeline['between_window_steps_s']}s"
                  + (f"; killed: {run['killed']}" if run["killed"] else "")
                  + (f"; verify tasks: {run['verify_tasks']}" if a.probe else ""), file=sys.stderr)
    summary = {}
    for strategy in ("frozen", "online"):
        mine = [r for r in runs if r["strategy"] == strategy and not r["killed"] and r["writer_window_s"] is not None]
        if mine:
            summary[strategy] = {
                "moves": len(mine),
                "median_writer_window_s": round(statistics.median(r["writer_window_s"] for r in mine), 3),
                "median_move_window_s": round(statistics.median(r["move_write_window_s"] for r in mine), 3),
                "median_total_s": round(statistics.median(r["move_total_s"] for r in mine), 2),
                "writes_lost": sum(r["writes_lost"] for r in mine),
                "writes_rejected": sum(r["writes_rejected"] for r in mine),
            }
    kills = [r for r in runs if r["killed"] and "missed" not in r["killed"] and r["writer_window_s"] is not None]
    if kills:
        base = summary.get("online", {}).get("median_writer_window_s") or 0.0
        extra = [round(r["writer_window_s"] - base, 3) for r in kills]
        summary["killed_in_window"] = {
            "trials": len(kills), "missed": sum(1 for r in runs if r["killed"] and "missed" in r["killed"]),
            "steps_killed": sorted(r["killed"]["step"] for r in kills), "baseline_window_s": base,
            "extra_window_s": extra, "median_extra_window_s": round(statistics.median(extra), 3),
            "max_extra_window_s": max(extra), "writes_lost": sum(r["writes_lost"] for r in kills)}
    online = summary.get("online")
    result = {"machine": machine(), "rows": a.rows, "rate": a.rate, "workers": a.workers,
              "layout": "interleaved" if a.interleaved else "contiguous", "runs": runs,
              "summary": summary,
              "target_met": bool(online) and online["median_writer_window_s"] <= 1.0 and online["writes_lost"] == 0
              and (not kills or (summary["killed_in_window"]["median_extra_window_s"] <= 10
                                 and summary["killed_in_window"]["writes_lost"] == 0))}
    print(f"\nwrite window, {a.rows:,} rows, writer at up to {a.rate:g} writes/s, {a.workers} worker(s)")
    print(f"{'strategy':9s} {'moves':>5s} {'writer window (median)':>23s} {'move window':>12s} {'total':>8s} "
          f"{'rejected':>9s} {'lost':>5s}")
    for strategy in ("frozen", "online"):
        if strategy in summary:
            s = summary[strategy]
            print(f"{strategy:9s} {s['moves']:5d} {s['median_writer_window_s']:22.3f}s "
                  f"{s['median_move_window_s']:11.3f}s {s['median_total_s']:7.2f}s {s['writes_rejected']:9d} "
                  f"{s['writes_lost']:5d}")
    if kills:
        k = summary["killed_in_window"]
        print(f"killed inside the window: {k['trials']} trial(s) ({k['missed']} missed), extra window median "
              f"{k['median_extra_window_s']:.2f}s, max {k['max_extra_window_s']:.2f}s, lost {k['writes_lost']}; "
              f"steps killed: {', '.join(k['steps_killed'])}")
    print(f"targets (online median <= 1 s, killed median extra <= 10 s, 0 lost): "
          f"{'met' if result['target_met'] else 'not met'}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
