"""The write window as a writer sees it, for both strategies, under a steady write load.

    .venv/bin/python benchmarks/write_window.py [--rows 500000] [--online-moves 5] [--frozen-moves 1]
                                               [--rate 150] [--workers 2] [--json out.json]

For each move it seeds a fresh organization of ``--rows`` rows into cell-1 of a throwaway fleet,
starts a writer process (``tests/faults/writer.py``: inserts, updates and deletes of the
organization's notes, routed through the Topology Service before every write, at up to ``--rate``
writes/s), moves the organization to cell-2 with the given strategy on real Celery workers, and
reports:

- the write window the writer saw: from its first write refused by the freeze (SQLSTATE MG001) to
  its first write accepted by the target (when no write was refused: from its last write accepted
  by the source to its first accepted by the target);
- writes acknowledged, rejected and lost (acknowledged but absent from the target afterwards);
- the move's own write window (freeze to unfreeze), total time, catch-up rounds and keys applied.
The target of the issue: online write window <= 2 s (median over the online moves), 0 lost writes.
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


def one_move(fleet: BenchFleet, strategy: str, rows: int, rate: float, seed: int, workdir: Path,
             probe_file: Path | None = None) -> dict:
    from migrator.moves.operations import Operations
    from migrator.sample.seed import seed_organizations
    from migrator.topology.client import topology_client
    from tests.faults.writer import lost_writes

    settings = fleet.settings()
    [org] = seed_organizations(settings, "cell-1", orgs=1, rows=rows, blobs=20, skew=False, seed=seed)
    org_id = org.organization_id
    log_path = workdir / f"writer-{strategy}-{org_id}.jsonl"
    writer = subprocess.Popen([sys.executable, "-m", "tests.faults.writer", "--org", str(org_id), "--seconds", "3600",
                               "--out", str(log_path), "--rate", str(rate), "--seed", str(seed)],
                              env=fleet.env(), cwd=Path(__file__).resolve().parents[1])
    try:
        time.sleep(3)  # steady writes before the move
        started = time.monotonic()
        move = Operations(settings).request_move(org_id, "cell-2", actor="benchmark", reason="write window",
                                                 strategy=strategy)
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
        "strategy": strategy, "organization_id": org_id, "rows": org.rows,
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
    a = p.parse_args()
    runs = []
    with bench_fleet(cells=3) as fleet:
        fleet.init()
        probe_file = fleet.workdir / "probe.jsonl" if a.probe else None
        if probe_file:
            os.environ["BENCH_PROBE_FILE"] = str(probe_file)
        fleet.start_workers(a.workers, concurrency=1, app="benchmarks._probe" if a.probe else "tasks")
        plan = ["frozen"] * a.frozen_moves + ["online"] * a.online_moves
        for i, strategy in enumerate(plan):
            run = one_move(fleet, strategy, a.rows, a.rate, seed=100 + i, workdir=fleet.workdir, probe_file=probe_file)
            runs.append(run)
            timeline = run["timeline"]
            print(f"{strategy:7s} org {run['organization_id']:>5}: writer window {run['writer_window_s']}s, "
                  f"move window {run['move_write_window_s']}s, total {run['move_total_s']}s, acked "
                  f"{run['writes_acked']}, rejected {run['writes_rejected']}, lost {run['writes_lost']}; "
                  f"in the window: {timeline['window_steps_s']}, between them {timeline['between_window_steps_s']}s; "
                  f"all steps: {timeline['steps_s']}" + (f"; verify tasks: {run['verify_tasks']}" if a.probe else ""),
                  file=sys.stderr)
    summary = {}
    for strategy in ("frozen", "online"):
        mine = [r for r in runs if r["strategy"] == strategy and r["writer_window_s"] is not None]
        if mine:
            summary[strategy] = {
                "moves": len(mine),
                "median_writer_window_s": round(statistics.median(r["writer_window_s"] for r in mine), 3),
                "median_move_window_s": round(statistics.median(r["move_write_window_s"] for r in mine), 3),
                "median_total_s": round(statistics.median(r["move_total_s"] for r in mine), 2),
                "writes_lost": sum(r["writes_lost"] for r in mine),
                "writes_rejected": sum(r["writes_rejected"] for r in mine),
            }
    result = {"machine": machine(), "rows": a.rows, "rate": a.rate, "workers": a.workers, "runs": runs,
              "summary": summary,
              "target_met": bool(summary.get("online")) and summary["online"]["median_writer_window_s"] <= 2.0
              and summary["online"]["writes_lost"] == 0}
    print(f"\nwrite window, {a.rows:,} rows, writer at up to {a.rate:g} writes/s, {a.workers} worker(s)")
    print(f"{'strategy':9s} {'moves':>5s} {'writer window (median)':>23s} {'move window':>12s} {'total':>8s} "
          f"{'rejected':>9s} {'lost':>5s}")
    for strategy, s in summary.items():
        print(f"{strategy:9s} {s['moves']:5d} {s['median_writer_window_s']:22.3f}s {s['median_move_window_s']:11.3f}s "
              f"{s['median_total_s']:7.2f}s {s['writes_rejected']:9d} {s['writes_lost']:5d}")
    print(f"online median <= 2 s with 0 lost writes: {'yes' if result['target_met'] else 'no'}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
