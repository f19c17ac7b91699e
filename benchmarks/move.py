"""Benchmark one organization's move against raw PostgreSQL on the same rows.

    .venv/bin/python benchmarks/move.py [--rows 500000] [--blobs 1000] [--workers 1,2] [--json out.json]

For each worker count W in ``--workers`` (a fresh set of cells each time, so every run starts equal):

1. seed one organization of ``--rows`` rows and ``--blobs`` blobs into a source cell
   (``migrator.sample.seed``), then ``VACUUM ANALYZE`` it (a settled cell, as in production);
2. **raw copy**: per organization table, in copy order, ``COPY (SELECT cols FROM t WHERE <org
   predicate>) TO STDOUT (FORMAT BINARY)`` on the source piped into ``COPY t FROM STDIN (FORMAT
   BINARY)`` on a scratch cell (an empty database with the target's schema, guard and indexes), one
   transaction per table with ``session_replication_role = replica`` as the mover uses;
3. **raw checksum**: the verifier's checksum query over the organization's rows of each table, once
   on the source and once on the scratch copy, one connection, no framework (since ADR 0010 that is
   the ``hash_record_extended`` row hash; the md5-of-text query of ``moves.checksum: text``, the
   brief's yardstick, is measured too and reported as ``md5_text_s``);
4. **the move**: ``W`` Celery worker processes (``--concurrency 1`` each) move the organization to a
   fresh target; timings come from the move's events (step started/finished), its report (write
   window), and a probe in the workers (benchmarks/_probe.py) that times the data work of each task,
   so the remainder (Celery, control database, planning) is visible; worker memory is sampled from
   /proc for the whole run.

Prints a table and writes everything as JSON (``--json``). No figure is asserted here; the targets
are printed next to the ratios. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path and benchmarks/concurrent.py would hide
# the standard library's ``concurrent`` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from benchmarks._fleet import (  # noqa: E402
    BenchFleet,
    MemorySampler,
    bench_fleet,
    checkpoint,
    machine,
    probe_lines,
    stop_on_signals,
    wait_moves,
)


def steps_of(strategy: str) -> tuple[str, ...]:
    """The move's steps in order (the online strategy has more of them)."""
    from migrator.moves import workflow as wf

    return wf.steps_for(strategy)


def all_steps(runs) -> list[str]:
    """The steps of every run, in workflow order (online's order first: it has every step)."""
    from migrator.moves import workflow as wf

    used = {s for r in runs for s in steps_of(r["strategy"])}
    order = list(wf.ONLINE) + [s for r in runs for s in steps_of(r["strategy"])]
    return [s for s in dict.fromkeys(order) if s in used]


TARGETS = {"copy": 1.3, "verify": 1.3, "write_window": 1.5, "rss_mib": 300.0, "overhead_pct": 5.0}


# ----------------------------------------------------------------------------- raw baselines
def _specs(conn, checksum: str = "hash"):
    from migrator.cells.introspect import introspect
    from migrator.config import get_settings
    from migrator.copy.spec import table_specs
    from migrator.dictionary import load_dictionary

    dictionary = load_dictionary(get_settings().dictionary_file())
    live = introspect(conn)
    return dictionary.copy_order(live), table_specs(dictionary, live, checksum)


def raw_copy(source_dsn: str, scratch_dsn: str, org: int) -> dict:
    """Binary COPY of the organization's rows, table by table, source -> scratch. The physical limit."""
    from migrator.copy.spec import stabilize_session

    tables = {}
    with psycopg.connect(source_dsn, autocommit=True) as src, psycopg.connect(scratch_dsn) as tgt:
        stabilize_session(src)
        order, specs = _specs(src)
        t_all = time.perf_counter()
        for name in order:
            spec = specs[name]
            t0 = time.perf_counter()
            out_sql = sql.SQL("COPY (SELECT {cols} FROM {t} AS t WHERE {pred}) TO STDOUT (FORMAT BINARY)").format(
                cols=spec.cols("t"), t=spec.ident, pred=spec.predicate)
            in_sql = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT BINARY)").format(t=spec.ident, cols=spec.cols())
            nbytes = 0
            with tgt.transaction():
                tgt.execute("SET LOCAL session_replication_role = replica")
                with src.cursor() as sc, tgt.cursor() as tc:
                    with sc.copy(out_sql, {"org": org}) as out, tc.copy(in_sql) as inp:
                        for data in out:
                            nbytes += len(data)
                            inp.write(data)
                    rows = tc.rowcount
            tables[name] = {"rows": rows, "bytes": nbytes, "s": round(time.perf_counter() - t0, 4)}
        total = time.perf_counter() - t_all
    rows = sum(t["rows"] for t in tables.values())
    nbytes = sum(t["bytes"] for t in tables.values())
    return {"s": round(total, 3), "rows": rows, "bytes": nbytes, "rows_per_s": round(rows / total),
            "mb_per_s": round(nbytes / total / 1e6, 1), "tables": tables}


