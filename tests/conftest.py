"""Shared fixtures: throwaway databases, a private Redis, the Topology Service, Celery workers.

Everything runs against real servers: the machine's PostgreSQL (``MIGRATOR_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``) and a redis-server started per test session on a
free port. Databases get unique names and are dropped afterwards.
"""

from __future__ import annotations

import os

# The CLI's rich consoles fix their width at creation when COLUMNS is set; without it they read the
# width at each print, so a test can render at the width it asks for (CliRunner's env).
os.environ.pop("COLUMNS", None)

import pytest

from migrator.fleet.databases import create_database, drop_database, unique_name
from migrator.fleet.s3_server import MotoServer, use_test_credentials
from migrator.fleet.services import RedisServer, start_topology_server
from tests.support.fleet import make_fleet


@pytest.fixture(autouse=True)
def _no_idle_cell_connections_left():
    """Cell connections a test's in-process steps gave back to this process's idle pool
    (migrator/cells/connections.py) are closed after it: the next test starts with an empty pool, and
    no idle session keeps a database the test dropped (or its server) busy."""
    yield
    import sys

    connections = sys.modules.get("migrator.cells.connections")
    if connections is not None:
        connections.close_idle()


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


def use_config(monkeypatch, fleet) -> None:
    """Make ``fleet``'s config the one every ``get_settings()`` of this process reads."""
    from migrator.config import clear_settings_cache

    monkeypatch.setenv("MIGRATOR_CONFIG", str(fleet.config_path))
    clear_settings_cache()


@pytest.fixture
def fleet_factory(tmp_path, redis_server, monkeypatch):
    """``make(name="fleet", *, upgrade=False, **make_fleet arguments)``: a fleet (databases and a config,
    the session's Redis unless ``broker_url`` is given) whose config this process uses; ``upgrade``: its
    control database migrated. Every fleet made is dropped after the test."""
    from migrator.config import clear_settings_cache
    from migrator.control.engine import upgrade_control_db

    made = []

    def make(name: str = "fleet", *, upgrade: bool = False, **kwargs):
        kwargs.setdefault("broker_url", redis_server.url)
        f = make_fleet(tmp_path / name, **kwargs)
        made.append(f)
        use_config(monkeypatch, f)
        if upgrade:
            upgrade_control_db(f.control_dsn)
        return f

    yield make
    clear_settings_cache()
    for f in made:
        f.drop()


@pytest.fixture
def fleet(fleet_factory):
    """Three empty cell databases and a control database, with a config file (not yet provisioned)."""
    return fleet_factory()


@pytest.fixture
def topology_server(fleet, tmp_path):
    """``migrator topology serve`` as a real process on the fleet's configured address."""
    from migrator.control.engine import upgrade_control_db

    upgrade_control_db(fleet.control_dsn)
    proc = start_topology_server(fleet.config_path, fleet.topology_listen, tmp_path / "topology.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server as a real process on a loopback port (tests use buckets of their own)."""
    use_test_credentials()
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


def pytest_terminal_summary(terminalreporter):
    """How long installing Debian packages took (tests/support/apt.py: promtool, amtool, haproxy)."""
    from tests.support import apt

    for line in apt.summary_lines():
        terminalreporter.write_line(f"tests: {line}")
