"""A writer process hammering one organization's notes: inserts, updates, deletes.

Like the application would, it asks the Topology Service where the organization lives before each
write and writes there, ignoring the route's frozen flag on purpose so the cell's freeze guard is
what refuses writes during a move. Every outcome goes to a JSON-lines log: ``ack`` (committed),
``rejected`` (SQLSTATE MG001), ``error`` (anything else). ``replay`` turns the acks into the state
the organization's notes must have at the end.

    python -m tests.faults.writer --org 7 --seconds 20 --out writer.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import threading
import time

import psycopg

from migrator.config import load_settings
from migrator.topology.client import topology_client


def run(org: int, seconds: float, out: str, rate: float, seed: int) -> None:
    settings = load_settings()
    topo = topology_client(settings)
    rng = random.Random(seed)
    conns: dict[str, psycopg.Connection] = {}
    alive: list[int] = []
    project = None
    deadline = time.monotonic() + seconds
    n = 0
    # SIGTERM ends the loop between two writes: a write committed but not yet logged when the process
    # is killed would look, to the check, like a write nobody acknowledged that changed the data.
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    interval = 1.0 / rate
    due = time.monotonic()
    with open(out, "a", buffering=1) as log:
        while time.monotonic() < deadline and not stopping.is_set():
            # Paced by a schedule, not a sleep after each write: the time a write takes (the route
            # lookup, the statement) does not lower the rate; a writer that fell behind (a stall)
            # catches up by at most one second's worth of writes.
            due = max(due + interval, time.monotonic() - 1.0)
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            n += 1
            op = "connect"
            cell = topo.classify(org).cell
            try:
                conn = conns.get(cell)
                if conn is None or conn.closed:
                    conn = conns[cell] = psycopg.connect(settings.cell(cell).dsn, autocommit=True,
                                                         application_name="fault-writer")
                if project is None:
                    project = conn.execute(
                        "SELECT p.id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
                        "WHERE n.organization_id = %s ORDER BY p.id LIMIT 1", (org,)).fetchone()[0]
                roll = rng.random()
                text = f"w{seed}-{n}"
                if roll < 0.45 or not alive:
                    op = "insert"
                    key = conn.execute("INSERT INTO notes (project_id, noteable_type, noteable_id, note) "
                                       "VALUES (%s, 'Issue', 0, %s) RETURNING id", (project, text)).fetchone()[0]
                    alive.append(key)
                elif roll < 0.85:
                    op, key = "update", rng.choice(alive)
                    rows = conn.execute("UPDATE notes SET note = %s WHERE id = %s", (text, key)).rowcount
                    if rows != 1:
                        log.write(json.dumps({"kind": "error", "op": op, "id": key, "cell": cell, "t": time.time(),
                                              "error": f"update matched {rows} rows"}) + "\n")
                        continue
                else:
                    op, key = "delete", alive.pop(rng.randrange(len(alive)))
                    rows = conn.execute("DELETE FROM notes WHERE id = %s", (key,)).rowcount
                    if rows != 1:
                        log.write(json.dumps({"kind": "error", "op": op, "id": key, "cell": cell, "t": time.time(),
                                              "error": f"delete matched {rows} rows"}) + "\n")
                        continue
                log.write(json.dumps({"kind": "ack", "op": op, "id": key, "note": text, "cell": cell,
                                      "t": time.time()}) + "\n")
            except psycopg.Error as exc:
                kind = "rejected" if exc.sqlstate == "MG001" else "error"
                if op == "delete":
                    alive.append(key)  # not deleted after all
                log.write(json.dumps({"kind": kind, "op": op, "cell": cell, "sqlstate": exc.sqlstate, "t": time.time(),
                                      "error": str(exc).splitlines()[0] if str(exc) else ""}) + "\n")
                if kind == "error":
                    conns.pop(cell, None)
    for c in conns.values():
        c.close()


def replay(path: str) -> tuple[dict[int, str], set[int], dict]:
    """(notes that must exist with their text, notes that must not exist, counters)."""
    expected: dict[int, str] = {}
    deleted: set[int] = set()
    counts = {"acked": 0, "rejected": 0, "errors": 0}
    with open(path) as fh:
        for line in fh:
            r = json.loads(line)
            if r["kind"] == "ack":
                counts["acked"] += 1
                if r["op"] == "delete":
                    expected.pop(r["id"], None)
                    deleted.add(r["id"])
                else:
                    expected[r["id"]] = r["note"]
            elif r["kind"] == "rejected":
                counts["rejected"] += 1
            else:
                counts["errors"] += 1
    return expected, deleted, counts


def lost_writes(settings, cell: str, path: str) -> tuple[list[str], dict]:
    """Acknowledged writes not reflected in ``cell`` (must be none)."""
    expected, deleted, counts = replay(path)
    problems = []
    with psycopg.connect(settings.cell(cell).dsn, autocommit=True) as conn:
        if expected:
            rows = dict(conn.execute("SELECT id, note FROM notes WHERE id = ANY(%s)", (list(expected),)).fetchall())
            for key, text in expected.items():
                if rows.get(key) != text:
                    problems.append(f"note {key}: expected {text!r}, found {rows.get(key)!r}")
        if deleted:
            back = [r[0] for r in conn.execute("SELECT id FROM notes WHERE id = ANY(%s)", (list(deleted),))]
            problems += [f"note {k} was deleted (acknowledged) but exists" for k in back]
    return problems, counts


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--org", type=int, required=True)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--out", required=True)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    run(a.org, a.seconds, a.out, a.rate, a.seed)
