"""A fleet's processes: start them in their own process group, find them again, stop them.

:class:`Process` is a child with its output in a log file, in a session of its own, stopped (and
killed if need be) with everything in its group: a Celery worker's pool children too.

A process is named by its pid *and* its start time (``/proc/PID/stat``), so a pid recorded by a demo
that crashed long ago and since reused by an unrelated process is never mistaken for ours
(:class:`ProcRef`). Every process the demo starts carries ``CELLS_MIGRATOR_FLEET=<fleet dir>`` in its
environment, which is how orphans of a crashed demo are found again (:func:`find_fleet_processes`).
Both need Linux's ``/proc``; elsewhere a pid is only checked to exist, and orphans are not searched for.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Not MIGRATOR_*: every MIGRATOR_ variable is read as a setting.
MARKER_ENV = "CELLS_MIGRATOR_FLEET"
BIN = Path(sys.executable).parent  # this interpreter's scripts: migrator, celery
_PR_SET_PDEATHSIG = 1
_HAVE_PROC = Path("/proc/self/stat").exists()


@dataclass(frozen=True)
class ProcRef:
    """One process of the fleet: what it is, its pid, and when it started (clock ticks since boot)."""

    name: str
    pid: int
    start: int | None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProcRef:
        return cls(str(data["name"]), int(data["pid"]), data.get("start"))

    def alive(self) -> bool:
        """Still running, and still the process that was started (not a reused pid)."""
        start = start_time(self.pid)
        return start is not None and (self.start is None or start == self.start)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    return raw[raw.rindex(")") + 2:].split()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone or a zombie.

    Without /proc (not Linux) only "is there such a pid" can be told: 0 if there is.
    """
    if not _HAVE_PROC:
        return 0 if _exists(pid) else None
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_group(pid: int) -> int | None:
    if not _HAVE_PROC:
        with contextlib.suppress(OSError):
            return os.getpgid(pid)
        return None
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def environ_value(pid: int, name: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    prefix = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def all_pids() -> list[int]:
    if not _HAVE_PROC:
        return []
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid and pid not in seen:
        seen.add(pid)
        pid = parent_pid(pid) or 0
    return seen


def find_fleet_processes(root: Path) -> list[ProcRef]:
    """Every live process that belongs to the fleet in ``root`` (never this process or its parents).

    Ours: started with ``CELLS_MIGRATOR_FLEET=<root>``, or an embedded PostgreSQL / Redis server whose
    command line names a path inside ``root`` (its data directory or config file).
    """
    root_s = str(Path(root).resolve())
    inside = root_s.rstrip("/") + "/"
    spared = _ancestors(os.getpid())
    found = []
    for pid in all_pids():
        if pid in spared:
            continue
        ours = environ_value(pid, MARKER_ENV) == root_s
        if not ours:
            args = cmdline(pid)
            exe = os.path.basename(args[0]) if args else ""
            ours = exe in ("postgres", "redis-server") and any(a.startswith(inside) for a in args[1:])
        if ours:
            start = start_time(pid)
            if start is not None:
                args = cmdline(pid)
                found.append(ProcRef(os.path.basename(args[0]) if args else "?", pid, start))
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child when the demo process dies (a crashed demo leaves less)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(name: str, args: list[str], *, env: dict[str, str], cwd: Path | None, log_path: Path,
          die_with_parent: bool) -> tuple[subprocess.Popen, ProcRef]:
    """Start ``args`` in a new session (its own process group), output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    return proc, ProcRef(name, proc.pid, start_time(proc.pid))


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_members(pgid: int) -> list[int]:
    return [pid for pid in all_pids() if pid != os.getpid() and process_group(pid) == pgid
            and start_time(pid) is not None]


def _wait_gone(refs: list[ProcRef], timeout: float) -> list[ProcRef]:
    deadline = time.monotonic() + timeout
    while True:
        for r in refs:
            _reap(r.pid)
        left = [r for r in refs if r.alive()]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_process(ref: ProcRef, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Stop ``ref`` and everything in its process group: ``sig`` first, SIGKILL after ``timeout``.

    Works on children and on orphans of an earlier demo alike. True if it was running.
    """
    if not ref.alive():
        _reap(ref.pid)
        return False
    pgid = process_group(ref.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(ref.pid, sig)
    if _wait_gone([ref], timeout):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ref.pid, signal.SIGKILL)
        _wait_gone([ref], 5.0)
    # What the leader leaves behind in its group (pool children, a beat process).
    if pgid and pgid == ref.pid:
        left = [ProcRef("member", p, start_time(p)) for p in _group_members(pgid)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_gone(left, 5.0)
    return True


def stop_all(refs: list[ProcRef], *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Stop several processes at once (orphans of a crashed demo); returns how many were running.

    Only the topmost ones are signalled (a PostgreSQL postmaster gets SIGINT, a fast shutdown); their
    children (backends, pool processes) end with them, or are killed after ``timeout``.
    """
    live = [r for r in refs if r.alive()]
    pids = {r.pid for r in live}
    for r in live:
        if parent_pid(r.pid) in pids:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(r.pid, signal.SIGINT if r.name == "postgres" else sig)
    left = _wait_gone(live, timeout)
    for r in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(r.pid, signal.SIGKILL)
    _wait_gone(left, 5.0)
    return len(live)


# ------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessExited(RuntimeError):
    """A process a wait was for has exited: waiting longer cannot help (``wait_for`` raises it at once)."""


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Call ``predicate`` until it returns something true (returned); TimeoutError naming ``what`` and the
    last exception it raised otherwise. A :class:`ProcessExited` from the predicate ends the wait at once."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception as exc:  # noqa: BLE001
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc}" if last_exc else ""))


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = parent_pid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


# ------------------------------------------------------------------------------------ a child


class Process:
    """A child process in a session of its own, output appended to ``log_path``; stopped with its group."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None,
                 name: str | None = None, die_with_parent: bool = False):
        self.args, self.env, self.log_path = list(args), env, Path(log_path)
        self.cwd = cwd
        self.name = name or Path(args[0]).name
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        self.expected_exit = False  # set when we stop or kill it on purpose

    def start(self) -> Process:
        self.proc, _ = spawn(self.name, self.args, env=self.env, cwd=self.cwd, log_path=self.log_path,
                             die_with_parent=self.die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ref(self) -> ProcRef:
        return ProcRef(self.name, self.pid, start_time(self.pid))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (SIGKILL by default) and wait for the leader."""
        self.expected_exit = True
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the group, SIGKILL after ``timeout``; then whatever is left of the group (pool children
        of a worker that died first)."""
        self.expected_exit = True
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