def _checksums(dsn: str, org: int, checksum: str = "hash") -> tuple[float, dict]:
    """The verifier's query (``range_checksum``: its SQL and planner settings) over each whole table.

    ``checksum="text"``: the md5 of each row's text form (``moves.checksum: text``, the brief's yardstick).
    """
    from migrator.copy.spec import stabilize_session
    from migrator.verify.checksums import range_checksum

    with psycopg.connect(dsn, autocommit=True) as conn:
        stabilize_session(conn)
        order, specs = _specs(conn, checksum)
        out = {}
        t0 = time.perf_counter()
        for name in order:
            c = range_checksum(conn, specs[name], org, None, None)
            out[name] = (c.rows, c.checksum)
        return time.perf_counter() - t0, out


def raw_checksum(source_dsn: str, scratch_dsn: str, org: int) -> dict:
    """The verifier's checksum query over every table, once per side (sequential), then both sides at once."""
    s_src, c_src = _checksums(source_dsn, org)
    s_tgt, c_tgt = _checksums(scratch_dsn, org)
    par: dict = {}

    def side(key, dsn):
        par[key] = _checksums(dsn, org)[0]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=side, args=(k, d)) for k, d in (("src", source_dsn), ("tgt", scratch_dsn))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = time.perf_counter() - t0
    if c_src != c_tgt:
        raise RuntimeError(f"raw copy differs from the source: {c_src} != {c_tgt}")
    md5_text = _checksums(source_dsn, org, "text")[0] + _checksums(scratch_dsn, org, "text")[0]
    return {"s": round(s_src + s_tgt, 3), "source_s": round(s_src, 3), "target_s": round(s_tgt, 3),
            "both_sides_at_once_s": round(both, 3), "md5_text_s": round(md5_text, 3)}


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 3)


def raw_baselines(source_dsn: str, scratch_dsn: str, org: int) -> dict:
    """Raw copy then raw checksum, each after a CHECKPOINT (no phase pays for the previous one's writes)."""
    checkpoint()
    copy = raw_copy(source_dsn, scratch_dsn, org)
    checkpoint()
    cksum = raw_checksum(source_dsn, scratch_dsn, org)
    checkpoint()
    return {"copy": copy, "checksum": cksum}


def _org_tables(conn) -> list[str]:
    from migrator.config import get_settings
    from migrator.dictionary import load_dictionary

    return load_dictionary(get_settings().dictionary_file()).org_tables()


