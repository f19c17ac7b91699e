"""A throwaway fleet for benchmarks: real PostgreSQL databases, a private redis-server, the Topology
Service and Celery workers as real processes, plus a sampler of the workers' memory.

Everything gets unique names (databases ``cmb_<hex>_*``, queue prefix ``cmb_<hex>-``) and is
removed by :meth:`BenchFleet.close` (also on Ctrl-C), so benchmarks can run next to a test suite on
the same PostgreSQL. The PostgreSQL server is ``$MIGRATOR_BENCH_PG`` (an admin DSN), else
``$MIGRATOR_TEST_PG``, else ``postgresql://postgres@127.0.0.1:5432/postgres``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ADMIN_DSN = os.environ.get("MIGRATOR_BENCH_PG") or os.environ.get(
    "MIGRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


# ----------------------------------------------------------------------------- small helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last}" if last else ""))


def dsn_for(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def create_database(name: str) -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return dsn_for(name)


def drop_database(name: str) -> None:
    with contextlib.suppress(psycopg.OperationalError):
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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


class Proc:
    """A child process in its own process group, output to a log file; stopped with its children."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args, self.env, self.log_path = args, env, Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Pool children left behind by a worker that died first.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


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
@dataclass
class BenchFleet:
    """``cells`` cell databases + a control database, Redis, the Topology Service; workers on demand."""

    cells: int = 3
    moves: dict = field(default_factory=dict)  # overrides of the `moves:` config section
    blobs: dict = field(default_factory=dict)  # cell -> its `blobs:` config (default: a local directory)
    keep: bool = False  # keep the work directory (logs) after close
    workdir: Path | None = None

    def __post_init__(self):
        self.prefix = f"cmb_{uuid.uuid4().hex[:10]}"
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="cm-bench-"))
        self.dbs: list[str] = []
        self.cell_dsns: dict[str, str] = {}
        self.procs: list[Proc] = []
        self.workers: list[Proc] = []
        self.redis: Proc | None = None
        self.config_path = self.workdir / "migrator.yaml"

    # -- lifecycle
    def __enter__(self) -> BenchFleet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.control_db = f"{self.prefix}_control"
        self.control_dsn = create_database(self.control_db)
        self.dbs.append(self.control_db)
        for i in range(1, self.cells + 1):
            db = f"{self.prefix}_cell{i}"
            self.cell_dsns[f"cell-{i}"] = create_database(db)
            self.dbs.append(db)
        self._start_redis()
        listen = f"127.0.0.1:{free_port()}"
        # The Topology Service with mutual TLS, as deployed: the config's client pair is the admin's
        # (init, seeding), the workers' the mover's (start_workers).
        from migrator.topology.certs import init_fleet

        self.certs = init_fleet(self.workdir / "certs")
        config = {
            "control_dsn": self.control_dsn,
            "broker_url": self.broker_url,
            "cells": {name: {"dsn": dsn, "blobs": self.blobs.get(name) or {"kind": "local",
                                                                            "path": str(self.workdir / "blobs" / name)}}
                      for name, dsn in self.cell_dsns.items()},
            "topology": {"address": listen, "listen": listen, "tls": {
                "ca": str(self.certs["ca"]), "server_cert": str(self.certs["server"]["cert"]),
                "server_key": str(self.certs["server"]["key"]),
                "client_cert": str(self.certs["clients"]["admin"]["cert"]),
                "client_key": str(self.certs["clients"]["admin"]["key"])}},
            "moves": {"lease_ttl_s": 60, "stale_after_s": 120, **self.moves},
            # Concurrent benchmarks start several moves out of one cell: the guardrails must not refuse them.
            "rebalance": {"max_moves_per_cell": 64, "max_moves_total": 64},
            "celery": {"queue_prefix": self.prefix + "-"},
        }
        self.config = config
        self.write_config()
        os.environ["MIGRATOR_CONFIG"] = str(self.config_path)
        from migrator.config import clear_settings_cache
        from migrator.control.engine import upgrade_control_db

        clear_settings_cache()
        upgrade_control_db(self.control_dsn)
        topo = Proc([str(BIN / "migrator"), "topology", "serve", "--listen", listen], self.env(),
                    self.workdir / "topology.log").start()
        self.procs.append(topo)
        host, port = listen.rsplit(":", 1)

        def up():
            if not topo.alive():
                raise RuntimeError(f"topology server exited:\n{topo.log()[-2000:]}")
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True

        wait_for(up, 30, "the topology server")

    def _start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        rdir = self.workdir / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        self.redis = Proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", str(rdir)], dict(os.environ), self.workdir / "redis.log").start()
        self.procs.append(self.redis)
        self.broker_url = f"redis://127.0.0.1:{port}/0"
        import redis

        client = redis.Redis.from_url(self.broker_url)
        wait_for(client.ping, 10, "redis-server")
        client.close()

    def close(self) -> None:
        for p in [*self.workers, *reversed(self.procs)]:
            with contextlib.suppress(Exception):
                p.stop()
        self.workers.clear()
        with contextlib.suppress(Exception):
            from migrator.control.engine import control_engine

            control_engine.cache_clear()
        for db in self.dbs:
            drop_database(db)
        self.dbs.clear()
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def write_config(self) -> None:
        """Write ``self.config`` (changed by a benchmark between phases; workers started later read it)."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        from migrator.config import clear_settings_cache

        clear_settings_cache()

    # -- use
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        env.update(MIGRATOR_CONFIG=str(self.config_path), PYTHONUNBUFFERED="1",
                   PATH=f"{BIN}:{env.get('PATH', '')}",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
        return env

    def settings(self):
        from migrator.config import load_settings

        return load_settings(self.config_path)

    def init(self) -> list[dict]:
        """``migrator cells init``: sample schema, freeze guard, sequence ID ranges, cells registered."""
        from migrator.cells.provision import init_cells

        return init_cells(self.settings())

    def start_workers(self, n: int, concurrency: int = 1, app: str = "tasks") -> list[Proc]:
        """``n`` Celery worker processes (``celery -A app worker --concurrency=...``), ready to take tasks."""
        started = []
        for i in range(len(self.workers) + 1, len(self.workers) + n + 1):
            mover = self.certs["clients"]["mover"]
            env = {**self.env(), "MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": str(mover["cert"]),
                   "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": str(mover["key"])}
            w = Proc([str(BIN / "celery"), "-A", app, "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
                      "-n", f"bench{i}-{self.prefix}@%h", "--without-gossip", "--without-mingle"],
                     env, self.workdir / f"worker-{i}.log").start()
            self.workers.append(w)
            started.append(w)
        for w in started:
            wait_for(lambda w=w: _ready(w), 90, f"celery worker {w.log_path.name}", interval=0.2)
        return started

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()


def _ready(w: Proc) -> bool:
    if not w.alive():
        raise RuntimeError(f"celery worker exited:\n{w.log()[-3000:]}")
    return "ready." in w.log()


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
