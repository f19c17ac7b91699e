"""The services a local fleet runs as child processes: a private ``redis-server``, ``migrator topology
serve``, ``celery -A tasks worker``. Each is a :class:`~migrator.fleet.processes.Process`."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from migrator.fleet.processes import BIN, Process, ProcessExited, free_port, wait_for


def child_env(config_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a fleet's child: its config, none of the caller's ``MIGRATOR_*``, this
    interpreter's scripts first on PATH, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["MIGRATOR_CONFIG"] = str(config_path)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra or {})
    return env


class ServerProcess:
    """A server of a fleet in a process of its own, on a port it keeps across restarts; ``start()`` it."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: Process | None = None

    def start(self) -> ServerProcess:  # pragma: no cover - each server starts its own way
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s): the port refuses connections until a restart."""
        if self.proc is not None:
            self.proc.stop(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer(ServerProcess):
    """A redis-server of our own on a free port, keeping nothing on disk (tests restart or flush it freely)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The same server through its unix socket (kombu's ``redis+socket://`` transport)."""
        return f"redis+socket://{self.workdir / 'redis.sock'}"

    def start(self) -> RedisServer:
        # deferred: redis-py only to wait for the server
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = Process([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(self.workdir), "--unixsocket", str(self.workdir / "redis.sock"),
                             "--unixsocketperm", "700"], dict(os.environ), self.workdir / "redis.log").start()
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(client.ping, timeout=10, what=f"redis on port {self.port}")
        finally:
            client.close()
        return self


def start_topology_server(config_path: Path, listen: str, log_path: Path, env: dict[str, str] | None = None,
                          timeout: float = 30) -> Process:
    """``migrator topology serve --listen LISTEN`` (a host:port), ready when it accepts connections."""
    proc = Process([str(BIN / "migrator"), "topology", "serve", "--listen", listen],
                   env or child_env(config_path), log_path).start()
    host, port = listen.rsplit(":", 1)

    def up():
        if not proc.alive():
            raise ProcessExited(f"topology server exited:\n{proc.log()[-2000:]}")
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True

    wait_for(up, timeout=timeout, what="topology server")
    return proc


def start_worker(config_path: Path, log_path: Path, *, name: str = "w1", concurrency: int = 2,
                 queues: str | None = None, beat_schedule: Path | None = None, app: str = "tasks",
                 extra: list[str] | None = None, env: dict[str, str] | None = None) -> Process:
    """``celery -A tasks worker`` (with beat inside when ``beat_schedule`` is given); see
    :func:`wait_worker_ready`."""
    args = [str(BIN / "celery"), "-A", app, "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
            "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    if queues:
        args += ["-Q", queues]
    if beat_schedule is not None:
        args += ["-B", "-s", str(beat_schedule)]
    args += extra or []
    return Process(args, env or child_env(config_path), log_path, name=name).start()


def start_beat(config_path: Path, log_path: Path, schedule: Path, env: dict[str, str] | None = None) -> Process:
    """``celery -A tasks beat`` on its own (the reconciler's schedule), as deploy/ runs it: a worker
    that dies takes nothing of the schedule with it."""
    return Process([str(BIN / "celery"), "-A", "tasks", "beat", "--loglevel=INFO", "-s", str(schedule)],
                   env or child_env(config_path), log_path, name="beat").start()


def wait_worker_ready(proc: Process, timeout: float = 90.0) -> Process:
    """Until the worker logs "ready." (it exited: RuntimeError with the end of its log)."""
    def ready():
        if not proc.alive():
            raise ProcessExited(f"celery worker exited:\n{proc.log()[-3000:]}")
        return "ready." in proc.log()

    try:
        wait_for(ready, timeout=timeout, interval=0.2, what=f"celery worker {proc.name}")
    except TimeoutError:
        raise TimeoutError(f"celery worker {proc.name} not ready after {timeout}s:\n{proc.log()[-3000:]}") from None
    return proc
