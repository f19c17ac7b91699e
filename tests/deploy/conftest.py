"""Fixtures for the deploy/ tests: promtool, amtool and Alertmanager from Debian's packages.

``promtool`` comes from the ``prometheus`` package, ``amtool`` and ``prometheus-alertmanager`` from
``prometheus-alertmanager``. When a binary is missing and we are root on a machine with apt-get,
the session installs both packages once (``tests/support/apt.py``); otherwise the tests that need them
skip with the reason. The install's duration is printed in the terminal summary (``tests/conftest.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import apt

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PACKAGES = ("prometheus", "prometheus-alertmanager")
# Binary -> names it goes by (Debian ships Alertmanager as prometheus-alertmanager).
BINARIES = {"promtool": ("promtool",), "amtool": ("amtool",),
            "alertmanager": ("prometheus-alertmanager", "alertmanager")}


def _which(tool: str) -> str | None:
    for name in BINARIES[tool]:
        path = shutil.which(name)
        if path:
            return path
    return None


def _missing() -> list[str]:
    return [tool for tool in BINARIES if _which(tool) is None]


def ensure_tools() -> str | None:
    """None when promtool, amtool and alertmanager are all on PATH (installing them if we can)."""
    return apt.ensure(PACKAGES, _missing)


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
