"""PostgreSQL servers of a test's own (Debian's server binaries, run as the postgres user): a cell that
can really be stopped and started, and a real streaming standby of it (pg_basebackup)."""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def cluster_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"{name} not found (Debian postgresql server package)")
    return found[-1]


def require_runuser() -> None:
    if shutil.which("runuser") is None:
        pytest.skip("runuser not available")


def private_root(prefix: str) -> Path:
    """A directory outside pytest's root-only tmp tree: the postgres user must reach its data directory."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    subprocess.run(["chown", "postgres", str(root)], check=True)
    return root


class OwnCluster:
    """A PostgreSQL server of its own on ``port``, its data directory under ``root``."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.data = root / "data"

    def _run(self, *args):
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def init(self):
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "postgres", str(self.root)], check=True)
        self._run(cluster_bin("initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres")
        with open(self.data / "pg_hba.conf", "a") as hba:  # pg_basebackup of a standby, over loopback
            hba.write("host replication all 127.0.0.1/32 trust\n")
        return self

    def standby(self, root: Path, port: int) -> OwnCluster:
        """A streaming standby of this (running) server: ``pg_basebackup -R`` into ``root``, not started."""
        standby = OwnCluster(root, port)
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "postgres", str(root)], check=True)
        self._run(cluster_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast")
        return standby

    def start(self):
        self._run(cluster_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}", "start")

    def stop(self):
        self._run(cluster_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop_quietly(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass

    def dsn(self, db="postgres"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"
