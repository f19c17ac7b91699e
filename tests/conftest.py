"""Shared fixtures: throwaway databases, a private Redis, the Topology Service, Celery workers.

Everything runs against real servers: the machine's PostgreSQL (``MIGRATOR_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``) and a redis-server started per test session on a
free port. Databases get unique names and are dropped afterwards.
"""

from __future__ import annotations

import pytest

from tests.support.databases import create_database, drop_database, unique_name
from tests.support.fleet import make_fleet
from tests.support.processes import RedisServer, start_topology_server


@pytest.fixture
def scratch_db():
    """A fresh empty database; yields its DSN."""
    name = unique_name("cmt_scratch")
    dsn = create_database(name)
    yield dsn
    drop_database(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def fleet(tmp_path, redis_server, monkeypatch):
    """Three empty cell databases and a control database, with a config file (not yet provisioned)."""
    from migrator.config import clear_settings_cache

    f = make_fleet(tmp_path / "fleet", broker_url=redis_server.url)
    monkeypatch.setenv("MIGRATOR_CONFIG", str(f.config_path))
    clear_settings_cache()
    yield f
    clear_settings_cache()
    f.drop()


@pytest.fixture
def topology_server(fleet, tmp_path):
    """``migrator topology serve`` as a real process on the fleet's configured address."""
    from migrator.control.engine import upgrade_control_db

    upgrade_control_db(fleet.control_dsn)
    proc = start_topology_server(fleet.config_path, fleet.topology_listen, tmp_path / "topology.log")
    yield proc
    proc.stop()


def pytest_terminal_summary(terminalreporter):
    """How long installing Debian packages took (tests/support/apt.py: promtool, amtool, haproxy)."""
    from tests.support import apt

    for line in apt.summary_lines():
        terminalreporter.write_line(f"tests: {line}")
