"""What the benchmarks add to the fleet harness (``migrator/fleet/``): a fleet per run with the
benchmarks' settings (:func:`bench_fleet`), a sampler of the workers' memory, the machine's
description, the probe file's lines, waiting for many moves.

Everything gets unique names (databases ``cmb_<hex>_*``, queue prefix ``cmb_<hex>-``) and is removed
when the fleet closes (also on Ctrl-C), so benchmarks can run next to a test suite on the same
PostgreSQL. The PostgreSQL server is ``$MIGRATOR_BENCH_PG`` (an admin DSN), else ``$MIGRATOR_TEST_PG``,
else ``postgresql://postgres@127.0.0.1:5432/postgres``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

from migrator.fleet.local import LocalFleet
from migrator.fleet.processes import process_tree

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DSN = os.environ.get("MIGRATOR_BENCH_PG") or os.environ.get(
    "MIGRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


# ----------------------------------------------------------------------------- small helpers
def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a CI job cancelled, ``timeout``) both unwind through ``BenchFleet.close``,
    so no database, worker or server is left behind; also when started in the background, where
    the shell makes SIGINT ignored."""
    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def checkpoint(dsn: str = ADMIN_DSN) -> None:
    """Flush the server's dirty buffers now, so the next measured phase does not pay for the last one's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def machine() -> dict:
    """What the figures were measured on."""
    info: dict = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
            for name in ("shared_buffers", "synchronous_commit", "max_wal_size"):
                info[f"pg_{name}"] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
    info["loadavg_at_start"] = os.getloadavg()[0]
    return info


# ----------------------------------------------------------------------------- processes
def probe_lines(path: Path, move_id: str) -> list[dict]:
    """The lines of a move in the workers' probe file (``benchmarks/_probe.py``, ``$BENCH_PROBE_FILE``)."""
    if not path.exists():
        return []
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [rec for rec in lines if rec.get("move_id") == move_id]


def _mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class MemorySampler:
    """Samples the RSS/PSS of process trees every ``interval`` seconds in a thread; keeps the peaks.

    ``peak_process_mib``: the largest single process (the figure the 300 MB target is about: a pool
    process copying); ``peak_tree_rss_mib`` / ``peak_tree_pss_mib``: a whole worker (main process +
    pool children) at its largest, RSS counting shared pages once per process, PSS sharing them out.
    """

    def __init__(self, roots: list[int], interval: float = 0.1):
        self.roots, self.interval = list(roots), interval
        self.peak_process_kib = self.peak_tree_rss_kib = self.peak_tree_pss_kib = 0
        self.samples = 0
        self._trees: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if self.samples % 10 == 0 or not self._trees:  # the trees rarely change: rescan /proc every second
            self._trees = {root: process_tree(root) for root in self.roots}
        for root in self.roots:
            rss_sum = pss_sum = 0
            for pid in self._trees[root]:
                rss, pss = _mem_kib(pid)
                self.peak_process_kib = max(self.peak_process_kib, rss)
                rss_sum += rss
                pss_sum += pss
            self.peak_tree_rss_kib = max(self.peak_tree_rss_kib, rss_sum)
            self.peak_tree_pss_kib = max(self.peak_tree_pss_kib, pss_sum)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._trees = {}
        self._sample()

    def result(self) -> dict:
        return {"peak_process_rss_mib": round(self.peak_process_kib / 1024, 1),
                "peak_worker_tree_rss_mib": round(self.peak_tree_rss_kib / 1024, 1),
                "peak_worker_tree_pss_mib": round(self.peak_tree_pss_kib / 1024, 1),
                "samples": self.samples}


# ----------------------------------------------------------------------------- the fleet
class BenchFleet(LocalFleet):
    """A benchmark's fleet (``LocalFleet`` with a private Redis and the Topology Service with mutual TLS);
    ``start_workers`` on demand. Made by :func:`bench_fleet`."""

    def start_workers(self, n: int, concurrency: int = 1, app: str = "tasks") -> list:
        """``n`` Celery worker processes (``celery -A app worker --concurrency=...``), ready to take tasks."""
        first = len(self.workers) + 1
        return [self.start_worker(f"bench{i}-{self.prefix}", concurrency=concurrency, app=app)
                for i in range(first, first + n)]

    def env(self, role: str | None = None) -> dict[str, str]:
        """A child's environment, with the repository on PYTHONPATH (``celery -A benchmarks._probe``)."""
        env = super().env(role)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env


@contextlib.contextmanager
def bench_fleet(cells: int = 3, moves: dict | None = None, blobs: dict | None = None, keep: bool = False,
                workdir: Path | None = None):
    """A fleet for one benchmark run: ``cells`` cells, a private Redis, the Topology Service (mutual TLS) and
    its config as this process's ``MIGRATOR_CONFIG``; stopped and dropped on exit (``keep``: its directory
    with the logs stays)."""
    from migrator.config import clear_settings_cache
    from migrator.topology.certs import init_fleet

    root = Path(workdir or tempfile.mkdtemp(prefix="cm-bench-"))
    certs = init_fleet(root / "certs")
    fleet = BenchFleet.create(root, cells=cells, certs=certs, prefix="cmb", admin_dsn=ADMIN_DSN, blobs=blobs,
                              overrides={"moves": {"lease_ttl_s": 60, "stale_after_s": 120, **(moves or {})},
                                         # Concurrent benchmarks start several moves out of one cell: the
                                         # guardrails must not refuse them.
                                         "rebalance": {"max_moves_per_cell": 64, "max_moves_total": 64}})
    fleet.own_root, fleet.keep = workdir is None, keep
    try:
        os.environ["MIGRATOR_CONFIG"] = str(fleet.config_path)
        clear_settings_cache()
        fleet.start_topology()
        yield fleet
    finally:
        fleet.close()


def wait_moves(settings, move_ids: list, timeout: float, poll: float = 0.1) -> list:
    """Wait until every move is terminal (or failed); returns the moves."""
    from migrator.moves import workflow as wf
    from migrator.moves.store import MoveStore

    store = MoveStore(settings.control_dsn)
    deadline = time.monotonic() + timeout
    pending = {str(m) for m in move_ids}
    done: dict[str, object] = {}
    while pending:
        for mid in list(pending):
            move = store.get(mid)
            if move.state in wf.TERMINAL_STATES or move.state == wf.FAILED:
                done[mid] = move
                pending.discard(mid)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} move(s) not finished after {timeout}s: {sorted(pending)[:3]}")
        time.sleep(poll)
    return [done[str(m)] for m in move_ids]
