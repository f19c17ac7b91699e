"""Fixtures for the deploy/ tests: promtool, amtool and Alertmanager from Debian's packages.

``promtool`` comes from the ``prometheus`` package, ``amtool`` and ``prometheus-alertmanager`` from
``prometheus-alertmanager``. When a binary is missing and we are root on a machine with apt-get,
the session installs both packages once (``apt-get install -y --no-install-recommends``, after an
``apt-get update`` if the package lists are missing); otherwise the tests that need them skip with the
reason. The install's duration is printed in the terminal summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PACKAGES = ("prometheus", "prometheus-alertmanager")
# Binary -> names it goes by (Debian ships Alertmanager as prometheus-alertmanager).
BINARIES = {"promtool": ("promtool",), "amtool": ("amtool",),
            "alertmanager": ("prometheus-alertmanager", "alertmanager")}
APT_TIMEOUT_S = 600

_install: dict = {}


def _which(tool: str) -> str | None:
    for name in BINARIES[tool]:
        path = shutil.which(name)
        if path:
            return path
    return None


def _missing() -> list[str]:
    return [tool for tool in BINARIES if _which(tool) is None]


def _apt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)


def _try_install() -> str | None:
    """Install the Debian packages; None on success, else why not."""
    if not shutil.which("apt-get"):
        return "apt-get is not available on this machine"
    if os.geteuid() != 0:
        return "installing them needs root (run: apt-get install prometheus prometheus-alertmanager)"
    started = time.monotonic()
    install = ("install", "-y", "--no-install-recommends", *PACKAGES)
    result = _apt(*install)
    if result.returncode != 0:  # most often: no package lists yet on a fresh machine
        update = _apt("update")
        if update.returncode != 0:
            return f"apt-get update failed: {update.stderr.strip()[-500:]}"
        result = _apt(*install)
    _install["seconds"] = time.monotonic() - started
    if result.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-500:]}"
    return None


def ensure_tools() -> str | None:
    """None when promtool, amtool and alertmanager are all on PATH (installing them if we can)."""
    if "reason" not in _install:
        reason = None
        if _missing():
            reason = _try_install()
            if reason is None and _missing():
                reason = f"installed {' '.join(PACKAGES)} but still missing: {', '.join(_missing())}"
        _install["reason"] = reason
    return _install["reason"]


def _tool(tool: str) -> str:
    reason = ensure_tools()
    path = _which(tool)
    if path is None:
        pytest.skip(f"{tool} not available ({reason or 'not on PATH'}); "
                    f"it comes from Debian's {' or '.join(PACKAGES)} package")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _tool("amtool")


@pytest.fixture(scope="session")
def alertmanager_bin() -> str:
    return _tool("alertmanager")


def pytest_collection_modifyitems(config, items):
    """Every test under tests/deploy/ carries the ``deploy`` marker (``pytest -m deploy`` selects them)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.deploy)


def pytest_terminal_summary(terminalreporter):
    if "seconds" in _install:
        outcome = "failed: " + _install["reason"] if _install.get("reason") else "ok"
        terminalreporter.write_line(f"deploy tests: apt-get install {' '.join(PACKAGES)} took "
                                    f"{_install['seconds']:.1f} s ({outcome})")
