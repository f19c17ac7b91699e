"""Cost at cell scale: the same organizations moved between empty cells and out of full ones.

    .venv/bin/python benchmarks/scale.py [--source-rows 4000000] [--target-rows 1000000] [--growth 4]
                                         [--small 10000] [--large 500000] [--json out.json]

One run, one fleet (databases ``cmb_<hex>_*``, dropped at the end):

- **empty** phase: each organization is seeded alone into an empty source cell and moved to an
  empty target (both truncated before the next one);
- **full** phase: a source cell holding ``--source-rows`` rows of other organizations and a target
  holding ``--target-rows``, built in bulk (``benchmarks/_bystanders.py``: one template
  organization cloned inside PostgreSQL with ``INSERT … SELECT … generate_series``);
- **grown** phase: the same source grown to ``--growth`` times its bystanders (same target).

In each phase a ``--small`` (``--repeat`` times, medians reported) and a ``--large`` organization are
moved with each strategy (a fresh organization per move, seeded with ``migrator.sample.seed``), then cleaned
up (``run_cleanup``, forced).
For each move, measured in the same run on the same rows:

- **raw copy**: per table, ``COPY (SELECT cols FROM t WHERE <org predicate>) TO STDOUT (FORMAT
  BINARY)`` with the planner's own choice of plan, piped into ``COPY t FROM STDIN`` of a scratch cell;
- **raw checksum**: the verifier's row-hash query over the organization's rows of each table, planner's
  choice, on the source and on the target (after the move, the target's tables analyzed first).

Prints per step (preflight, copy_rows, verify, catch_up, cleanup) the full ÷ empty and grown ÷ full
ratios, the large organization's copy and verify against raw, and the load average; writes JSON.
No figure is asserted here; targets are printed next to the ratios (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from benchmarks import _bystanders as bystanders  # noqa: E402
from benchmarks._fleet import BenchFleet, bench_fleet, checkpoint, machine, stop_on_signals, wait_moves  # noqa: E402
from benchmarks.move import _specs, quiet_autovacuum, raw_copy, step_times, truncate_org_tables  # noqa: E402

STEPS = ("preflight", "copy_rows", "verify", "catch_up", "cleanup")
TARGETS = {"small_total": 1.3, "small_step": 1.5, "growth": 1.1, "large_copy": 1.3, "large_verify": 1.3}
EMPTY_SRC, EMPTY_TGT, FULL_SRC, FULL_TGT, SCRATCH = "cell-1", "cell-2", "cell-3", "cell-4", "cell-5"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- raw baselines
def raw_checksum(dsn: str, org: int) -> float:
    """Seconds for the verifier's checksum query over the organization's rows of every table, with the
    planner's own choice of plan (no settings), one connection."""
    from migrator.copy.spec import stabilize_session

    with psycopg.connect(dsn, autocommit=True) as conn:
        stabilize_session(conn)
        order, specs = _specs(conn)
        t0 = time.perf_counter()
        for name in order:
            conn.execute(specs[name].checksum_sql(), {"org": org}).fetchone()
        return time.perf_counter() - t0


def analyze_org_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        order, _ = _specs(conn)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, order))))


# ----------------------------------------------------------------------------- one move
def seed(fleet: BenchFleet, cell: str, rows: int, blobs: int) -> int:
    from migrator.sample.seed import seed_organizations

    (org,) = seed_organizations(fleet.settings(), cell, orgs=1, rows=rows, blobs=blobs, skew=False, seed=rows)
    return org.organization_id


