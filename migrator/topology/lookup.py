"""Where does an organization live? A route lookup for applications, answered from a local cache.

::

    lookup = RouteLookup.from_settings(settings).start()   # a reader's certificate is enough
    lookup.cell_of(42)          # "cell-2": a dict read, no network (p99 well under 1 ms)
    lookup.route(42).frozen     # True while a move holds its write window
    lookup.close()

The cache is the whole route map, loaded from the Topology Service's change stream
(``WatchRoutes``) and kept current by it (:class:`~migrator.topology.follow.RouteFollower`): a flip
reaches it as it commits, a lost stream is resumed from a fresh snapshot. An organization the cache
does not know (registered a moment ago, or before the first snapshot arrived) is asked of the service
directly (``Classify``) and remembered, unless the stream already brought a newer route.

A stale answer never loses a write: the source cell of a move stays frozen after the flip (its
guard refuses the organization's writes with SQLSTATE MG001), so a write sent to the old cell is
refused, and the application answers it with 503 and Retry-After (docs/adr/0018-edge-router.md).
"""

from __future__ import annotations

import threading

from migrator.topology.follow import FollowerStatus, RouteFollower
from migrator.topology.routes import RouteInfo


class RouteLookup:
    """Routes from a local cache kept current by the route stream; the service for what it lacks.

    ``open_client``: makes a Topology Service client (called for the stream and for lookups the cache
    cannot answer; a client is reused until it fails).
    """

    def __init__(self, open_client, *, first_sync_s: float = 10.0):
        self._open_client = open_client
        self._first_sync_s = first_sync_s
        self._unary = None
        self._unary_lock = threading.Lock()
        self._follower = RouteFollower(open_client, name="route-lookup")

    @classmethod
    def from_settings(cls, settings, **kwargs) -> RouteLookup:
        # deferred: the gRPC client is slow to import and only this path needs it
        from migrator.topology.client import topology_client

        return cls(lambda: topology_client(settings), **kwargs)

    def start(self) -> RouteLookup:
        self._follower.start()
        return self

    def close(self) -> None:
        self._follower.stop()
        with self._unary_lock:
            if self._unary is not None:
                self._unary.close()
                self._unary = None

    def __enter__(self) -> RouteLookup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._follower.wait_synced(timeout)

    def status(self) -> FollowerStatus:
        return self._follower.status()

    def route(self, organization_id: int) -> RouteInfo:
        """The organization's route (UnknownOrganization if the Topology Service has none)."""
        route = self._follower.routes.get(organization_id)
        if route is not None:
            return route
        if not self._follower.wait_synced(self._first_sync_s) or organization_id not in self._follower.routes:
            return self._ask(organization_id)
        return self._follower.routes[organization_id]

    def cell_of(self, organization_id: int) -> str:
        return self.route(organization_id).cell

    def _ask(self, organization_id: int) -> RouteInfo:
        with self._unary_lock:
            if self._unary is None:
                self._unary = self._open_client()
            client = self._unary
        try:
            route = client.classify(organization_id)
        except Exception:
            with self._unary_lock:
                if self._unary is client:
                    self._unary = None
            client.close()
            raise
        return self._follower.offer(route)  # the stream will only ever replace it by a newer one
