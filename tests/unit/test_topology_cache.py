"""RouteCache without a database: caching, invalidation, and lookups racing a notification."""

from __future__ import annotations

import threading

from migrator.topology.notify import RouteCache, RouteChange, parse_change
from migrator.topology.service import RouteInfo


def test_cache_serves_until_a_change_arrives():
    calls = []

    def lookup(org):
        calls.append(org)
        return RouteInfo(org, "a", len(calls), "active", None)

    cache = RouteCache(lookup)
    assert cache.get(1).version == 1
    assert cache.get(1).version == 1 and calls == [1]
    cache.apply(RouteChange(1, "b", 2, "frozen", "flip"))
    assert cache.get(1).version == 2 and calls == [1, 1]
    cache.invalidate()
    assert len(cache) == 0


def test_lookup_racing_a_change_is_not_cached():
    entered, release = threading.Event(), threading.Event()
    answers = iter([RouteInfo(1, "a", 1, "active", None), RouteInfo(1, "b", 2, "active", None)])

    def slow_lookup(org):
        entered.set()
        release.wait(5)
        return next(answers)

    cache = RouteCache(slow_lookup)
    result = []
    t = threading.Thread(target=lambda: result.append(cache.get(1)))
    t.start()
    entered.wait(5)
    cache.apply(RouteChange(1, "b", 2, "active", "flip"))  # arrives while the old answer is in flight
    release.set()
    t.join()
    assert result[0].cell == "a"
    assert len(cache) == 0  # the stale answer was not kept
    assert cache.get(1).cell == "b"


def test_parse_change():
    change = parse_change('{"organization_id": 3, "cell": "b", "version": 2, "state": "frozen", "action": "flip"}')
    assert change == RouteChange(3, "b", 2, "frozen", "flip")
    assert parse_change("not json") is None
    assert parse_change('{"cell": "b"}') is None
