"""A client of the cells' sample applications, through the edge router, as users would be.

:class:`Traffic` runs threads that each own a set of notes of some organizations: they create,
change, delete and read them at a steady total rate, retry every 503 that carries ``Retry-After``
after that many seconds (up to ``max_attempts``), and record every outcome. :meth:`Traffic.check`
then holds the outcomes against the organizations' final cells:

- ``lost_writes``: a write acknowledged (2xx) whose effect is not in the organization's final cell;
- ``reads_failed``: a read of a note the thread knows exists that did not end in 200 with its text;
- ``bad_answers``: any answer other than 2xx or 503 with Retry-After (404 for a note known to
  exist counts here and in reads_failed), or no answer at all.

A thread owns its notes, so the order it acknowledged their writes is the order they happened.
Used by tests/integration/test_router_e2e.py and benchmarks/router.py.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field

import psycopg


@dataclass
class Outcome:
    t: float  # wall clock when the request was first sent
    org: int
    op: str  # insert | update | delete | read
    status: int  # final status (0: no answer)
    cell: str | None  # X-Cell of the final answer
    attempts: int
    latency_s: float  # of the final attempt
    note_id: int | None = None
    note: str | None = None
    retry_after_ok: bool = True  # every 503 carried Retry-After
    error: str | None = None
    # Who answered each 503 retried: "edge" (HAProxy: frozen map), or the application's code
    # (organization_frozen: the cell's guard refused the write; not_in_this_cell).
    refusals: list = field(default_factory=list)


@dataclass
class Totals:
    requests: int = 0
    attempts: int = 0
    retried_503: int = 0
    writes_acked: int = 0
    reads_ok: int = 0
    lost_writes: int = 0
    reads_failed: int = 0
    bad_answers: int = 0
    examples: list = field(default_factory=list)


class _Conn:
    """One keep-alive HTTP connection, reopened after any error."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict | None, headers: dict) -> tuple[int, dict, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        data = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers)
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            resp = self.conn.getresponse()
            payload = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


