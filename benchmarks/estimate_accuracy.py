"""How good is the dry run's estimate? Estimate ÷ actual for demo sizes, before and after calibration.

    .venv/bin/python benchmarks/estimate_accuracy.py [--sizes 10000,50000,150000,600000]
                                                     [--calibrate 20000,200000] [--strategies online]
                                                     [--workers 1] [--concurrency 2] [--max-load 2.0]
                                                     [--json out.json]

One fleet (databases ``cmb_<hex>_*``, dropped at the end), the demo's worker shape (one Celery worker,
``--concurrency 2``). For each strategy:

1. seed one organization per size of ``--calibrate`` and of ``--sizes`` into cell-1 with the demo's
   seeding (``migrator.sample.seed``, not skewed), then ``VACUUM ANALYZE`` cell-1;
2. **calibration moves**: move each ``--calibrate`` organization to cell-2 (their measurements land
   in ``move_throughput``: migrator/moves/calibration.py);
3. for each ``--sizes`` organization, smallest first: the **dry run** (``Operations.dry_run``, the
   same plan ``migrator move --dry-run`` prints, calibrated from the moves so far: the calibration
   moves and the smaller measured ones, as a fleet keeps learning), the same plan's estimate from the
   config's defaults (``calibration=None``) for comparison, then the **move** itself to cell-2.
   Actual duration: request to completed (``moves.created_at`` → ``completed_at``); actual write
   window: ``migrator.moves.window.seconds`` (what ``status`` shows). ``--max-load``: before each move,
   wait (at most ``--max-wait`` s) for the 1-minute load average to fall that low: the machine is shared.

Prints estimate ÷ actual for the duration and the write window (target once calibrated: 0.67-1.5x)
and writes everything as JSON. No figure is asserted here (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path and benchmarks/concurrent.py would hide
# the standard library's ``concurrent`` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import psycopg  # noqa: E402

from benchmarks._fleet import bench_fleet, machine, stop_on_signals, wait_moves  # noqa: E402
from benchmarks.scale import quiet_machine  # noqa: E402

TARGET = (0.67, 1.5)


def _ratio(estimate: float | None, actual: float | None) -> float | None:
    if estimate is None or not actual:
        return None
    return round(estimate / actual, 3)


def _seconds(move) -> float | None:
    if move.completed_at is None:
        return None
    return round((move.completed_at - move.created_at).total_seconds(), 3)


def move_once(settings, org: int, target: str, strategy: str, timeout: float, reason: str):
    from migrator.moves.operations import Operations

    move = Operations(settings).request_move(org, target, actor="benchmark", reason=reason, strategy=strategy)
    (move,) = wait_moves(settings, [move.id], timeout=timeout)
    if move.state != "completed":
        raise RuntimeError(f"move {move.id} ended {move.state}: {move.error}")
    return move


def measure(settings, org: int, rows: int, strategy: str, target: str, args) -> dict:
    """Dry run (calibrated, and the config's estimate of the same plan), then the move."""
    from migrator.moves import window
    from migrator.moves.estimate import estimate
    from migrator.moves.operations import Operations

    waited = quiet_machine(args.max_load, args.max_wait)
    load = os.getloadavg()[0]
    plan = Operations(settings).dry_run(org, target, strategy)  # the move follows at once
    config = estimate(settings, strategy, plan["tables"], plan["blob_bytes"], None)
    move = move_once(settings, org, target, strategy, args.timeout, "benchmarks/estimate_accuracy.py")
    actual, win = _seconds(move), window.seconds(move)
    win = None if win is None else round(win, 3)
    return {
        "rows": rows, "strategy": strategy, "organization_id": org, "move_id": str(move.id),
        "load_avg": round(load, 2), "waited_s": round(waited, 1), "basis": plan["calibration"]["basis"],
        "calibration": plan["calibration"],
        "actual_s": actual, "actual_window_s": win,
        "estimate_s": plan["estimate_s"], "window_estimate_s": plan["write_window_estimate_s"],
        "config_estimate_s": config["estimate_s"], "config_window_estimate_s": config["write_window_estimate_s"],
        "ratio": _ratio(plan["estimate_s"], actual), "window_ratio": _ratio(plan["write_window_estimate_s"], win),
        "config_ratio": _ratio(config["estimate_s"], actual),
        "config_window_ratio": _ratio(config["write_window_estimate_s"], win),
    }


def run_strategy(fleet, strategy: str, args) -> dict:
    from migrator.moves import window
    from migrator.sample.seed import seed_organizations

    settings = fleet.settings()
    sizes = [("calibration", n) for n in args.calibrate] + [("measured", n) for n in args.sizes]
    orgs = []
    t0 = time.perf_counter()
    for i, (role, n) in enumerate(sizes):
        (org,) = seed_organizations(settings, "cell-1", orgs=1, rows=n, blobs=args.blobs, skew=False,
                                    seed=1000 * (1 + len(strategy)) + i)
        orgs.append((role, n, org.organization_id))
    with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"[{strategy}] seeded {len(orgs)} organizations ({sum(n for _, n, _ in orgs):,} rows) in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    calibration = []
    for role, n, org in orgs:
        if role != "calibration":
            continue
        quiet_machine(args.max_load, args.max_wait)
        load = os.getloadavg()[0]
        move = move_once(settings, org, "cell-2", strategy, args.timeout, "calibration move")
        win = window.seconds(move)
        calibration.append({"rows": n, "move_id": str(move.id), "actual_s": _seconds(move),
                            "actual_window_s": None if win is None else round(win, 3),
                            "load_avg": round(load, 2)})
        print(f"[{strategy}] calibration move of {n:,} rows: {_seconds(move)}s", file=sys.stderr, flush=True)
    results = []
    for role, n, org in orgs:
        if role != "measured":
            continue
        r = measure(settings, org, n, strategy, "cell-2", args)
        results.append(r)
        print(f"[{strategy}] {n:,} rows: estimate {r['estimate_s']}s ({r['basis']}), actual {r['actual_s']}s, "
              f"ratio {r['ratio']}; window {r['window_estimate_s']}s / {r['actual_window_s']}s",
              file=sys.stderr, flush=True)
    return {"strategy": strategy, "calibration_moves": calibration, "results": results}


def table(result: dict) -> str:
    def f(v, nd=2):
        return "–" if v is None else f"{v:.{nd}f}"

    head = ("| rows | strategy | estimate (s) | actual (s) | **estimate ÷ actual** | window est. (s) | window (s) "
            "| **window ÷ actual** | config estimate ÷ actual | config window ÷ actual | load | basis |")
    lines = [head, "|" + "--:|" * 10 + "--:|---|"]
    for run in result["runs"]:
        for r in run["results"]:
            lines.append(f"| {r['rows']:,} | {r['strategy']} | {f(r['estimate_s'], 1)} | {f(r['actual_s'])} "
                         f"| **{f(r['ratio'])}** | {f(r['window_estimate_s'], 1)} | {f(r['actual_window_s'])} "
                         f"| **{f(r['window_ratio'])}** | {f(r['config_ratio'])} | {f(r['config_window_ratio'])} "
                         f"| {f(r['load_avg'])} | {r['basis']} |")
    lo, hi = TARGET
    ratios = [r[k] for run in result["runs"] for r in run["results"] for k in ("ratio", "window_ratio")
              if r[k] is not None]
    within = sum(lo <= x <= hi for x in ratios)
    lines.append("")
    lines.append(f"calibrated ratios within {lo}-{hi}x: {within} of {len(ratios)}")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,50000,150000,600000", help="rows of the measured organizations")
    p.add_argument("--calibrate", default="20000,200000", help="rows of the calibration moves' organizations")
    p.add_argument("--strategies", default="online", help="comma-separated: online, frozen (default online)")
    p.add_argument("--blobs", type=int, default=20, help="blobs per organization (default 20)")
    p.add_argument("--workers", type=int, default=1, help="Celery worker processes (default 1)")
    p.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2, the demo's)")
    p.add_argument("--max-load", type=float, default=None,
                   help="before each move, wait until the 1-minute load average is at most this (shared machine)")
    p.add_argument("--max-wait", type=float, default=120, help="seconds to wait for --max-load (default 120)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a move (default 1800)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    args = p.parse_args(argv)
    args.sizes, args.calibrate = sorted(_ints(args.sizes)), _ints(args.calibrate)
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    stop_on_signals()
    result = {"benchmark": "estimate_accuracy",
              "command": " ".join(["benchmarks/estimate_accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "target": TARGET,
              "params": {"sizes": args.sizes, "calibrate": args.calibrate, "strategies": strategies,
                         "blobs": args.blobs, "workers": args.workers, "concurrency": args.concurrency,
                         "max_load": args.max_load, "max_wait": args.max_wait},
              "runs": []}
    with bench_fleet(cells=3, keep=args.keep) as fleet:
        print(f"fleet {fleet.prefix} in {fleet.workdir}", file=sys.stderr, flush=True)
        fleet.init()
        fleet.start_workers(args.workers, concurrency=args.concurrency)
        try:
            for strategy in strategies:
                result["runs"].append(run_strategy(fleet, strategy, args))
        finally:
            fleet.stop_workers()
    result["loadavg_at_end"] = os.getloadavg()[0]
    print(table(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
