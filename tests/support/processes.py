"""Real processes for tests: a private redis-server, the Topology Service, Celery workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc}" if last_exc else ""))


def terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the process to be gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """A redis-server of our own on a free port (so tests can restart or flush it freely)."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: client.ping(), timeout=10, what=f"redis on port {self.port}")
        return self

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class ManagedProcess:
    """A child process with its output in a log file, stopped (and killed if need be) on exit."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.args = args
        self.env = env
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.expected_exit = False  # set when we stop or kill it on purpose

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (a Celery worker's pool children too)."""
        self.expected_exit = True
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        self.expected_exit = True
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def base_env(config_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["MIGRATOR_CONFIG"] = str(config_path)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def start_topology_server(config_path: Path, listen: str, log_path: Path) -> ManagedProcess:
    proc = ManagedProcess(
        [str(BIN / "migrator"), "topology", "serve", "--listen", listen], base_env(config_path), log_path
    ).start()
    host, port = listen.rsplit(":", 1)

    def up():
        if not proc.alive():
            raise RuntimeError(f"topology server exited:\n{proc.log()[-2000:]}")
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True

    wait_for(up, timeout=30, what="topology server")
    return proc


def start_worker(config_path: Path, log_path: Path, *, name: str = "w1", concurrency: int = 2,
                 queues: str | None = None, extra: list[str] | None = None) -> ManagedProcess:
    """``celery -A tasks worker`` calling the Topology Service with the mover's certificate, as in deploy/."""
    from tests.support.fleet import role_env

    args = [str(BIN / "celery"), "-A", "tasks", "worker", "--loglevel=INFO", f"--concurrency={concurrency}",
            "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    if queues:
        args += ["-Q", queues]
    args += extra or []
    proc = ManagedProcess(args, {**base_env(config_path), **role_env("mover")}, log_path).start()
    return proc


def listening_on(port: int) -> set[str]:
    """The addresses a local TCP port listens on (from /proc/net/tcp and tcp6): {"127.0.0.1"}, {"0.0.0.0"}..."""
    import ipaddress

    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words)) if width == 8 else str(ipaddress.IPv6Address(words)))
    return found