class Traffic:
    """Threads sending reads and writes for ``orgs`` through ``host:port`` at ``rate`` requests/s in total."""

    def __init__(self, host: str, port: int, orgs: list[int], *, rate: float = 50.0, threads: int = 4,
                 read_share: float = 0.5, seed: int = 1, timeout: float = 10.0, max_attempts: int = 60,
                 weights: dict[int, float] | None = None):
        self.host, self.port, self.orgs = host, port, list(orgs)
        self.rate, self.threads, self.read_share = rate, threads, read_share
        self.timeout, self.max_attempts = timeout, max_attempts
        self.weights = [float((weights or {}).get(o, 1.0)) for o in self.orgs]
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seed = seed
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # -- running
    def start(self) -> Traffic:
        self.started_at = time.time()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"traffic-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout * 2 + 5)
        self.stopped_at = time.time()

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.outcomes):
                    return True
            time.sleep(0.05)
        return False

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _run(self, index: int) -> None:
        rng = random.Random(self._seed * 1000 + index)
        conn = _Conn(self.host, self.port, self.timeout)
        mine: dict[int, dict[int, str]] = {o: {} for o in self.orgs}  # org -> note id -> text (acked)
        interval = self.threads / self.rate
        due = time.monotonic() + rng.random() * interval
        n = 0
        try:
            while not self._stop.is_set():
                due = max(due + interval, time.monotonic() - 1.0)
                pause = due - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    break
                n += 1
                org = rng.choices(self.orgs, self.weights)[0]
                notes = mine[org]
                if notes and rng.random() < self.read_share:
                    note_id = rng.choice(list(notes))
                    self._send(conn, org, "read", "GET", f"/orgs/{org}/notes/{note_id}", None, note_id, notes)
                    continue
                roll = rng.random()
                text = f"t{self._seed}-{index}-{n}"
                if roll < 0.5 or len(notes) < 3:
                    self._send(conn, org, "insert", "POST", f"/orgs/{org}/notes", {"note": text}, None, notes)
                elif roll < 0.85:
                    note_id = rng.choice(list(notes))
                    self._send(conn, org, "update", "PUT", f"/orgs/{org}/notes/{note_id}", {"note": text}, note_id,
                               notes)
                else:
                    note_id = rng.choice(list(notes))
                    self._send(conn, org, "delete", "DELETE", f"/orgs/{org}/notes/{note_id}", None, note_id, notes)
        finally:
            conn.close()

    def _send(self, conn: _Conn, org: int, op: str, method: str, path: str, body: dict | None, note_id: int | None,
              notes: dict[int, str]) -> None:
        started = time.time()
        headers = {"X-Organization-Id": str(org)}
        attempts, retry_after_ok, refusals = 0, True, []
        status, cell, error, payload, latency = 0, None, None, b"", 0.0
        while True:
            attempts += 1
            t0 = time.perf_counter()
            try:
                status, hdrs, payload = conn.request(method, path, body, headers)
                error = None
            except (OSError, http.client.HTTPException) as exc:
                status, hdrs, error = 0, {}, f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - t0
            cell = hdrs.get("x-cell")
            if status == 503:
                wait = parse_retry_after(hdrs.get("retry-after"))
                if wait is None:
                    retry_after_ok = False
                    break
                refusals.append(_refused_by(cell, payload))
                if attempts < self.max_attempts and not self._stop.is_set():
                    self._stop.wait(wait)
                    if not self._stop.is_set():
                        continue
            break
        text = body["note"] if body else None
        out = Outcome(started, org, op, status, cell, attempts, latency, note_id, text, retry_after_ok, error, refusals)
        if 200 <= status < 300:
            if op == "insert":
                out.note_id = json.loads(payload)["id"]
                notes[out.note_id] = text
            elif op == "update":
                notes[note_id] = text
            elif op == "delete":
                notes.pop(note_id, None)
            elif op == "read":
                got = json.loads(payload).get("note")
                if got != notes.get(note_id):
                    out.error = f"read {got!r}, expected {notes.get(note_id)!r}"
        self._record(out)

    # -- checking
    def expected(self) -> tuple[dict[int, dict[int, str]], dict[int, set[int]]]:
        """Per organization: notes that must exist with their text, and notes that must not exist."""
        present: dict[int, dict[int, str]] = {o: {} for o in self.orgs}
        gone: dict[int, set[int]] = {o: set() for o in self.orgs}
        with self._lock:
            outcomes = sorted(self.outcomes, key=lambda o: o.t)
        for o in outcomes:
            if not 200 <= o.status < 300 or o.op == "read":
                continue
            if o.op == "delete":
                present[o.org].pop(o.note_id, None)
                gone[o.org].add(o.note_id)
            else:
                present[o.org][o.note_id] = o.note
                gone[o.org].discard(o.note_id)
        return present, gone

    def check(self, cell_dsn_of_org) -> Totals:
        """Hold every outcome against the final cells (``cell_dsn_of_org(org)``: the DSN of its cell)."""
        totals = Totals()
        with self._lock:
            outcomes = list(self.outcomes)
        for o in outcomes:
            totals.requests += 1
            totals.attempts += o.attempts
            totals.retried_503 += o.attempts - 1
            ok = 200 <= o.status < 300
            if o.op != "read" and ok:
                totals.writes_acked += 1
            if o.op == "read":
                if ok and o.error is None:
                    totals.reads_ok += 1
                else:
                    totals.reads_failed += 1
                    _example(totals, f"read of note {o.note_id} (org {o.org}): {o.status} {o.error or ''}")
            if not (ok or (o.status == 503 and o.retry_after_ok)):
                totals.bad_answers += 1
                _example(totals, f"{o.op} org {o.org}: status {o.status} from {o.cell} {o.error or ''}")
        present, gone = self.expected()
        for org in self.orgs:
            with psycopg.connect(cell_dsn_of_org(org), autocommit=True) as conn:
                want = present[org]
                if want:
                    rows = dict(conn.execute("SELECT id, note FROM notes WHERE id = ANY(%s)", (list(want),)).fetchall())
                    for key, text in want.items():
                        if rows.get(key) != text:
                            totals.lost_writes += 1
                            _example(totals, f"org {org} note {key}: want {text!r}, found {rows.get(key)!r}")
                if gone[org]:
                    back = [r[0] for r in conn.execute("SELECT id FROM notes WHERE id = ANY(%s)", (list(gone[org]),))]
                    totals.lost_writes += len(back)
                    for key in back[:3]:
                        _example(totals, f"org {org} note {key}: deleted (acknowledged) but present")
        return totals


def _refused_by(cell: str | None, payload: bytes) -> str:
    if cell is None:
        return "edge"
    try:
        return json.loads(payload).get("code") or "app"
    except ValueError:
        return "app"


def _example(totals: Totals, text: str) -> None:
    if len(totals.examples) < 10:
        totals.examples.append(text)