def quiet_autovacuum(dsn: str) -> None:
    """No autovacuum on the organization tables of a scratch or target cell: a background vacuum of the
    rows one phase wrote must not land in the next phase's timing (the source is vacuumed once)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in _org_tables(conn):
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(table)))


def truncate_org_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in _org_tables(conn))))


# ----------------------------------------------------------------------------- the move
def step_times(events, move) -> dict:
    """Per step: first 'started' to 'finished' (seconds), and the gaps between steps."""
    STEPS = steps_of(move.strategy)  # noqa: N806
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    for e in events:
        if e.step in STEPS:
            ts = e.at.timestamp()
            if e.event == "started":
                started.setdefault(e.step, ts)
            elif e.event == "finished":
                finished[e.step] = ts
    steps = {s: round(finished[s] - started[s], 3) for s in STEPS if s in started and s in finished}
    gaps = sum(max(0.0, started[b] - finished[a]) for a, b in zip(STEPS, STEPS[1:], strict=False)
               if a in finished and b in started)
    return {"steps": steps, "between_steps_s": round(gaps, 3),
            "total_s": round(move.completed_at.timestamp() - move.created_at.timestamp(), 3)
            if move.completed_at else None,
            "_started": started, "_finished": finished}


def _py_spy(procs, out_dir: str | None, tag: str) -> list:
    """Optionally sample each worker (and its pool children) with py-spy into collapsed-stack files."""
    if not out_dir:
        return []
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy needs the py-spy command (pip install py-spy)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    spies = []
    for i, p in enumerate(procs, 1):
        out = Path(out_dir) / f"{tag}-worker{i}.txt"
        spies.append(subprocess.Popen([exe, "record", "--subprocesses", "--idle", "--format", "raw", "--rate", "200",
                                       "-o", str(out), "--pid", str(p.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # let py-spy attach
    return spies


def _stop_spies(spies) -> None:
    for s in spies:
        s.send_signal(signal.SIGINT)
    for s in spies:
        try:
            s.wait(30)
        except subprocess.TimeoutExpired:
            s.kill()


def run_move(fleet: BenchFleet, org: int, target: str, workers: int, probe_file: Path, timeout: float,
             py_spy: str | None = None, strategy: str = "frozen") -> dict:
    from migrator.moves.operations import Operations
    from migrator.moves.store import MoveStore

    settings = fleet.settings()
    procs = fleet.start_workers(workers, concurrency=1, app="benchmarks._probe")
    spies = _py_spy(procs, py_spy, f"move-{strategy}-{workers}w")
    try:
        with MemorySampler([p.pid for p in procs]) as mem:
            t0 = time.time()
            move = Operations(settings).request_move(org, target, actor="benchmark", reason="benchmarks/move.py",
                                                     strategy=strategy)
            (move,) = wait_moves(settings, [move.id], timeout=timeout)
            wall = time.time() - t0
    finally:
        _stop_spies(spies)
        fleet.stop_workers()
    if move.state != "completed":
        raise RuntimeError(f"move {move.id} ended {move.state}: {move.error}")
    store = MoveStore(settings.control_dsn)
    events = store.events(move.id)
    unit_rows = {u.unit: u.total for u in store.units(move.id, "copy_rows")}
    chunk_rows = settings.moves.chunk_rows
    times = step_times(events, move)
    report = move.report or {}
    tasks = probe_lines(probe_file, str(move.id))

    def unit_tasks(step):
        return [t for t in tasks if t["task"] == f"migrator.{step}_unit"]

    copy_units, verify_units = unit_tasks("copy_rows"), unit_tasks("verify")
    copy_s = times["steps"].get("copy_rows")
    verify_s = times["steps"].get("verify")
    rows = report.get("copy_rows", {}).get("rows", 0)
    nbytes = report.get("copy_rows", {}).get("bytes", 0)

    def overhead(step, step_wall, units, data_key):
        """Where a fan-out step's time goes, in worker-seconds (step wall time x workers):

        data: the data work inside its unit tasks (COPY or checksum queries; checkpoints excluded);
        plan: the step task itself (planning the units, enqueueing them);
        in_task: the rest of the unit tasks (claim, context, connections, checkpoints, finish,
        fan-in, enqueue next): the framework's cost inside each task;
        delivery: on each pool process, the gaps between one task of the step and its next one
        (Celery handing over the next message);
        waiting: the rest: a worker with nothing to do while planning runs or while another worker
        finishes the last unit (imbalance, not a per-task cost).
        Celery per-task overhead = (in_task + delivery) / unit tasks.
        """
        if not step_wall or not units:
            return None
        plan_tasks = [t for t in tasks if t["task"] == f"migrator.{step}"]
        data = sum(u[data_key] - u["checkpoint_s"] for u in units)
        unit_wall = sum(u["end"] - u["start"] for u in units)
        plan = sum(t["end"] - t["start"] for t in plan_tasks)
        busy = step_wall * workers
        in_task = unit_wall - data
        delivery = 0.0
        for pid in {t["pid"] for t in units}:
            mine = sorted((t for t in [*plan_tasks, *units] if t["pid"] == pid), key=lambda t: t["start"])
            delivery += sum(max(0.0, b["start"] - a["end"]) for a, b in zip(mine, mine[1:], strict=False))
        waiting = max(0.0, busy - unit_wall - plan - delivery)
        n = len(units)
        per_task = (in_task + delivery) / n
        # Units of a full range (at least half of chunk_rows rows): what the range/batch size controls.
        full = [u for u in units if unit_rows.get(u["unit"], 0) >= chunk_rows / 2]
        full_data = sum(u[data_key] - u["checkpoint_s"] for u in full) / len(full) if full else None
        return {
            "unit_tasks": n, "worker_s": round(busy, 3), "data_s": round(data, 3), "plan_s": round(plan, 3),
            "in_task_s": round(in_task, 3), "delivery_s": round(delivery, 3), "waiting_s": round(waiting, 3),
            "checkpoints_s": round(sum(u["checkpoint_s"] for u in units), 3),
            "in_task_ms_per_task": round(1000 * in_task / n, 1),
            "delivery_ms_per_task": round(1000 * delivery / n, 1),
            "per_task_overhead_ms": round(1000 * per_task, 1),
            "per_task_overhead_pct": round(100 * per_task * n / busy, 2),
            "full_units": len(full), "full_unit_data_s": round(full_data, 3) if full_data else None,
            "per_task_overhead_pct_of_full_unit": round(100 * per_task / full_data, 2) if full_data else None,
            "not_data_pct": round(100 * (busy - data) / busy, 2)}

    return {
        "move_id": str(move.id), "target": target, "workers": workers, "concurrency": 1, "strategy": move.strategy,
        "wall_s": round(wall, 3), "total_s": times["total_s"], "steps_s": times["steps"],
        "between_steps_s": times["between_steps_s"],
        "write_window_s": report.get("write_window_s"),
        "copy_rows": {"s": copy_s, "rows": rows, "bytes": nbytes, "units": report.get("copy_rows", {}).get("units"),
                      "rows_per_s": round(rows / copy_s) if copy_s else None,
                      "mb_per_s": round(nbytes / copy_s / 1e6, 1) if copy_s else None,
                      "overhead": overhead("copy_rows", copy_s, copy_units, "copy_s")},
        "verify": {"s": verify_s, "ok": report.get("verification", {}).get("ok"),
                   "overhead": overhead("verify", verify_s, verify_units, "checksum_s")},
        "memory": mem.result(),
        "unit_tasks": [{"task": t["task"].split(".")[-1], "unit": t["unit"], "pid": t["pid"],
                        "start": round(t["start"] - t0, 3), "wall_s": round(t["end"] - t["start"], 4),
                        "data_s": round(t["copy_s"] + t["checksum_s"] - t["checkpoint_s"], 4)}
                       for t in sorted(tasks, key=lambda t: t["start"])],
    }


# ----------------------------------------------------------------------------- one configuration
def run_config(strategy: str, workers: int, args, probe_file: Path) -> dict:
    from migrator.sample.seed import seed_organizations

    moves = {}
    if args.batch_rows:
        moves["batch_rows"] = args.batch_rows
    if args.chunk_rows:
        moves["chunk_rows"] = args.chunk_rows
    with bench_fleet(cells=3, moves=moves, keep=args.keep) as fleet:
        tag = f"[{strategy}, {workers} worker(s)]"
        print(f"{tag} fleet {fleet.prefix} in {fleet.workdir}", file=sys.stderr, flush=True)
        fleet.init()
        settings = fleet.settings()
        t0 = time.perf_counter()
        (org,) = seed_organizations(settings, "cell-1", orgs=1, rows=args.rows, blobs=args.blobs, skew=False,
                                    seed=42)
        seed_s = time.perf_counter() - t0
        with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        print(f"{tag} seeded organization {org.organization_id}: {org.rows} rows, "
              f"{org.blobs} blobs in {seed_s:.1f}s", file=sys.stderr, flush=True)
        oid = org.organization_id
        for cell in ("cell-2", "cell-3"):
            quiet_autovacuum(fleet.cell_dsns[cell])
        raws = [raw_baselines(fleet.cell_dsns["cell-1"], fleet.cell_dsns["cell-2"], oid)]
        print(f"{tag} raw copy {raws[0]['copy']['s']}s, raw checksum {raws[0]['checksum']['s']}s",
              file=sys.stderr, flush=True)
        move = run_move(fleet, oid, "cell-3", workers, probe_file, timeout=args.timeout, py_spy=args.py_spy,
                        strategy=strategy)
        print(f"{tag} move {move['total_s']}s, write window {move['write_window_s']}s",
              file=sys.stderr, flush=True)
        truncate_org_tables(fleet.cell_dsns["cell-2"])
        raws.append(raw_baselines(fleet.cell_dsns["cell-1"], fleet.cell_dsns["cell-2"], oid))
        print(f"{tag} raw again: copy {raws[1]['copy']['s']}s, checksum {raws[1]['checksum']['s']}s",
              file=sys.stderr, flush=True)
        raw = {"copy": {**raws[0]["copy"], "s": _mean(r["copy"]["s"] for r in raws),
                        "runs_s": [r["copy"]["s"] for r in raws]},
               "checksum": {key: _mean(r["checksum"][key] for r in raws) for key in raws[0]["checksum"]}}
        raw["checksum"]["runs_s"] = [r["checksum"]["s"] for r in raws]
        raw["copy"]["rows_per_s"] = round(raw["copy"]["rows"] / raw["copy"]["s"])
        raw["copy"]["mb_per_s"] = round(raw["copy"]["bytes"] / raw["copy"]["s"] / 1e6, 1)
        settings_used = fleet.settings().moves
    rc, rk = raw["copy"]["s"], raw["checksum"]["s"]
    ratios = {
        "copy": round(move["copy_rows"]["s"] / rc, 3),
        "verify": round(move["verify"]["s"] / rk, 3),
        "verify_vs_both_sides_at_once": round(move["verify"]["s"] / raw["checksum"]["both_sides_at_once_s"], 3),
        "write_window": round(move["write_window_s"] / (rc + rk), 3),
    }
    ov = move["copy_rows"]["overhead"] or {}
    met = {
        "copy": ratios["copy"] <= TARGETS["copy"],
        "verify": ratios["verify"] <= TARGETS["verify"],
        "write_window": ratios["write_window"] <= TARGETS["write_window"],
        "rss": move["memory"]["peak_process_rss_mib"] < TARGETS["rss_mib"],
        # The range/batch size controls the overhead relative to a full unit's copy (tiny tables are one
        # task each whatever the size; their share is the step-level figure, reported next to it).
        "overhead": (ov.get("per_task_overhead_pct_of_full_unit") or ov.get("per_task_overhead_pct", 100))
        < TARGETS["overhead_pct"],
    }
    return {"strategy": strategy, "workers": workers, "organization_id": oid, "rows": org.rows, "blobs": org.blobs,
            "rows_by_table": org.rows_by_table, "seed_s": round(seed_s, 2),
            "batch_rows": settings_used.batch_rows, "chunk_rows": settings_used.chunk_rows,
            "raw": raw, "move": move, "ratios": ratios, "targets_met": met}


# ----------------------------------------------------------------------------- output
def table(result: dict) -> str:
    runs = result["runs"]
    cols = [f"{r['strategy']}, {r['workers']}w" for r in runs]

    def row(label, values):
        return f"{label:<40}" + "".join(f"{v:>18}" for v in values)

    def f(v, unit="", nd=2):
        if v is None:
            return "-"
        return f"{v:,.{nd}f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"

    lines = [row("", cols), row("rows / blobs", [f"{r['rows']:,} / {r['blobs']}" for r in runs]),
             row("batch_rows / chunk_rows", [f"{r['batch_rows']:,} / {r['chunk_rows']:,}" for r in runs]),
             row("raw copy (s), mean of before/after", [f(r["raw"]["copy"]["s"]) for r in runs]),
             row("raw copy before / after the move (s)",
                 [" / ".join(f"{x:.2f}" for x in r["raw"]["copy"]["runs_s"]) for r in runs]),
             row("raw copy rows/s", [f(r["raw"]["copy"]["rows_per_s"]) for r in runs]),
             row("raw checksum, src+tgt (s)", [f(r["raw"]["checksum"]["s"]) for r in runs]),
             row("raw checksum before / after (s)",
                 [" / ".join(f"{x:.2f}" for x in r["raw"]["checksum"]["runs_s"]) for r in runs]),
             row("raw checksum, both at once (s)", [f(r["raw"]["checksum"]["both_sides_at_once_s"]) for r in runs]),
             row("raw md5-of-text checksum, src+tgt (s)", [f(r["raw"]["checksum"].get("md5_text_s")) for r in runs]),
             row("move total (s)", [f(r["move"]["total_s"]) for r in runs])]
    for step in all_steps(runs):
        lines.append(row(f"  {step} (s)", [f(r["move"]["steps_s"].get(step)) for r in runs]))
    lines += [
        row("  between steps (s)", [f(r["move"]["between_steps_s"]) for r in runs]),
        row("copy_rows rows/s", [f(r["move"]["copy_rows"]["rows_per_s"]) for r in runs]),
        row("copy_rows MB/s (binary COPY bytes)", [f(r["move"]["copy_rows"]["mb_per_s"], nd=1) for r in runs]),
        row("copy_rows units", [f(r["move"]["copy_rows"]["units"]) for r in runs]),
        row("copy: planning (s)", [f((r["move"]["copy_rows"]["overhead"] or {}).get("plan_s")) for r in runs]),
        row("copy: Celery per-task overhead (ms)",
            [f((r["move"]["copy_rows"]["overhead"] or {}).get("per_task_overhead_ms"), nd=1) for r in runs]),
        row("copy: per-task overhead, % of step",
            [f((r["move"]["copy_rows"]["overhead"] or {}).get("per_task_overhead_pct"), "%") for r in runs]),
        row("copy: per-task overhead / full unit (%)",
            [f((r["move"]["copy_rows"]["overhead"] or {}).get("per_task_overhead_pct_of_full_unit"), "%")
             for r in runs]),
        row("verify: Celery per-task overhead (ms)",
            [f((r["move"]["verify"]["overhead"] or {}).get("per_task_overhead_ms"), nd=1) for r in runs]),
        row("verify: per-task overhead, % of step",
            [f((r["move"]["verify"]["overhead"] or {}).get("per_task_overhead_pct"), "%") for r in runs]),
        row("write window (s)", [f(r["move"]["write_window_s"]) for r in runs]),
        row("worker peak RSS, one process (MiB)", [f(r["move"]["memory"]["peak_process_rss_mib"], nd=0)
                                                   for r in runs]),
        row("worker peak RSS, whole tree (MiB)", [f(r["move"]["memory"]["peak_worker_tree_rss_mib"], nd=0)
                                                  for r in runs]),
        row(f"copy / raw copy (<= {TARGETS['copy']})", [f(r["ratios"]["copy"], nd=3) for r in runs]),
        row(f"verify / raw checksum (<= {TARGETS['verify']})", [f(r["ratios"]["verify"], nd=3) for r in runs]),
        row("verify / raw both-at-once", [f(r["ratios"]["verify_vs_both_sides_at_once"], nd=3) for r in runs]),
        row(f"window / (raw copy+cksum) (<= {TARGETS['write_window']})",
            [f(r["ratios"]["write_window"], nd=3) for r in runs]),
    ]
    for key, label in (("copy", f"copy <= {TARGETS['copy']}x raw"), ("verify", f"verify <= {TARGETS['verify']}x raw"),
                       ("write_window", f"window <= {TARGETS['write_window']}x raw"),
                       ("rss", f"peak RSS < {TARGETS['rss_mib']:.0f} MiB"),
                       ("overhead", f"per-task overhead < {TARGETS['overhead_pct']:.0f}% of a unit")):
        lines.append(row(f"target met: {label}", ["yes" if r["targets_met"][key] else "NO" for r in runs]))
    lines += [
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=500_000, help="rows of the organization (default 500000)")
    p.add_argument("--blobs", type=int, default=1000, help="blobs of the organization (default 1000)")
    p.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated (default 1,2)")
    p.add_argument("--strategies", default="frozen,online",
                   help="move strategies to run, comma-separated (default frozen,online): frozen freezes "
                        "before copying; online copies while writable and freezes for the final delta")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    p.add_argument("--batch-rows", type=int, help="override moves.batch_rows (default: the config default)")
    p.add_argument("--chunk-rows", type=int, help="override moves.chunk_rows (default: the config default)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a move (default 1800)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    p.add_argument("--py-spy", metavar="DIR", help="profile the workers with py-spy (collapsed stacks into DIR)")
    args = p.parse_args(argv)
    stop_on_signals()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]

    result = {"benchmark": "move", "command": " ".join(["benchmarks/move.py", *(argv or sys.argv[1:])]),
              "machine": machine(), "params": {"rows": args.rows, "blobs": args.blobs, "workers": counts,
                                                "strategies": strategies},
              "targets": TARGETS, "runs": []}
    probe_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    probe_file = probe_dir / f"cm-bench-probe-{os.getpid()}.jsonl"
    os.environ["BENCH_PROBE_FILE"] = str(probe_file)
    try:
        for strategy in strategies:
            for w in counts:
                result["runs"].append(run_config(strategy, w, args, probe_file))
    finally:
        probe_file.unlink(missing_ok=True)
    for r in result["runs"]:
        r["move"].pop("_started", None)
    print(table(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
