"""Benchmark many moves at once: small organizations moved from cell-1 to cell-2 and cell-3 together.

    .venv/bin/python benchmarks/concurrent.py [--orgs 20] [--rows 5000] [--blobs 10] [--workers 2]
                                              [--concurrency 2] [--json out.json]

Seeds ``--orgs`` organizations of ``--rows`` rows and ``--blobs`` blobs each into cell-1 of a fresh
fleet, starts ``--workers`` Celery worker processes (``--concurrency`` pool processes each), requests
every move in the same instant (alternately to cell-2 and cell-3), and waits for all of them.
Reports the total time (first request to last completion), moves per minute, each move's duration
and write window, worker peak memory, and checks every move: completed, its verification ok, and
the organization's rows on the target equal to the source (counts and checksums recomputed here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path and benchmarks/concurrent.py would hide
# the standard library's ``concurrent`` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import psycopg  # noqa: E402

from benchmarks._fleet import MemorySampler, bench_fleet, machine, stop_on_signals, wait_moves  # noqa: E402


def org_checksums(dsn: str, orgs: list[int]) -> dict[int, dict[str, tuple[int, str]]]:
    """Per organization, per table: (rows, checksum) with the verifier's own query."""
    from migrator.cells.introspect import introspect
    from migrator.config import get_settings
    from migrator.copy.spec import stabilize_session, table_specs
    from migrator.dictionary import load_dictionary
    from migrator.verify.checksums import range_checksum

    with psycopg.connect(dsn, autocommit=True) as conn:
        stabilize_session(conn)
        specs = table_specs(load_dictionary(get_settings().dictionary_file()), introspect(conn))
        return {org: {name: tuple(range_checksum(conn, spec, org, None, None).as_dict().values())
                      for name, spec in specs.items()} for org in orgs}


def _stats(values: list[float]) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {}
    return {"min": round(values[0], 3), "median": round(statistics.median(values), 3), "max": round(values[-1], 3)}


def run(args) -> dict:
    from migrator.moves.operations import Operations
    from migrator.sample.seed import seed_organizations

    moves_cfg = {}
    if args.batch_rows:
        moves_cfg["batch_rows"] = args.batch_rows
    if args.chunk_rows:
        moves_cfg["chunk_rows"] = args.chunk_rows
    with bench_fleet(cells=3, moves=moves_cfg, keep=args.keep) as fleet:
        print(f"fleet {fleet.prefix} in {fleet.workdir}", file=sys.stderr, flush=True)
        fleet.init()
        settings = fleet.settings()
        t0 = time.perf_counter()
        orgs = seed_organizations(settings, "cell-1", orgs=args.orgs, rows=args.rows, blobs=args.blobs, skew=False,
                                  seed=7)
        print(f"seeded {len(orgs)} organizations of {args.rows} rows in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)
        ids = [o.organization_id for o in orgs]
        before = org_checksums(fleet.cell_dsns["cell-1"], ids)
        procs = fleet.start_workers(args.workers, concurrency=args.concurrency)
        ops = Operations(settings)
        targets = {oid: ("cell-2", "cell-3")[i % 2] for i, oid in enumerate(ids)}
        try:
            with MemorySampler([p.pid for p in procs]) as mem:
                start = time.time()
                requested = [ops.request_move(oid, targets[oid], actor="benchmark", reason="benchmarks/concurrent.py",
                                              strategy=args.strategy) for oid in ids]
                requested_s = time.time() - start
                done = wait_moves(settings, [m.id for m in requested], timeout=args.timeout)
                total = time.time() - start
        finally:
            fleet.stop_workers()
        after = {}
        for cell in ("cell-2", "cell-3"):
            mine = [oid for oid in ids if targets[oid] == cell]
            after.update(org_checksums(fleet.cell_dsns[cell], mine))
    per_move = []
    for m in done:
        report = m.report or {}
        oid = int(m.organization_id)
        per_move.append({
            "organization_id": oid, "target": m.target_cell, "state": m.state,
            "duration_s": round((m.completed_at - m.created_at).total_seconds(), 3) if m.completed_at else None,
            "write_window_s": report.get("write_window_s"),
            "verified": bool(report.get("verification", {}).get("ok")),
            "rows_equal": after.get(oid) == before[oid],
        })
    completed = sum(p["state"] == "completed" for p in per_move)
    return {
        "benchmark": "concurrent", "command": " ".join(["benchmarks/concurrent.py", *sys.argv[1:]]),
        "machine": machine(),
        "params": {"orgs": args.orgs, "rows": args.rows, "blobs": args.blobs, "workers": args.workers,
                   "concurrency": args.concurrency, "rows_total": sum(o.rows for o in orgs),
                   "strategy": done[0].strategy if done else args.strategy},
        "total_s": round(total, 3), "requests_s": round(requested_s, 3),
        "moves_per_min": round(60 * len(done) / total, 1),
        "rows_per_s": round(sum(o.rows for o in orgs) / total),
        "completed": completed, "verified": sum(p["verified"] for p in per_move),
        "rows_equal": sum(p["rows_equal"] for p in per_move),
        "duration_s": _stats([p["duration_s"] for p in per_move]),
        "write_window_s": _stats([p["write_window_s"] for p in per_move]),
        "memory": mem.result(), "moves": per_move,
    }


def table(r: dict) -> str:
    n = r["params"]["orgs"]
    lines = [
        ("organizations x rows (blobs)", f"{n} x {r['params']['rows']:,} ({r['params']['blobs']} each)"),
        ("workers x concurrency", f"{r['params']['workers']} x {r['params']['concurrency']}"),
        ("strategy", r["params"]["strategy"]),
        ("total time, first request to last done (s)", f"{r['total_s']:.2f}"),
        ("moves per minute", f"{r['moves_per_min']:.1f}"),
        ("rows per second, all moves", f"{r['rows_per_s']:,}"),
        ("move duration min / median / max (s)", " / ".join(f"{v:.2f}" for v in r["duration_s"].values())),
        ("write window min / median / max (s)", " / ".join(f"{v:.2f}" for v in r["write_window_s"].values())),
        ("completed", f"{r['completed']} / {n}"),
        ("verified (report.verification.ok)", f"{r['verified']} / {n}"),
        ("target rows == source rows (rechecked)", f"{r['rows_equal']} / {n}"),
        ("worker peak RSS, one process (MiB)", f"{r['memory']['peak_process_rss_mib']:.0f}"),
        ("worker peak RSS, whole tree (MiB)", f"{r['memory']['peak_worker_tree_rss_mib']:.0f}"),
    ]
    return "\n".join(f"{k:<44}{v:>28}" for k, v in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orgs", type=int, default=20, help="organizations moved at once (default 20)")
    p.add_argument("--rows", type=int, default=5000, help="rows per organization (default 5000)")
    p.add_argument("--blobs", type=int, default=10, help="blobs per organization (default 10)")
    p.add_argument("--workers", type=int, default=2, help="Celery worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    p.add_argument("--strategy", choices=["frozen", "online"], help="move strategy (default: the config's default)")
    p.add_argument("--batch-rows", type=int, help="override moves.batch_rows")
    p.add_argument("--chunk-rows", type=int, help="override moves.chunk_rows")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all moves (default 1800)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    args = p.parse_args(argv)
    stop_on_signals()
    result = run(args)
    print(table(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json_path}")
    ok = result["completed"] == result["verified"] == result["rows_equal"] == args.orgs
    if not ok:
        print("NOT every move completed, verified and matched the source", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
