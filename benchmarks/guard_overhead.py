"""What the freeze guard costs ordinary writes: writes/s with and without it, in the same run.

    .venv/bin/python benchmarks/guard_overhead.py [--rows 20000] [--ops 2000] [--rounds 3] [--json out.json]

One provisioned cell (sample schema + guard) with two seeded organizations. A single client writes
to organization A in three modes, cycled ``--rounds`` times so drift hits every mode alike (the
median round is reported):

* ``no guard``: the guard's triggers and functions uninstalled;
* ``guard, idle``: installed, no organization frozen (the fast path: one probe of an empty table);
* ``guard, other org frozen``: organization B frozen in the cell, so every write to A walks its
  sharding-key chain to find its organization and checks it (the path taken during any move).

The order of the modes rotates from round to round, so none always runs first.

Workloads: one statement per transaction (an application's writes): INSERT a note (organization
via project -> namespace), UPDATE an issue, INSERT a CI build (via pipeline -> project ->
namespace), DELETE a note; and a bulk ``INSERT … SELECT`` of ``--bulk`` notes (rows/s: the per-row
trigger cost without the client round trip).
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

from benchmarks._fleet import bench_fleet, machine, stop_on_signals  # noqa: E402

MODES = ("no guard", "guard, idle", "guard, other org frozen")
WORKLOADS = ("insert note", "update issue", "insert ci_build", "delete note", "bulk insert notes (rows/s)")


def _ids(conn, sql_text: str, org: int) -> list[int]:
    return [r[0] for r in conn.execute(sql_text, {"org": org}).fetchall()]


def workload(conn, org: int, ops: int, bulk: int) -> dict[str, float]:
    """Writes/s of each workload for organization ``org`` (rows/s for the bulk insert)."""
    projects = _ids(conn, "SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
                          "WHERE n.organization_id = %(org)s ORDER BY p.id", org)
    issues = _ids(conn, "SELECT i.id FROM issues i JOIN projects p ON p.id = i.project_id JOIN namespaces n "
                        "ON n.id = p.namespace_id WHERE n.organization_id = %(org)s ORDER BY i.id LIMIT 5000", org)
    pipelines = _ids(conn, "SELECT c.id FROM ci_pipelines c JOIN projects p ON p.id = c.project_id JOIN namespaces n "
                           "ON n.id = p.namespace_id WHERE n.organization_id = %(org)s ORDER BY c.id LIMIT 5000", org)
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        out[name] = round(ops / (time.perf_counter() - t0), 1)

    new_notes: list[int] = []

    def insert_notes():
        for i in range(ops):
            new_notes.append(conn.execute(
                "INSERT INTO notes (project_id, noteable_type, noteable_id, note) VALUES (%s, 'Issue', %s, %s) "
                "RETURNING id", (projects[i % len(projects)], i, f"benchmark note {i}"), prepare=True).fetchone()[0])

    def update_issues():
        for i in range(ops):
            conn.execute("UPDATE issues SET weight = %s WHERE id = %s", (i % 7, issues[i % len(issues)]),
                         prepare=True)

    def insert_builds():
        for i in range(ops):
            conn.execute("INSERT INTO ci_builds (pipeline_id, name, stage) VALUES (%s, %s, 'test')",
                         (pipelines[i % len(pipelines)], f"job {i}"), prepare=True)

    def delete_notes():
        for note in new_notes[:ops]:
            conn.execute("DELETE FROM notes WHERE id = %s", (note,), prepare=True)

    timed("insert note", insert_notes)
    timed("update issue", update_issues)
    timed("insert ci_build", insert_builds)
    timed("delete note", delete_notes)
    t0 = time.perf_counter()
    with conn.transaction():
        conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note) "
                     "SELECT %s, 'Issue', g, 'bulk ' || g FROM generate_series(1, %s) g", (projects[0], bulk))
    out["bulk insert notes (rows/s)"] = round(bulk / (time.perf_counter() - t0), 1)
    conn.execute("DELETE FROM notes WHERE note LIKE 'bulk %%' AND project_id = %s", (projects[0],))
    conn.execute("DELETE FROM ci_builds WHERE name LIKE 'job %%' AND stage = 'test' AND pipeline_id = ANY(%s)",
                 (pipelines,))
    return out


def run(args) -> dict:
    from migrator.cells.guard import freeze_org, install_guard, unfreeze_org, uninstall_guard
    from migrator.cells.introspect import introspect
    from migrator.dictionary import load_dictionary
    from migrator.sample.seed import seed_organizations

    with bench_fleet(cells=1, keep=args.keep) as fleet:
        fleet.init()
        settings = fleet.settings()
        a, b = seed_organizations(settings, "cell-1", orgs=2, rows=args.rows, blobs=3, skew=False, seed=3)
        dictionary = load_dictionary(settings.dictionary_file())
        rounds: dict[str, list[dict]] = {m: [] for m in MODES}
        with psycopg.connect(fleet.cell_dsns["cell-1"], autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            live = introspect(conn)
            for r in range(args.rounds):
                for mode in MODES[r % 3:] + MODES[:r % 3]:  # each mode in each position across rounds
                    if mode == "no guard":
                        uninstall_guard(conn, dictionary)
                    else:
                        install_guard(conn, dictionary, live)
                    if mode == "guard, other org frozen":
                        freeze_org(conn, b.organization_id, "benchmark-token")
                    try:
                        rounds[mode].append(workload(conn, a.organization_id, args.ops, args.bulk))
                    finally:
                        if mode == "guard, other org frozen":
                            unfreeze_org(conn, b.organization_id)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            install_guard(conn, dictionary, live)
    med = {m: {w: statistics.median(x[w] for x in rounds[m]) for w in WORKLOADS} for m in MODES}
    overhead = {m: {w: round(100 * (1 - med[m][w] / med["no guard"][w]), 1) for w in WORKLOADS}
                for m in MODES if m != "no guard"}
    return {"benchmark": "guard_overhead", "command": " ".join(["benchmarks/guard_overhead.py", *sys.argv[1:]]),
            "machine": machine(), "params": {"rows": args.rows, "ops": args.ops, "bulk": args.bulk,
                                             "rounds": args.rounds},
            "writes_per_s": med, "overhead_pct": overhead, "rounds": rounds}


def table(r: dict) -> str:
    lines = [f"{'writes/s (median of rounds)':<30}" + "".join(f"{m:>26}" for m in MODES)]
    for w in WORKLOADS:
        cells = []
        for m in MODES:
            v = r["writes_per_s"][m][w]
            cells.append(f"{v:,.0f}" + (f" ({-r['overhead_pct'][m][w]:+.1f}%)" if m != "no guard" else ""))
        lines.append(f"{w:<30}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows per seeded organization (default 20000)")
    p.add_argument("--ops", type=int, default=2000, help="statements per workload and mode (default 2000)")
    p.add_argument("--bulk", type=int, default=20_000, help="rows of the bulk insert (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="times the three modes are cycled (default 3)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    stop_on_signals()
    result = run(args)
    print(table(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