def quiet_machine(max_load: float | None, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until the 1-minute load average is at most ``max_load``: the machine
    is shared, and a measurement taken under another's test run says little. Returns the seconds waited."""
    if not max_load:
        return 0.0
    t0 = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    waited = time.monotonic() - t0
    if waited > 1:
        log(f"waited {waited:.0f}s for the load average to fall to {max_load}")
    return waited


def measure(fleet: BenchFleet, phase: str, size: str, strategy: str, org: int, source: str, target: str,
            args) -> dict:
    """Raw copy, the move, raw checksum, cleanup: one organization, one strategy."""
    from migrator.moves.operations import Operations
    from migrator.moves.steps.cleanup import run_cleanup
    from migrator.moves.store import MoveStore

    settings = fleet.settings()
    checkpoint()
    waited = quiet_machine(args.max_load, args.max_wait)
    raw = raw_copy(fleet.cell_dsns[source], fleet.cell_dsns[SCRATCH], org)
    truncate_org_tables(fleet.cell_dsns[SCRATCH])
    checkpoint()
    load = os.getloadavg()[0]
    move = Operations(settings).request_move(org, target, actor="benchmark", reason="benchmarks/scale.py",
                                             strategy=strategy)
    (move,) = wait_moves(settings, [move.id], timeout=args.timeout)
    if move.state != "completed":
        raise RuntimeError(f"move {move.id} of organization {org} ended {move.state}: {move.error}")
    times = step_times(MoveStore(settings.control_dsn).events(move.id), move)
    steps = dict(times["steps"])
    analyze_org_tables(fleet.cell_dsns[target])
    checkpoint()
    cks_src, cks_tgt = raw_checksum(fleet.cell_dsns[source], org), raw_checksum(fleet.cell_dsns[target], org)
    checkpoint()
    t0 = time.perf_counter()
    run_cleanup(settings, str(move.id), force=True, actor="benchmark", owner="benchmarks/scale.py")
    steps["cleanup"] = round(time.perf_counter() - t0, 3)
    report = move.report or {}
    out = {"phase": phase, "size": size, "strategy": strategy, "organization_id": org, "move_id": str(move.id),
           "rows": report.get("copy_rows", {}).get("rows"), "verified": report.get("verification", {}).get("ok"),
           "total_s": times["total_s"], "steps_s": steps, "write_window_s": report.get("write_window_s"),
           "raw_copy_s": raw["s"], "raw_copy_rows": raw["rows"],
           "raw_checksum_s": round(cks_src + cks_tgt, 3),
           "raw_checksum_source_s": round(cks_src, 3), "raw_checksum_target_s": round(cks_tgt, 3),
           "loadavg": load, "loadavg_after": os.getloadavg()[0], "waited_for_load_s": round(waited)}
    out["copy_vs_raw"] = round(steps["copy_rows"] / raw["s"], 3) if raw["s"] else None
    out["verify_vs_raw"] = round(steps["verify"] / out["raw_checksum_s"], 3) if out["raw_checksum_s"] else None
    log(f"{phase} {size} {strategy}: {out['rows']} rows, move {out['total_s']}s, "
        + ", ".join(f"{s} {steps.get(s, '-')}" for s in STEPS) + f"; raw copy {raw['s']}s, raw checksum "
        f"{out['raw_checksum_s']}s")
    return out


def median_of(runs: list[dict]) -> dict:
    """One record of several moves of the same kind: the median of each figure, every move kept."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key in ("total_s", "raw_copy_s", "raw_checksum_s", "raw_checksum_source_s", "raw_checksum_target_s",
                "copy_vs_raw", "verify_vs_raw", "loadavg", "loadavg_after", "write_window_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["steps_s"] = {s: statistics.median([r["steps_s"][s] for r in runs if s in r["steps_s"]])
                      for s in runs[0]["steps_s"]}
    out["verified"] = all(r["verified"] for r in runs)
    out["repeats"] = runs
    return out


def run_phase(fleet, phase: str, source: str, target: str, args, empty: bool) -> list[dict]:
    out = []
    for size, rows, repeat in (("small", args.small, args.repeat), ("large", args.large, args.repeat_large)):
        for strategy in args.strategies:
            runs = []
            for _ in range(max(1, repeat)):
                if empty:
                    for cell in (source, target):
                        truncate_org_tables(fleet.cell_dsns[cell])
                org = seed(fleet, source, rows, args.blobs)
                runs.append(measure(fleet, phase, size, strategy, org, source, target, args))
            out.append(median_of(runs))
    return out


# ----------------------------------------------------------------------------- the run
def ratios(runs: list[dict], strategies: list[str]) -> dict:
    def find(phase, size, strategy):
        return next((r for r in runs if (r["phase"], r["size"], r["strategy"]) == (phase, size, strategy)), None)

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    out: dict = {}
    for strategy in strategies:
        for size in ("small", "large"):
            empty, full, grown = (find(p, size, strategy) for p in ("empty", "full", "grown"))
            entry: dict = {}
            for label, top, bottom in (("full_vs_empty", full, empty), ("grown_vs_full", grown, full),
                                       ("grown_vs_empty", grown, empty)):
                if top and bottom:
                    entry[label] = {"total": ratio(top["total_s"], bottom["total_s"]),
                                    **{s: ratio(top["steps_s"].get(s), bottom["steps_s"].get(s)) for s in STEPS
                                       if top["steps_s"].get(s) is not None}}
            entry["copy_vs_raw"] = {r["phase"]: r["copy_vs_raw"] for r in (empty, full, grown) if r}
            entry["verify_vs_raw"] = {r["phase"]: r["verify_vs_raw"] for r in (empty, full, grown) if r}
            out[f"{size}/{strategy}"] = entry
    return out


def targets_met(rat: dict, strategies: list[str]) -> dict:
    met = {}
    for strategy in strategies:
        small = rat.get(f"small/{strategy}", {})
        fe = small.get("full_vs_empty", {})
        met[f"small/{strategy}: total full/empty <= {TARGETS['small_total']}"] = _le(fe.get("total"),
                                                                                       TARGETS["small_total"])
        for step in ("preflight", "copy_rows", "verify", "cleanup"):
            met[f"small/{strategy}: {step} full/empty <= {TARGETS['small_step']}"] = _le(fe.get(step),
                                                                                          TARGETS["small_step"])
        met[f"small/{strategy}: total grown/full <= {TARGETS['growth']}"] = _le(
            small.get("grown_vs_full", {}).get("total"), TARGETS["growth"])
        large = rat.get(f"large/{strategy}", {})
        for phase, value in large.get("copy_vs_raw", {}).items():
            met[f"large/{strategy}: copy_rows/raw copy ({phase}) <= {TARGETS['large_copy']}"] = _le(
                value, TARGETS["large_copy"])
        for phase, value in large.get("verify_vs_raw", {}).items():
            met[f"large/{strategy}: verify/raw checksum ({phase}) <= {TARGETS['large_verify']}"] = _le(
                value, TARGETS["large_verify"])
    return met


def _le(value, limit):
    return None if value is None else value <= limit


def table(result: dict) -> str:
    runs = result["runs"]
    cols = [f"{r['phase']} {r['size']} {r['strategy'][:6]}" for r in runs]
    lines = []

    def row(label, values):
        lines.append(f"{label:<26}" + "".join(f"{v:>22}" for v in values))

    def f(v):
        return "-" if v is None else (f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")

    row("", cols)
    row("rows moved", [f(r["rows"]) for r in runs])
    row("load avg before / after", [f"{r['loadavg']:.2f} / {r['loadavg_after']:.2f}" for r in runs])
    row("move total (s)", [f(r["total_s"]) for r in runs])
    for s in STEPS:
        row(f"  {s} (s)", [f(r["steps_s"].get(s)) for r in runs])
    row("raw copy (s)", [f(r["raw_copy_s"]) for r in runs])
    row("raw checksum src+tgt (s)", [f(r["raw_checksum_s"]) for r in runs])
    row("copy_rows / raw copy", [f(r["copy_vs_raw"]) for r in runs])
    row("verify / raw checksum", [f(r["verify_vs_raw"]) for r in runs])
    lines.append("")
    for key, entry in result["ratios"].items():
        for label in ("full_vs_empty", "grown_vs_full", "grown_vs_empty"):
            if label in entry:
                parts = ", ".join(f"{k} {v}" for k, v in entry[label].items())
                lines.append(f"{key} {label.replace('_vs_', ' / ')}: {parts}")
    lines.append("")
    for label, ok in result["targets_met"].items():
        lines.append(f"target {label}: {'-' if ok is None else 'yes' if ok else 'NO'}")
    lines.append(f"bystanders: {json.dumps(result['cells'])}")
    lines.append(f"load average at start / end: {result['machine']['loadavg_at_start']:.2f} / "
                 f"{result['loadavg_at_end']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source-rows", type=int, default=4_000_000, help="bystander rows in the full source (4000000)")
    p.add_argument("--target-rows", type=int, default=1_000_000, help="bystander rows in the full target (1000000)")
    p.add_argument("--growth", type=float, default=4.0, help="the grown source holds this many times the "
                                                              "source's bystanders (4; 0: no grown phase)")
    p.add_argument("--small", type=int, default=10_000, help="rows of the small organization (10000)")
    p.add_argument("--large", type=int, default=500_000, help="rows of the large organization (500000)")
    p.add_argument("--blobs", type=int, default=20, help="blobs of each moved organization (20)")
    p.add_argument("--template-rows", type=int, default=bystanders.TEMPLATE_ROWS,
                   help=f"rows of each bystander organization ({bystanders.TEMPLATE_ROWS})")
    p.add_argument("--repeat", type=int, default=3, help="moves of the small organization per phase and "
                                                            "strategy, median reported (3)")
    p.add_argument("--repeat-large", type=int, default=1, help="the same for the large organization (1)")
    p.add_argument("--strategies", default="frozen,online", help="comma-separated (frozen,online)")
    p.add_argument("--workers", type=int, default=1, help="Celery worker processes (1)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one move (1800)")
    p.add_argument("--max-load", type=float, default=None,
                   help="before each move, wait until the 1-minute load average is at most this (shared machines)")
    p.add_argument("--max-wait", type=float, default=600, help="seconds to wait for --max-load per move (600)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    args = p.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    stop_on_signals()
    result = {"benchmark": "scale", "command": " ".join(["benchmarks/scale.py", *(argv or sys.argv[1:])]),
              "machine": machine(), "params": {k: v for k, v in vars(args).items() if k != "json_path"},
              "targets": TARGETS, "cells": {}, "runs": []}
    with bench_fleet(cells=5, keep=args.keep) as fleet:
        log(f"fleet {fleet.prefix} in {fleet.workdir}")
        fleet.init()
        settings = fleet.settings()
        for cell in (EMPTY_TGT, FULL_TGT, SCRATCH):
            quiet_autovacuum(fleet.cell_dsns[cell])
        for cell, rows in ((FULL_SRC, args.source_rows), (FULL_TGT, args.target_rows)):
            info = bystanders.fill_cell(settings, cell, fleet.cell_dsns[cell], rows, log=log,
                                        template_rows=args.template_rows)
            result["cells"][cell] = info
            log(f"{cell}: {info}")
        fleet.start_workers(args.workers, concurrency=1)
        result["runs"] += run_phase(fleet, "empty", EMPTY_SRC, EMPTY_TGT, args, empty=True)
        result["runs"] += run_phase(fleet, "full", FULL_SRC, FULL_TGT, args, empty=False)
        if args.growth and args.growth > 1:
            src = result["cells"][FULL_SRC]
            grown = bystanders.grow_cell(fleet.cell_dsns[FULL_SRC], src["template_rows"], src["clones"],
                                         int(src["rows"] * args.growth), log=log)
            result["cells"]["grown"] = grown
            log(f"grown: {grown}")
            result["runs"] += run_phase(fleet, "grown", FULL_SRC, FULL_TGT, args, empty=False)
        fleet.stop_workers()
    result["loadavg_at_end"] = os.getloadavg()[0]
    result["ratios"] = ratios(result["runs"], args.strategies)
    result["targets_met"] = targets_met(result["ratios"], args.strategies)
    print(table(result))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
