"""Debian packages a test needs (promtool, amtool, haproxy): installed once per session when missing.

When a binary is missing and we are root on a machine with apt-get, :func:`ensure` installs its
packages (``apt-get install -y --no-install-recommends``, after an ``apt-get update`` if the package
lists are missing); otherwise it says why not, and the tests that need it skip with that reason.
:data:`INSTALLS` keeps how long each install took, for the terminal summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

APT_TIMEOUT_S = 600

INSTALLS: dict[tuple[str, ...], dict] = {}  # packages -> {"seconds", "reason"}


def _apt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)


def install(packages: tuple[str, ...]) -> str | None:
    """Install Debian ``packages``; None on success, else why not."""
    if not shutil.which("apt-get"):
        return "apt-get is not available on this machine"
    if os.geteuid() != 0:
        return f"installing them needs root (run: apt-get install {' '.join(packages)})"
    started = time.monotonic()
    command = ("install", "-y", "--no-install-recommends", *packages)
    result = _apt(*command)
    if result.returncode != 0:  # most often: no package lists yet on a fresh machine
        update = _apt("update")
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-500:]}"
        result = _apt(*command)
    INSTALLS.setdefault(packages, {})["seconds"] = time.monotonic() - started
    if result.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-500:]}"
    return None


def ensure(packages: tuple[str, ...], missing) -> str | None:
    """None once ``missing()`` (the binaries still absent) is empty, installing ``packages`` once if need be."""
    state = INSTALLS.setdefault(packages, {})
    if "reason" not in state:
        reason = None
        if missing():
            reason = install(packages)
            if reason is None and missing():
                reason = f"installed {' '.join(packages)} but still missing: {', '.join(missing())}"
        state["reason"] = reason
    return state["reason"]


def summary_lines() -> list[str]:
    lines = []
    for packages, state in INSTALLS.items():
        if "seconds" in state:
            outcome = "failed: " + state["reason"] if state.get("reason") else "ok"
            lines.append(f"apt-get install {' '.join(packages)} took {state['seconds']:.1f} s ({outcome})")
    return lines
