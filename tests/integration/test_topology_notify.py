"""LISTEN/NOTIFY: a subscriber hears each route change as it commits; a RouteCache follows them."""

from __future__ import annotations

import threading
import time

import pytest

from migrator.control.engine import control_engine, upgrade_control_db
from migrator.topology.notify import RouteCache, RouteChange, subscribe
from migrator.topology.service import TopologyService

pytestmark = pytest.mark.integration


@pytest.fixture
def topo(scratch_db):
    upgrade_control_db(scratch_db)
    topo = TopologyService(scratch_db)
    topo.register_cell("a")
    topo.register_cell("b")
    yield topo
    control_engine(scratch_db).dispose()


def test_subscriber_sees_the_flip(topo):
    heard: list[RouteChange] = []
    with subscribe(topo.control_dsn, timeout=20) as changes:

        def listen():
            for change in changes:
                heard.append(change)
                if change.action == "unfreeze":
                    return

        thread = threading.Thread(target=listen)
        thread.start()
        topo.register_route(3, "a")
        topo.freeze(3, "t", expected_cell="a")
        topo.flip(3, "a", "b", expected_version=1, token="t")
        topo.unfreeze(3, "t")
        thread.join(20)
    assert [(c.action, c.cell, c.version, c.state) for c in heard] == [
        ("register", "a", 1, "active"), ("freeze", "a", 1, "frozen"), ("flip", "b", 2, "frozen"),
        ("unfreeze", "b", 2, "active"),
    ]


def test_refused_change_sends_nothing_and_stop_ends_iteration(topo):
    topo.register_route(4, "a")
    sub = subscribe(topo.control_dsn, channel="topology_routes")
    heard = []
    thread = threading.Thread(target=lambda: heard.extend(sub))
    thread.start()
    with pytest.raises(Exception):  # noqa: B017 - any refusal
        topo.flip(4, "a", "b", expected_version=1, token="t")
    time.sleep(0.5)
    sub.stop()
    thread.join(5)
    assert not thread.is_alive() and heard == []


def test_route_cache_follows_notifications(topo):
    topo.register_route(5, "a")
    cache = RouteCache(topo.classify)
    thread, stop = cache.follow(topo.control_dsn)
    try:
        assert cache.get(5).cell == "a" and len(cache) == 1
        topo.freeze(5, "t", expected_cell="a")
        topo.flip(5, "a", "b", expected_version=1, token="t")
        deadline = time.monotonic() + 10
        while len(cache) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cache.get(5).cell == "b"
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
