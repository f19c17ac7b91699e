"""RouteFollower and RouteLookup without a server: a scripted stream, its ends and its replays."""

from __future__ import annotations

import threading

import pytest

from migrator.errors import WatchEnded
from migrator.topology.follow import RouteFollower
from migrator.topology.lookup import RouteLookup
from migrator.topology.routes import Change, Heartbeat, RouteInfo, Snapshot


def route(org: int, cell: str, revision: int, state: str = "active") -> RouteInfo:
    return RouteInfo(org, cell, 1, state, None, revision)


class ScriptedTopology:
    """``watch_routes`` yields one scripted stream per call (then ends it); ``classify`` answers from a dict."""

    def __init__(self, streams: list[list], routes: dict[int, RouteInfo] | None = None):
        self.streams = list(streams)
        self.routes = routes or {}
        self.calls = 0
        self.done = threading.Event()

    def watch_routes(self, stop):
        self.calls += 1
        if not self.streams:
            self.done.set()
            stop.wait(5)
            return
        yield from self.streams.pop(0)
        raise WatchEnded("scripted stream ended", "watch again")

    def classify(self, org: int) -> RouteInfo:
        return self.routes[org]

    def close(self) -> None:
        pass


def follow(streams, **callbacks) -> tuple[RouteFollower, ScriptedTopology]:
    topology = ScriptedTopology(streams)
    follower = RouteFollower(topology, **callbacks).start()
    assert topology.done.wait(10), "the follower did not consume every stream"
    return follower, topology


def test_a_change_older_than_the_route_it_has_is_never_applied():
    applied = []
    follower, _ = follow([[
        Snapshot([route(1, "a", 5), route(2, "a", 6)], head=6, heartbeat_s=1),
        Change(route(1, "b", 7, "frozen"), "flip"),
        Change(route(1, "a", 4), "register"),      # older than the snapshot's and the flip's
        Change(route(1, "b", 7, "frozen"), "flip"),  # a replay
        Change(route(1, "b", 8), "unfreeze"),
        Heartbeat(head=8),
    ]], on_change=lambda r, action, prev: applied.append((r.organization_id, r.cell, r.revision, action)))
    try:
        assert applied == [(1, "b", 7, "flip"), (1, "b", 8, "unfreeze")]
        assert follower.routes[1] == route(1, "b", 8) and follower.routes[1].revision == 8
        status = follower.status()
        assert status.ignored == 2 and status.applied == 8 and status.head == 8
    finally:
        follower.stop()


def test_after_a_reconnect_the_snapshot_replaces_everything_but_never_goes_back():
    snapshots = []
    follower, topology = follow([
        [Snapshot([route(1, "a", 1), route(2, "a", 2)], head=2, heartbeat_s=1), Change(route(2, "b", 9), "flip")],
        # The second stream's snapshot was read from a lagging source for org 2 (revision 3 < 9) and lacks org 1.
        [Snapshot([route(2, "a", 3), route(3, "c", 10)], head=10, heartbeat_s=1)],
    ], on_snapshot=lambda routes, head: snapshots.append((dict(routes), head)))
    try:
        assert topology.calls >= 3 and len(snapshots) == 2
        assert follower.routes == {2: route(2, "b", 9), 3: route(3, "c", 10)}
        assert follower.status().snapshots == 2 and follower.status().ignored == 1
    finally:
        follower.stop()


def test_lag_while_the_stream_is_down_and_current_once_the_head_is_applied():
    follower = RouteFollower(ScriptedTopology([]))
    assert follower.status().behind_since is not None  # nothing known yet: behind
    follower._handle(Snapshot([route(1, "a", 3)], head=3, heartbeat_s=1))
    assert follower.status().behind_since is None and follower.status().lag_s() == 0
    follower._handle(Heartbeat(head=5))  # something committed that has not arrived yet
    assert follower.status().lag_revisions == 2 and follower.status().behind_since is not None
    follower._handle(Change(route(1, "b", 5), "flip"))
    assert follower.status().behind_since is None
    follower._failed("stream broke")
    assert not follower.status().connected and follower.status().behind_since is not None


def test_lookup_answers_from_the_cache_and_asks_the_service_for_what_it_lacks():
    topology = ScriptedTopology([[Snapshot([route(1, "a", 3)], head=3, heartbeat_s=1)]],
                                routes={7: route(7, "c", 4)})
    with RouteLookup(lambda: topology) as lookup:
        assert lookup.wait_synced(10)
        assert lookup.cell_of(1) == "a"
        assert lookup.route(7).cell == "c"  # not in the map yet: asked, then kept
        # A stream change newer than what Classify said wins; an older one never does.
        lookup._follower._handle(Change(route(7, "d", 6), "flip"))
        assert lookup._follower.offer(route(7, "c", 4)).cell == "d"
        with pytest.raises(KeyError):
            lookup.route(99)
